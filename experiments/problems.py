"""The benchmark problems: MLP 784-256-10 and DeepOBS CIFAR-10 3C3D at batch 128 on random data."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

BATCH_SIZE = 128
PROBLEMS = ("mlp", "3c3d")
PARAMS_3C3D = 895_210
PARAMS_MLP = 203_530


# ---------------------------------------------------------------------------------- problems
def mlp() -> nn.Module:
    """784-256-10 ReLU MLP for MNIST-shaped inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def _same_pool() -> nn.Module:
    """Max-pool 3x3 stride 2 with TensorFlow ``'same'`` output size (28 -> 14, 12 -> 6, 6 -> 3).

    ``padding=1`` gives the same output sizes as TensorFlow's right/bottom padding; the windows are
    shifted by one pixel, which changes neither the cost nor the parameter count.
    """
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def c3d3() -> nn.Module:
    """DeepOBS CIFAR-10 3C3D (three conv + three dense layers) for CIFAR-shaped inputs."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=5),  # 32 -> 28 (valid)
        nn.ReLU(),
        _same_pool(),  # 28 -> 14
        nn.Conv2d(64, 96, kernel_size=3),  # 14 -> 12 (valid)
        nn.ReLU(),
        _same_pool(),  # 12 -> 6
        nn.Conv2d(96, 128, kernel_size=3, padding=1),  # 6 -> 6 (same)
        nn.ReLU(),
        _same_pool(),  # 6 -> 3
        nn.Flatten(),
        nn.Linear(128 * 3 * 3, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


@dataclass
class Problem:
    """A model (the common initialization), one fixed batch, and the loss module."""

    name: str
    model: nn.Module
    inputs: Tensor
    labels: Tensor

    def fresh_model(self) -> nn.Module:
        """An independent copy of the common initialization."""
        return copy.deepcopy(self.model)


def build_problem(name: str, seed: int) -> Problem:
    """Model and a random batch for problem ``name``; parameter counts are asserted."""
    torch.manual_seed(seed)
    if name == "mlp":
        model, shape, params = mlp(), (BATCH_SIZE, 1, 28, 28), PARAMS_MLP
    elif name == "3c3d":
        model, shape, params = c3d3(), (BATCH_SIZE, 3, 32, 32), PARAMS_3C3D
    else:
        raise ValueError(f"unknown problem {name!r}")
    count = sum(p.numel() for p in model.parameters())
    assert count == params, f"{name}: {count} parameters, expected {params}"
    inputs = torch.randn(shape)
    labels = torch.randint(0, 10, (BATCH_SIZE,))
    with torch.no_grad():
        assert model(inputs).shape == (BATCH_SIZE, 10)
    return Problem(name, model, inputs, labels)

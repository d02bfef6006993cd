"""The benchmark problems: MLP 784-256-10 and DeepOBS CIFAR-10 3C3D at batch 128 on random data."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cockpit_optim.experiment.models import c3d3, mlp

BATCH_SIZE = 128
PROBLEMS = ("mlp", "3c3d")
PARAMS_3C3D = 895_210
PARAMS_MLP = 203_530


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
        model, shape, params = mlp(784, 10, [256]), (BATCH_SIZE, 1, 28, 28), PARAMS_MLP
    elif name == "3c3d":
        model, shape, params = c3d3((3, 32, 32), 10), (BATCH_SIZE, 3, 32, 32), PARAMS_3C3D
    else:
        raise ValueError(f"unknown problem {name!r}")
    count = sum(p.numel() for p in model.parameters())
    assert count == params, f"{name}: {count} parameters, expected {params}"
    inputs = torch.randn(shape)
    labels = torch.randint(0, 10, (BATCH_SIZE,))
    with torch.no_grad():
        assert model(inputs).shape == (BATCH_SIZE, 10)
    return Problem(name, model, inputs, labels)

"""The benchmark problems at batch 128 on random data.

* ``mlp``: MLP 784-256-10 on MNIST-shaped inputs,
* ``3c3d``: DeepOBS CIFAR-10 3C3D on CIFAR-shaped inputs,
* ``mlp-large``: MLP 784-8192-8192-10 on MNIST-shaped inputs (73,629,706 parameters).
  Materialized per-sample gradients would need B x D x 4 bytes = 128 * 73.6M * 4 B = 37.7 GB, more
  than the 24 GiB of the machine this project is benchmarked on, while the engine's statistics
  never form them.  A plain step takes about a second on 2 CPU threads, so it is not among the
  default ``PROBLEMS``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cockpit_optim.experiment.models import c3d3, mlp

BATCH_SIZE = 128
PROBLEMS = ("mlp", "3c3d")
ALL_PROBLEMS = (*PROBLEMS, "mlp-large")
PARAMS_3C3D = 895_210
PARAMS_MLP = 203_530
PARAMS_MLP_LARGE = 73_629_706


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
    mnist = (BATCH_SIZE, 1, 28, 28)
    if name == "mlp":
        model, shape, params = mlp(784, 10, [256]), mnist, PARAMS_MLP
    elif name == "mlp-large":
        model, shape, params = mlp(784, 10, [8192, 8192]), mnist, PARAMS_MLP_LARGE
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


def per_sample_gradient_bytes(problem: Problem) -> int:
    """Bytes of the batch's materialized float32 per-sample gradients, B x D x 4."""
    return BATCH_SIZE * sum(p.numel() for p in problem.model.parameters()) * 4


def physical_memory_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

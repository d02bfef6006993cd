"""Tiny problems for the tests: model factory, loss and batch generator."""

from __future__ import annotations

import torch
from torch import nn


def make_problem(name: str, seed: int = 0):
    torch.manual_seed(seed)
    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
        loss_fn = nn.CrossEntropyLoss()

        def batch(gen, b):
            return torch.randn(b, 3, 4, generator=gen), torch.randint(0, 4, (b,), generator=gen)

    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 2, stride=1),
            nn.Sigmoid(),
            nn.Flatten(),
            nn.Linear(36, 3),
        )
        loss_fn = nn.CrossEntropyLoss()

        def batch(gen, b):
            return torch.randn(b, 2, 8, 8, generator=gen), torch.randint(0, 3, (b,), generator=gen)

    elif name == "regression":
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        loss_fn = nn.MSELoss()

        def batch(gen, b):
            return torch.randn(b, 5, generator=gen), torch.randn(b, 3, generator=gen)

    else:
        raise ValueError(name)
    return model, loss_fn, batch


class StopAt:
    """A real controller: stops training at the record of step ``step``."""

    instruments = ("Loss",)

    def __init__(self, step: int) -> None:
        self.step = step

    def observe(self, record, optimizer):
        if record["step"] != self.step:
            return []
        optimizer.should_stop, optimizer.stop_reason = True, "test"
        return [
            {"controller": "StopAt", "step": self.step, "what": "stop", "from": False,
             "to": True, "why": "test"}
        ]  # fmt: skip

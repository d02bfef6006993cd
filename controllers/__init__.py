"""Closed-loop controllers (served as ``cockpit_optim.controllers``).

A controller declares ``instruments`` (the readings it needs, tracked automatically) and
``observe(record, optimizer) -> list[Action]``; each returned action (what changed, from what to
what, and why) is stored in the record under ``"actions"``.  See :mod:`.base` for the protocol.

>>> sampler = AdaptiveBatchSampler(dataset, batch_size=32, drop_last=True)
>>> loader = DataLoader(dataset, batch_sampler=sampler)
>>> opt = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn,
...                          instruments=(), controllers=[GradientTestBatchSize(sampler), AlphaLR()])
"""

from .alpha_lr import AlphaLR
from .base import Action, Controller, Steerable, reading
from .cabs import CABSBatchSize
from .early_stopping import EvidenceEarlyStopping
from .gradient_tests import DEFAULT_NU, GradientTestBatchSize
from .sampler import AdaptiveBatchSampler

__all__ = [
    "DEFAULT_NU",
    "Action",
    "AdaptiveBatchSampler",
    "AlphaLR",
    "CABSBatchSize",
    "Controller",
    "EvidenceEarlyStopping",
    "GradientTestBatchSize",
    "Steerable",
    "reading",
]

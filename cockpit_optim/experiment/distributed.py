"""Data-parallel runs of the trainer under ``torchrun`` (gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node=N experiments/train.py ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; the trainer then joins the process group, wraps the model in
``DistributedDataParallel``, lets each rank draw its share of every global batch, and keeps all
writing (log, pictures, checkpoint, summary) on rank 0.  A single process needs none of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Launch:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    joined_here: bool = False

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0


def join(device_name: str) -> tuple[Launch, torch.device]:
    """Join the process group ``torchrun`` describes (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if world == 1 and not dist.is_initialized():
        return Launch(), torch.device("cuda" if cuda else device_name.replace("auto", "cpu"))
    joined = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        joined = True
    launch = Launch(dist.get_rank(), dist.get_world_size(), joined)
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", launch.rank))
        torch.cuda.set_device(local)
        return launch, torch.device("cuda", local)
    return launch, torch.device("cpu")


def wrap(model: nn.Module, launch: Launch, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when several processes train, else ``model``."""
    if launch.world_size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def leave(launch: Launch) -> None:
    """Leave the process group if :func:`join` created it."""
    if launch.joined_here:
        dist.destroy_process_group()

"""Combining per-rank statistics over the global batch with ``torch.distributed``.

Individual-gradient statistics are sums over samples, so they combine exactly: per-sample vectors
(losses, squared norms, projections; ``B_r`` floats per rank) are all-gathered, per-coordinate sums
and histogram counts are all-reduced, each group of tensors through one flat buffer per dtype.
A single process uses :class:`LocalCombiner`, which does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


class LocalCombiner:
    """One process: local statistics are global."""

    world_size = 1
    rank = 0

    def gather(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """Concatenate per-sample vectors of all ranks (rank order)."""
        return list(vectors)

    def sum(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Elementwise sums over ranks."""
        return list(tensors)

    def broadcast_object(self, value: object) -> object:
        """Rank 0's ``value`` on every rank."""
        return value


class ProcessGroupCombiner(LocalCombiner):
    """All ranks of ``group`` (the default group when ``None``)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def gather(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        if not vectors:
            return []
        device, length = vectors[0].device, vectors[0].numel()
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([length], device=device), group=self.group)
        sizes = [int(s) for s in sizes]
        longest = max(*sizes, 1)  # collectives on zero-size buffers are not reliable
        local = torch.zeros(len(vectors), longest, dtype=torch.float64, device=device)
        for row, vector in zip(local, vectors):
            row[:length] = vector.reshape(-1)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local, group=self.group)
        return [
            torch.cat([part[i, :size] for part, size in zip(parts, sizes)])
            for i in range(len(vectors))
        ]

    def sum(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        out: list[Tensor | None] = [None] * len(tensors)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_dtype.setdefault(tensor.dtype, []).append(index)
        for indices in by_dtype.values():
            flat = torch.cat([tensors[i].reshape(-1) for i in indices])
            dist.all_reduce(flat, group=self.group)
            for i, piece in zip(indices, flat.split([tensors[i].numel() for i in indices])):
                out[i] = piece.reshape(tensors[i].shape)
        return out

    def broadcast_object(self, value: object) -> object:
        box = [value]
        dist.broadcast_object_list(
            box,
            src=dist.get_global_rank(self.group, 0) if self.group is not None else 0,
            group=self.group,
        )
        return box[0]


def combiner_for(process_group: dist.ProcessGroup | None = None) -> LocalCombiner:
    """A :class:`ProcessGroupCombiner` when ``torch.distributed`` runs several processes."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1:
        return ProcessGroupCombiner(process_group)
    return LocalCombiner()

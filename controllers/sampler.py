"""``AdaptiveBatchSampler``: a resumable batch sampler whose batch size can change between batches."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["AdaptiveBatchSampler"]


class AdaptiveBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, one epoch per pass, with a batch size that may change any time.

    Use it as ``DataLoader(dataset, batch_sampler=sampler, num_workers=k)``.  Each epoch visits a
    permutation of ``range(len(dataset))`` (``shuffle=False``: the identity); the permutation of
    epoch ``e`` depends only on ``(seed, e)``, so a run is deterministic given the seed.  Every
    index appears exactly once per epoch whatever the batch sizes, except the last, short batch
    that ``drop_last=True`` leaves out.

    :meth:`set_batch_size` takes effect on the next batch the sampler *yields*.  With
    ``num_workers > 0`` the ``DataLoader`` draws batches ahead of the training loop (up to
    ``num_workers * prefetch_factor``, default ``2 * num_workers``), so the loop still receives
    that many batches of the old size after a change.

    A pass that stops early (``break``) is continued by the next pass, which finishes the epoch.
    :meth:`state_dict` stores the epoch, the position in it, the seed and the batch size; with
    workers the sampler's position is ahead of the loop by the prefetched batches, which a resumed
    run would skip: pass ``batches_consumed`` (the number of batches the loop received in the
    current pass) to store the position of the first batch not yet used instead.

    ``len(sampler)`` is the number of batches of a whole epoch at the *current* batch size.

    A batch size is at most the data set size: a larger one (given here or to
    :meth:`set_batch_size`) is capped at ``len(data_source)`` with a ``UserWarning``, so that an
    epoch is then one batch of every sample (with ``drop_last=True`` a larger batch would never
    be full and every epoch would be empty).  The batch-size controllers cap their own sizes, so
    they never meet the warning.

    Data parallel: ``batch_size`` is the *global* batch size; with ``num_replicas`` ranks (by
    default the ``torch.distributed`` world), every rank walks the same permutation and yields its
    contiguous share of each global batch (``numpy.array_split`` order, rank 0 first), so the
    shares concatenate to the global batch.  Keep the batch size divisible by the number of ranks
    for equal shares (DistributedDataParallel averages the ranks' gradients).
    """

    def __init__(
        self,
        data_source: int | Sized,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = int(num_replicas or (dist.get_world_size() if distributed else 1))
        self.rank = int(rank if rank is not None else (dist.get_rank() if distributed else 0))
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        num_samples = data_source if isinstance(data_source, int) else len(data_source)
        if num_samples < 1:
            raise ValueError(f"AdaptiveBatchSampler needs at least one sample, got {num_samples}")
        self.num_samples = int(num_samples)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = int(seed)
        self.batch_size = self._checked(batch_size)
        self.epoch = 0
        self.position = 0  # indices of the current epoch already yielded
        self._pass_epoch = 0
        self._pass_starts: list[int] = []  # start of every batch yielded in the current pass

    def _checked(self, batch_size: int) -> int:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
        if batch_size > self.num_samples:
            warnings.warn(
                f"batch size {int(batch_size)} exceeds the {self.num_samples} samples of the "
                f"data set; using {self.num_samples}",
                UserWarning,
                stacklevel=3,
            )
            return self.num_samples
        return int(batch_size)

    def set_batch_size(self, batch_size: int) -> None:
        """Use ``batch_size`` (at most the data set size) from the next yielded batch on."""
        self.batch_size = self._checked(batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The index order of ``epoch``: a permutation drawn from ``(seed, epoch)``, or the identity."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng((self.seed, epoch)).permutation(self.num_samples)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        self._pass_epoch, self._pass_starts = self.epoch, []
        while self.position < self.num_samples:
            start, size = self.position, self.batch_size
            if self.drop_last and self.num_samples - start < size:
                break
            self.position = min(start + size, self.num_samples)
            self._pass_starts.append(start)
            batch = order[start : self.position]
            if self.num_replicas > 1:  # this rank's contiguous share of the global batch
                batch = np.array_split(batch, self.num_replicas)[self.rank]
            yield batch.tolist()
        self.epoch += 1
        self.position = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """``epoch``, ``position``, ``seed``, ``batch_size`` (and the settings, to check on load).

        ``batches_consumed``: batches of the current pass the training loop has received; the
        stored position is then the start of the first batch it has not (exact with workers).
        """
        epoch, position = self.epoch, self.position
        if batches_consumed is not None:
            if not 0 <= batches_consumed <= len(self._pass_starts):
                raise ValueError(
                    f"batches_consumed={batches_consumed}, but the current pass yielded "
                    f"{len(self._pass_starts)} batches"
                )
            if batches_consumed < len(self._pass_starts):
                epoch, position = self._pass_epoch, self._pass_starts[batches_consumed]
        return {
            "epoch": epoch,
            "position": position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the next pass starts at its epoch and position."""
        for key in ("num_samples", "shuffle", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]!r}, this sampler {getattr(self, key)!r}"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.seed = int(state["seed"])
        self.batch_size = self._checked(state["batch_size"])
        self._pass_epoch, self._pass_starts = self.epoch, []

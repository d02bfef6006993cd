"""AdaptiveBatchSampler with a real DataLoader: sizes, epochs, drop_last, workers, resume."""

from __future__ import annotations

import pytest
import torch
from cockpit_optim.controllers import AdaptiveBatchSampler
from torch.utils.data import DataLoader, TensorDataset


def dataset(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def indices(batch) -> list[int]:
    return batch[0].tolist()


def test_each_epoch_is_a_permutation_drawn_from_seed_and_epoch():
    sampler = AdaptiveBatchSampler(dataset(23), 5, seed=7)
    first, second = [list(sampler) for _ in range(2)]
    assert [len(b) for b in first] == [5, 5, 5, 5, 3] and len(sampler) == 5
    for epoch in (first, second):
        assert sorted(i for b in epoch for i in b) == list(range(23))
    assert first != second and sampler.epoch == 2
    again = AdaptiveBatchSampler(23, 5, seed=7)
    assert [list(again) for _ in range(2)] == [first, second]
    assert list(AdaptiveBatchSampler(23, 5, seed=8)) != first
    assert list(AdaptiveBatchSampler(7, 3, shuffle=False)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_drop_last():
    sampler = AdaptiveBatchSampler(10, 4, shuffle=False, drop_last=True)
    assert len(sampler) == 2
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert sampler.epoch == 1 and sampler.position == 0
    sampler.set_batch_size(3)
    assert [len(b) for b in sampler] == [3, 3, 3] and len(sampler) == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_size_change_takes_effect_at_the_next_yielded_batch(workers):
    sampler = AdaptiveBatchSampler(dataset(200), 4, seed=1)
    loader = DataLoader(dataset(200), batch_sampler=sampler, num_workers=workers)
    sizes, seen = [], []
    for batch in loader:
        sizes.append(len(indices(batch)))
        seen += indices(batch)
        if len(sizes) == 3:
            sampler.set_batch_size(10)
    assert sorted(seen) == list(range(200))  # one epoch, every index once
    old = sizes.index(10)
    # without workers the fourth batch has the new size; with workers, up to
    # num_workers * prefetch_factor (2 * 2) batches were drawn ahead at the old size
    assert old == 3 if workers == 0 else 3 <= old <= 3 + 2 * workers
    assert sizes[:old] == [4] * old
    rest = 200 - 4 * old
    assert sizes[old:] == [10] * (rest // 10) + ([rest % 10] if rest % 10 else [])


def test_resume_mid_epoch_without_workers():
    fresh = AdaptiveBatchSampler(50, 6, seed=3)
    reference = [list(fresh), list(fresh)]  # two epochs
    sampler = AdaptiveBatchSampler(50, 6, seed=3)
    taken = []
    for batch in sampler:
        taken.append(batch)
        if len(taken) == 4:
            break
    state = sampler.state_dict()
    assert (state["epoch"], state["position"], state["seed"]) == (0, 24, 3)
    resumed = AdaptiveBatchSampler(50, 1, seed=0)
    resumed.load_state_dict(state)
    assert resumed.batch_size == 6 and resumed.seed == 3
    assert taken + list(resumed) == reference[0]
    assert list(resumed) == reference[1]
    assert list(sampler) == reference[0][4:]  # an interrupted pass is finished by the next one


def test_resume_with_workers_uses_the_consumed_batch_count():
    reference = list(AdaptiveBatchSampler(60, 5, seed=2))
    sampler = AdaptiveBatchSampler(dataset(60), 5, seed=2)
    taken = []
    for batch in DataLoader(dataset(60), batch_sampler=sampler, num_workers=2):
        taken.append(indices(batch))
        if len(taken) == 3:
            break
    assert sampler.position > 15  # the workers drew batches ahead
    state = sampler.state_dict(batches_consumed=3)
    assert (state["epoch"], state["position"]) == (0, 15)
    resumed = AdaptiveBatchSampler(dataset(60), 5, seed=2)
    resumed.load_state_dict(state)
    rest = [indices(b) for b in DataLoader(dataset(60), batch_sampler=resumed, num_workers=2)]
    assert taken + rest == reference
    with pytest.raises(ValueError, match="batches_consumed"):
        resumed.state_dict(batches_consumed=99)


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive integer"):
        AdaptiveBatchSampler(10, 0)
    with pytest.raises(ValueError, match="positive integer"):
        AdaptiveBatchSampler(10, 4).set_batch_size(2.5)
    with pytest.raises(ValueError, match="at least one sample"):
        AdaptiveBatchSampler(0, 4)
    with pytest.raises(ValueError, match="num_samples"):
        AdaptiveBatchSampler(10, 4).load_state_dict(AdaptiveBatchSampler(11, 4).state_dict())


def test_ranks_share_each_global_batch():
    samplers = [AdaptiveBatchSampler(20, 6, seed=3, num_replicas=3, rank=r) for r in range(3)]
    single = AdaptiveBatchSampler(20, 6, seed=3)
    for shares, whole in zip(zip(*samplers), single):
        assert [i for share in shares for i in share] == whole
        assert all(len(share) in (len(whole) // 3, len(whole) // 3 + 1) for share in shares)
    with pytest.raises(ValueError, match="rank"):
        AdaptiveBatchSampler(20, 6, num_replicas=2, rank=2)


def test_batch_larger_than_the_data_is_capped_at_the_data_set_size():
    # with drop_last=True a batch of 12 from 10 samples would never be full: every epoch empty
    with pytest.warns(UserWarning, match="batch size 12 exceeds the 10 samples"):
        sampler = AdaptiveBatchSampler(dataset(10), 12, shuffle=False, drop_last=True)
    assert sampler.batch_size == 10 and len(sampler) == 1
    epochs = [[indices(b) for b in DataLoader(dataset(10), batch_sampler=sampler)] for _ in "ab"]
    assert epochs == [[list(range(10))]] * 2
    sampler.set_batch_size(4)
    with pytest.warns(UserWarning, match="batch size 1000 exceeds"):
        sampler.set_batch_size(1000)
    assert sampler.batch_size == 10 and [len(b) for b in sampler] == [10]

"""AlphaLR: evidence before an emergency, a sign test behind every regular change, and a window
that survives the batch-size changes of a batch-size controller."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from cockpit_optim.controllers import AdaptiveBatchSampler, AlphaLR, CABSBatchSize
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cockpit_optim import MonitoredOptimizer


def sgd(lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def records(alphas, losses=None, batch_size: int = 32) -> list[dict]:
    losses = [1.0] * len(alphas) if losses is None else losses
    return [
        {"step": i, "lr": 0.1, "batch_size": batch_size, "Alpha": a, "Loss": loss}
        for i, (a, loss) in enumerate(zip(alphas, losses))
    ]


def decisions(control: AlphaLR, sequence: list[dict], opt) -> list[tuple[int, dict]]:
    return [(r["step"], a) for r in sequence for a in control.observe(r, opt)]


def sign_test_p(k: int, n: int) -> float:
    """Two-sided sign test by enumeration: P(|K - n/2| >= |k - n/2|), K ~ Binomial(n, 1/2)."""
    return min(
        1.0, sum(math.comb(n, j) for j in range(n + 1) if abs(j - n / 2) >= abs(k - n / 2)) / 2**n
    )


#: 200 readings on target (median 0.15, inside the dead band), four outliers >= 1 as measured on
#: the digits MLP at lr 0.25 (4 of 199), two of them within one emergency window.
ON_TARGET = [0.15 + 0.1 * ((i * 7) % 5 - 2) for i in range(200)]
OUTLIERS = {31: 1.3, 36: 1.05, 110: 2.4, 171: 1.0}


def test_rare_outliers_keep_the_learning_rate():
    alphas = [OUTLIERS.get(i, a) for i, a in enumerate(ON_TARGET)]
    opt, control = sgd(0.25), AlphaLR()
    assert decisions(control, records(alphas), opt) == []
    assert opt.param_groups[0]["lr"] == 0.25 and control.scale == 1.0


def test_sustained_overshoot_still_halves_the_rate():
    opt, control = sgd(0.4), AlphaLR()
    alphas = [0.2, 1.4, 0.1, 1.1, 0.3, 1.2, 0.2, 0.1, 1.5, 1.3, 0.2, 1.6]
    out = decisions(control, records(alphas), opt)
    # readings >= 1 at steps 1, 3, 5 (3 of the last 10: an emergency); the count restarts, and
    # steps 8, 9, 11 are the next three
    assert [step for step, _ in out] == [5, 11]
    assert [a["to"] for _, a in out] == pytest.approx([0.2, 0.1])
    assert out[0][1]["why"].startswith("emergency: 3 of the last 6 Alpha readings >= 1")
    # two readings >= 1 in ten are not enough; the third, eleven readings after the first, is
    opt, control = sgd(0.4), AlphaLR()
    assert decisions(control, records([1.2, 1.2] + [0.1] * 8 + [1.2]), opt) == []


def test_blown_up_loss_still_triggers_between_rare_outliers():
    alphas = [OUTLIERS.get(i, a) for i, a in enumerate(ON_TARGET[:60])]
    losses = [1.0 / (1 + 0.01 * i) for i in range(50)] + [1e3] * 10
    opt, control = sgd(0.25), AlphaLR(loss_smoothing=0.0)
    ((step, action),) = decisions(control, records(alphas, losses), opt)
    assert step == 50 and action["to"] == pytest.approx(0.125)
    assert "running minimum" in action["why"]
    opt, control = sgd(0.25), AlphaLR()
    losses[40] = math.inf
    ((step, action),) = decisions(control, records(alphas[:45], losses[:45]), opt)
    assert step == 40 and action["why"].startswith("emergency: Loss=inf is not finite")


def test_regular_change_needs_a_significant_sign_test():
    # window 20: 9 readings below target, 11 above; the median 0.3 is outside the dead band, but
    # 11 of 20 above is what chance gives: the rate stays
    opt, control = sgd(0.1), AlphaLR(warmup=0)
    undecided = [-0.5] * 9 + [0.3] * 11
    assert decisions(control, records(undecided), opt) == []
    assert sign_test_p(11, 20) > 0.05
    # each reading of 0.6 pushes a low one out: 12, 13, 14 of 20 above (p >= 0.115), then 15
    # (p = 0.041): the fourth one changes the rate, with the median 0.3 of the window
    later = [{**r, "step": 20 + r["step"]} for r in records([0.6] * 4)]
    out = [control.observe(r, opt) for r in later]
    assert out[:3] == [[], [], []]
    assert sign_test_p(14, 20) > 0.05 >= sign_test_p(15, 20)
    (action,) = out[3]
    assert action["to"] == pytest.approx(0.1 * ((1 + 0.15) / (1 + 0.3)) ** 0.5)
    p = sign_test_p(15, 20)
    assert "median Alpha=0.3 over 20 readings" in action["why"]
    assert f"15 of 20 above target, sign test p={p:.2g} <= 0.05" in action["why"]


def test_sign_test_counts_and_p_value_against_enumeration():
    control = AlphaLR(window=8)
    for value in [0.5, 0.15, -0.2, 0.9, 0.4, 0.15, 0.3, -0.1]:
        control._alphas.append(value)
    above, n, p = control.sign_test()
    assert (above, n) == (4, 6)  # the two readings equal to the target are left out
    assert p == pytest.approx(sign_test_p(4, 6))
    assert AlphaLR().sign_test() == (0, 0, 1.0)


def test_bad_overshoot_and_significance_arguments():
    with pytest.raises(ValueError, match="overshoots"):
        AlphaLR(overshoots=(4, 3))
    with pytest.raises(ValueError, match="significance"):
        AlphaLR(significance=0.0)


def test_alpha_lr_acts_while_cabs_changes_the_batch():
    torch.manual_seed(0)
    model, loss_fn = (
        nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)),
        nn.CrossEntropyLoss(),
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 6, generator=gen)
    data = TensorDataset(x, (x[:, :3] + 0.5 * torch.randn(512, 3, generator=gen)).argmax(1))
    sampler = AdaptiveBatchSampler(data, 32, drop_last=True)
    alpha_lr = AlphaLR(window=10, warmup=0)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=3.0),
        model,
        loss_fn,
        instruments=(),
        controllers=[CABSBatchSize(sampler, min_batch_size=4, max_batch_size=256), alpha_lr],
    )
    done = 0
    while done < 34:
        for inputs, targets in DataLoader(data, batch_sampler=sampler):
            opt.zero_grad()
            loss_fn(model(inputs), targets).backward()
            opt.step()
            done += 1
            if done == 34:
                break
    history = opt.history
    changes = [
        (i, a) for i, r in enumerate(history) for a in r.get("actions", []) if a["what"] == "lr"
    ]
    regular = [(i, a) for i, a in changes if a["why"].startswith("median Alpha")]
    assert regular, "AlphaLR never acted next to CABS"
    start = 0
    for i, action in changes:
        if action in [a for _, a in regular]:
            window = [r for r in history[start : i + 1] if math.isfinite(r["Alpha"])]
            assert len(window) == 10  # no reading was dropped at a batch-size change
            assert len({r["batch_size"] for r in window}) >= 2
            alphas = sorted(r["Alpha"] for r in window)
            median = (alphas[4] + alphas[5]) / 2
            assert f"median Alpha={median:.4g}" in action["why"]
        start = i + 1
    sizes = [r["batch_size"] for r in history]
    assert sum(a != b for a, b in itertools.pairwise(sizes)) >= 5

"""Controllers: hand-computed decisions on synthetic records, state round trips, closed loops."""

from __future__ import annotations

import copy
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from cockpit_optim.controllers import (
    DEFAULT_NU,
    AdaptiveBatchSampler,
    AlphaLR,
    CABSBatchSize,
    EvidenceEarlyStopping,
    GradientTestBatchSize,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cockpit_optim import MonitoredOptimizer

NAN = float("nan")


def sgd(lr: float = 0.1, momentum: float = 0.0, groups: int = 1) -> torch.optim.SGD:
    params = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(groups)]
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def record(step: int = 0, batch_size: int = 32, lr: float = 0.1, **readings) -> dict:
    return {"step": step, "lr": lr, "batch_size": batch_size, **readings}


def check_action(action: dict, controller: str, what: str, old, new) -> None:
    assert action["controller"] == controller
    assert action["what"] == what
    assert action["from"] == old
    assert action["to"] == pytest.approx(new)
    assert isinstance(action["why"], str) and action["why"]


# --------------------------------------------------------------------------------- CABS
def test_cabs_rule_with_averaging_floor_factor_and_bounds():
    sampler = AdaptiveBatchSampler(1000, 32)
    cabs, opt = CABSBatchSize(sampler), sgd(0.1)
    # tr(Sigma) = CABS * L / lr = 40 * 2 / 0.1 = 800; B = 0.1 * 800 / 2 = 40
    (action,) = cabs.observe(record(0, CABS=40.0, Loss=2.0), opt)
    check_action(action, "CABSBatchSize", "batch_size", 32, 40)
    assert action["step"] == 0 and "CABS=40" in action["why"]
    assert sampler.batch_size == 40
    # second reading: tr(Sigma) = 60 * 1 / 0.1 = 600; both averaged with factor 0.95
    (action,) = cabs.observe(record(1, CABS=60.0, Loss=1.0), opt)
    expected = round(0.1 * (0.95 * 800 + 0.05 * 600) / (0.95 * 2.0 + 0.05 * 1.0))
    assert expected == 41
    check_action(action, "CABSBatchSize", "batch_size", 40, expected)
    # the rule uses the current learning rate of the first group (0.2 now)
    opt.param_groups[0]["lr"] = 0.2
    (action,) = CABSBatchSize(AdaptiveBatchSampler(1000, 32)).observe(
        record(0, CABS=40.0, Loss=2.0), opt
    )
    assert action["to"] == 80

    floor = CABSBatchSize(AdaptiveBatchSampler(1000, 32), loss_floor=0.5, factor=2.0)
    (action,) = floor.observe(record(0, CABS=40.0, Loss=2.0), sgd(0.1))
    assert action["to"] == round(2.0 * 0.1 * 800 / (2.0 - 0.5)) == 107

    low = CABSBatchSize(AdaptiveBatchSampler(1000, 32))
    assert low.observe(record(0, CABS=1.0, Loss=2.0), sgd())[0]["to"] == 16
    high = CABSBatchSize(AdaptiveBatchSampler(1000, 32), max_batch_size=100)
    assert high.observe(record(0, CABS=5000.0, Loss=2.0), sgd())[0]["to"] == 100
    assert high.observe(record(1, CABS=5000.0, Loss=2.0), sgd()) == []  # already there
    huge = CABSBatchSize(AdaptiveBatchSampler(1000, 32))
    assert huge.max_batch_size == 1000  # the default 2048 capped at the data set size
    assert huge.observe(record(0, lr=1e-310, CABS=1e300, Loss=2.0), sgd(1.0))[0]["to"] == 1000
    tiny = CABSBatchSize(AdaptiveBatchSampler(10, 4))
    assert (tiny.min_batch_size, tiny.max_batch_size) == (10, 10)


def test_cabs_skips_undefined_readings_and_loss_below_floor():
    sampler = AdaptiveBatchSampler(1000, 32)
    cabs = CABSBatchSize(sampler, loss_floor=1.0)
    assert cabs.observe(record(0, CABS=NAN, Loss=2.0), sgd()) == []
    assert cabs.numerator is None and cabs.denominator is None
    assert cabs.observe(record(1, CABS=40.0, Loss=0.5), sgd()) == []
    assert sampler.batch_size == 32


def test_cabs_warns_once_unless_plain_sgd():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CABSBatchSize(AdaptiveBatchSampler(100, 32)).observe(record(CABS=40.0, Loss=2.0), sgd())
    cabs = CABSBatchSize(AdaptiveBatchSampler(100, 32))
    with pytest.warns(UserWarning, match="with SGD with momentum=0.9 it uses the effective"):
        cabs.observe(record(0, CABS=4.0, Loss=2.0), sgd(momentum=0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cabs.observe(record(1, CABS=4.0, Loss=2.0), sgd(momentum=0.9))
    adam = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.warns(UserWarning, match="with Adam it uses the optimizer's lr as it is"):
        CABSBatchSize(AdaptiveBatchSampler(100, 32)).observe(record(0, CABS=4.0, Loss=2.0), adam)


def test_cabs_uses_the_effective_learning_rate_of_momentum_sgd():
    # tr(Sigma) = CABS * L / lr = 4 * 2 / 0.1 = 80; plain SGD: B = 0.1 * 80 / 2 = 4 -> 16
    # momentum 0.9: lr / (1 - 0.9) = 1, B = 40; with dampening 0.5: lr * 0.5 / 0.1 = 0.5, B = 20
    for momentum, dampening, expected in [(0.0, 0.0, 16), (0.9, 0.0, 40), (0.9, 0.5, 20)]:
        opt = torch.optim.SGD(
            [torch.zeros(1, requires_grad=True)], lr=0.1, momentum=momentum, dampening=dampening
        )
        cabs = CABSBatchSize(AdaptiveBatchSampler(1000, 32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (action,) = cabs.observe(record(0, CABS=4.0, Loss=2.0), opt)
        assert action["to"] == expected
        assert ("effective lr=" in action["why"]) == (momentum > 0)


# ------------------------------------------------------------------------ gradient tests
def test_norm_test_grows_to_required_size_and_never_shrinks():
    sampler = AdaptiveBatchSampler(1000, 32)
    control = GradientTestBatchSize(sampler)
    assert control.instruments == ("NormTest", "GradNorm")
    assert control.observe(record(0, NormTest=0.8, GradNorm=0.5), sgd()) == []  # passes
    # Var = T^2 B G, required = ceil(Var / (theta^2 G)) = ceil(32 * 1.2^2 / 0.9^2) = 57
    (action,) = control.observe(record(1, NormTest=1.2, GradNorm=0.5), sgd())
    check_action(action, "GradientTestBatchSize", "batch_size", 32, math.ceil(32 * 1.44 / 0.81))
    assert action["to"] == 57 and "NormTest=1.2 vs theta=0.9" in action["why"]
    # a prefetched batch of the old size with the same reading does not grow twice
    assert control.observe(record(2, NormTest=1.2, GradNorm=0.5), sgd()) == []
    (action,) = control.observe(record(3, batch_size=57, NormTest=0.95, GradNorm=3.0), sgd())
    assert action["to"] == math.ceil(57 * 0.95**2 / 0.81) == 64
    assert control.observe(record(4, batch_size=64, NormTest=0.01, GradNorm=3.0), sgd()) == []
    assert sampler.batch_size == 64  # never shrinks


def test_norm_test_cap_and_undefined_readings():
    sampler = AdaptiveBatchSampler(1000, 32)
    control = GradientTestBatchSize(sampler, max_batch_size=50)
    assert control.observe(record(0, NormTest=NAN, GradNorm=0.5), sgd()) == []
    assert control.observe(record(1, batch_size=1, NormTest=2.0, GradNorm=0.5), sgd()) == []
    assert control.observe(record(2, NormTest=2.0, GradNorm=0.0), sgd()) == []
    assert control.observe(record(2, NormTest=2.0, GradNorm=1e200), sgd()) == []  # G overflows
    assert control.observe(record(3, NormTest=2.0, GradNorm=0.5), sgd())[0]["to"] == 50
    assert control.observe(record(4, batch_size=50, NormTest=5.0, GradNorm=0.5), sgd()) == []
    assert GradientTestBatchSize(AdaptiveBatchSampler(300, 8)).max_batch_size == 300


def test_augmented_test_takes_the_larger_requirement():
    assert DEFAULT_NU == pytest.approx(5.6713, abs=1e-4)
    sampler = AdaptiveBatchSampler(1000, 16)
    control = GradientTestBatchSize(sampler, test="augmented")
    assert control.instruments == ("InnerTest", "OrthoTest", "GradNorm")
    # inner: ceil(16 * 1.0^2 / 0.81) = 20; ortho: ceil(16 * 3^2 / nu^2) = 5 -> 20
    (action,) = control.observe(record(0, 16, InnerTest=1.0, OrthoTest=3.0, GradNorm=2.0), sgd())
    assert action["to"] == math.ceil(16 / 0.81) == 20
    # inner: ceil(20 * 0.5^2 / 0.81) = 7; ortho: ceil(20 * 7^2 / nu^2) = 31 -> 31
    (action,) = control.observe(record(1, 20, InnerTest=0.5, OrthoTest=7.0, GradNorm=2.0), sgd())
    assert action["to"] == math.ceil(20 * 49 / DEFAULT_NU**2) == 31
    assert "OrthoTest=7 vs nu=5.671" in action["why"]
    assert control.observe(record(2, 31, InnerTest=0.5, OrthoTest=5.0, GradNorm=2.0), sgd()) == []


def test_gradient_test_averages_variance_and_gradient_norm_separately():
    sampler = AdaptiveBatchSampler(1000, 32)
    control = GradientTestBatchSize(sampler, average_over=2)
    assert control.observe(record(0, NormTest=1.2, GradNorm=0.5), sgd()) == []  # window not full
    # Var = 1.44*32*0.25 = 11.52 (G = 0.25) and 0.36*32*1 = 11.52 (G = 1):
    # ceil(11.52 / (0.81 * 0.625)) = 23 <= 32
    assert control.observe(record(1, NormTest=0.6, GradNorm=1.0), sgd()) == []
    # window = records 1, 2: Var = (11.52 + 4*32*0.25) / 2 = 21.76, G = 0.625
    (action,) = control.observe(record(2, NormTest=2.0, GradNorm=0.5), sgd())
    assert action["to"] == math.ceil(21.76 / (0.81 * 0.625)) == 43


def test_gradient_test_rejects_unknown_test():
    with pytest.raises(ValueError, match="test must be one of"):
        GradientTestBatchSize(AdaptiveBatchSampler(10, 2), test="angle")


# ------------------------------------------------------------------------------ AlphaLR
def alpha_records(alphas, start=0, batch_size=32, loss=1.0):
    return [record(start + i, batch_size, Alpha=a, Loss=loss) for i, a in enumerate(alphas)]


def feed(control, records, opt) -> list[list[dict]]:
    return [control.observe(r, opt) for r in records]


def test_alpha_lr_regular_change_and_window_reset():
    opt, control = sgd(0.1), AlphaLR(window=3, warmup=0, significance=1.0)
    out = feed(control, alpha_records([0.5, 0.7, 0.6]), opt)
    assert out[:2] == [[], []]
    ratio = ((1 + 0.15) / (1 + 0.6)) ** 0.5  # median 0.6, within the clip range
    (action,) = out[2]
    check_action(action, "AlphaLR", "lr", 0.1, 0.1 * ratio)
    assert "median Alpha=0.6" in action["why"]
    assert "3 of 3 above target, sign test p=0.25 <= 1" in action["why"]  # 2 / 2^3
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * ratio)
    assert control.scale == pytest.approx(ratio)
    # the window restarts after a change: two more readings are not enough
    assert feed(control, alpha_records([0.9, 0.9], start=3), opt) == [[], []]


def test_alpha_lr_dead_band_slides_the_window():
    opt, control = sgd(0.1), AlphaLR(window=3, warmup=0, significance=1.0)
    out = feed(control, alpha_records([0.1, 0.18, 0.15, 0.4, 0.5]), opt)
    assert out[:4] == [[], [], [], []]  # medians 0.15, then 0.18: inside target +- 0.05
    (action,) = out[4]  # window (0.15, 0.4, 0.5): median 0.4
    assert action["to"] == pytest.approx(0.1 * (1.15 / 1.4) ** 0.5)


def test_alpha_lr_clipping_of_one_change():
    opt, control = sgd(1.0), AlphaLR(window=3, warmup=0, significance=1.0)
    (action,) = feed(control, alpha_records([-0.9, -0.9, -0.9]), opt)[2]
    assert action["to"] == pytest.approx(1.15)  # sqrt(1.15 / 0.1) = 3.4 clipped
    (action,) = feed(control, alpha_records([-1.0, -1.5, -1.0], start=3), opt)[2]
    assert action["to"] == pytest.approx(1.15**2)  # median -1: the upper clip
    opt = sgd(1.0)
    control = AlphaLR(window=3, warmup=0, max_change=(0.9, 1.15), significance=1.0)
    (action,) = feed(control, alpha_records([0.8, 0.8, 0.8]), opt)[2]
    assert action["to"] == pytest.approx(0.9)  # sqrt(1.15 / 1.8) = 0.80 clipped


def test_alpha_lr_bounds_relative_to_initial_rate():
    opt, control = sgd(1.0), AlphaLR(window=1, warmup=0, bounds=(0.5, 1.2), significance=1.0)
    (first,) = control.observe(record(0, Alpha=-1.0, Loss=1.0), opt)
    assert first["to"] == pytest.approx(1.15)
    (second,) = control.observe(record(1, Alpha=-1.0, Loss=1.0), opt)
    assert second["to"] == pytest.approx(1.2)  # 1.15^2 capped at 1.2 x the initial rate
    assert control.observe(record(2, Alpha=-1.0, Loss=1.0), opt) == []
    assert control.scale == pytest.approx(1.2)


def test_alpha_lr_multiplies_the_schedule_in_force_for_every_group():
    opt = sgd(0.1, groups=2)
    control = AlphaLR(window=1, warmup=0, bounds=(0.5, 1.2), significance=1.0)
    opt.param_groups[1]["lr"] = 0.01
    (action,) = control.observe(record(0, Alpha=-1.0, Loss=1.0), opt)
    assert action["from"] == [0.1, 0.01]
    assert action["to"] == pytest.approx([0.115, 0.0115])
    opt.param_groups[0]["lr"] = 0.05  # a schedule lowers the rates
    opt.param_groups[1]["lr"] = 0.005
    (action,) = control.observe(record(1, Alpha=-1.0, Loss=1.0), opt)
    ratio = 1.2 / 1.15  # the remaining room below the upper bound
    assert action["to"] == pytest.approx([0.05 * ratio, 0.005 * ratio])


def test_alpha_lr_emergency_halving_on_a_non_finite_loss():
    opt, control = sgd(0.1), AlphaLR(warmup=100)
    (action,) = control.observe(record(0, Alpha=0.1, Loss=NAN), opt)
    check_action(action, "AlphaLR", "lr", 0.1, 0.05)
    assert action["why"].startswith("emergency: Loss=nan is not finite")


def test_alpha_lr_emergency_on_loss_blowup_and_lower_bound():
    opt, control = sgd(0.1), AlphaLR(warmup=100, loss_smoothing=0.0, bounds=(0.25, 10.0))
    for step, loss in enumerate([1.0, 0.5, 4.9]):  # 4.9 < 10 * 0.5
        assert control.observe(record(step, Alpha=0.0, Loss=loss), opt) == []
    (action,) = control.observe(record(3, Alpha=0.0, Loss=5.5), opt)
    assert action["to"] == pytest.approx(0.05) and "running minimum 0.5" in action["why"]
    # the minimum restarts at 5.5: a loss that stays high triggers nothing more
    assert control.observe(record(4, Alpha=0.0, Loss=6.0), opt) == []
    (action,) = control.observe(record(5, Alpha=0.0, Loss=60.0), opt)
    assert action["to"] == pytest.approx(0.025)  # scale 0.25: the lower bound
    assert control.observe(record(6, Alpha=0.0, Loss=NAN), opt) == []  # cannot go lower

    # with averaging: E = 1, then 0.9 + 0.1 * 20 = 2.9, then 0.9 * 2.9 + 0.1 * 100 = 12.61 > 10
    opt, control = sgd(0.1), AlphaLR(warmup=100)
    assert control.observe(record(0, Alpha=0.0, Loss=1.0), opt) == []
    assert control.observe(record(1, Alpha=0.0, Loss=20.0), opt) == []
    (action,) = control.observe(record(2, Alpha=0.0, Loss=100.0), opt)
    assert "average 12.61" in action["why"]


def test_alpha_lr_keeps_the_window_across_batch_sizes_and_waits_for_warmup():
    opt, control = sgd(0.1), AlphaLR(window=3, warmup=0, significance=1.0)
    records = alpha_records([0.6, 0.6]) + alpha_records([0.6, 0.6, 0.6], start=2, batch_size=17)
    out = feed(control, records, opt)
    assert out[:2] == [[], []]
    assert out[2][0]["step"] == 2  # readings at batch sizes 32, 32 and 17 form one window
    opt, control = sgd(0.1), AlphaLR(window=3, warmup=5, significance=1.0)
    out = feed(control, alpha_records([0.6] * 8), opt)
    assert [bool(a) for a in out] == [False] * 7 + [True]


# ----------------------------------------------------------------- EvidenceEarlyStopping
def stopping_records(values, start=0):
    return [record(start + i, EarlyStopping=v) for i, v in enumerate(values)]


def test_evidence_early_stopping_patience_reset_and_nan():
    opt = SimpleNamespace(param_groups=[], should_stop=False, stop_reason=None)
    control = EvidenceEarlyStopping(window=2, patience=3)
    # averages: -0.15, 0.3, 0.25, (nan skipped), -0.025 (reset), 0.05, 0.15, 0.1 -> stop
    values = [-0.5, 0.2, 0.4, 0.1, NAN, -0.15, 0.25, 0.05, 0.15]
    out = feed(control, stopping_records(values), opt)
    assert [bool(a) for a in out] == [False] * 8 + [True]
    (action,) = out[8]
    check_action(action, "EvidenceEarlyStopping", "stop", False, True)
    assert opt.should_stop and "EvidenceEarlyStopping at step 8" in opt.stop_reason
    assert "= 0.1 > 0 for 3 tracked steps" in action["why"]
    assert control.observe(record(9, EarlyStopping=1.0), opt) == []  # acts once


def test_evidence_early_stopping_min_steps():
    opt = SimpleNamespace(param_groups=[], should_stop=False, stop_reason=None)
    control = EvidenceEarlyStopping(window=1, patience=2, min_steps=3)
    out = feed(control, stopping_records([0.5] * 5), opt)
    assert [bool(a) for a in out] == [False, False, False, False, True]


# ------------------------------------------------------------------- state round trips
def round_trip_decisions(make, records, split, opt_factory):
    """Decisions of a run equal those of a copy restored from its state at ``split``."""
    control, opt = make(), opt_factory()
    feed(control, records[:split], opt)
    state, opt_copy = copy.deepcopy(control.state_dict()), copy.deepcopy(opt)
    expected = feed(control, records[split:], opt)
    restored = make()
    restored.load_state_dict(state)
    assert feed(restored, records[split:], opt_copy) == expected
    assert any(expected)
    return restored


def test_state_dict_round_trips_give_identical_decisions():
    gen = torch.Generator().manual_seed(0)

    def uniform(low, high, n):
        return (low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)).tolist()

    cabs_records = [
        record(i, CABS=c, Loss=lo)
        for i, (c, lo) in enumerate(zip(uniform(20, 200, 30), uniform(0.5, 2, 30)))
    ]
    restored = round_trip_decisions(
        lambda: CABSBatchSize(AdaptiveBatchSampler(5000, 32)), cabs_records, 12, sgd
    )
    assert restored.sampler.batch_size == restored.state_dict()["batch_size"]
    norm_records = [
        record(i, NormTest=t, GradNorm=1.0) for i, t in enumerate(uniform(0.5, 1.5, 30))
    ]
    round_trip_decisions(
        lambda: GradientTestBatchSize(AdaptiveBatchSampler(5000, 4), average_over=3),
        norm_records,
        6,
        sgd,
    )
    alpha_input = [
        record(i, Alpha=a, Loss=1.0 / (i + 1)) for i, a in enumerate(uniform(0.3, 0.95, 60))
    ]
    round_trip_decisions(lambda: AlphaLR(window=6, warmup=2), alpha_input, 13, sgd)
    early = [record(i, EarlyStopping=v) for i, v in enumerate(uniform(-0.3, 0.5, 40))]
    round_trip_decisions(
        lambda: EvidenceEarlyStopping(window=3, patience=4),
        early,
        5,
        lambda: SimpleNamespace(param_groups=[], should_stop=False, stop_reason=None),
    )


# ------------------------------------------------------------------------- closed loops
def classification(n: int = 512, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    y = (x[:, :3] + 0.5 * torch.randn(n, 3, generator=gen)).argmax(1)
    return model, nn.CrossEntropyLoss(), TensorDataset(x, y)


def train(opt, model, loss_fn, data, sampler, steps: int) -> None:
    """Plain loop over epochs of ``DataLoader(batch_sampler=sampler)`` for ``steps`` steps."""
    done = 0
    while done < steps and not opt.should_stop:
        for x, y in DataLoader(data, batch_sampler=sampler):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            done += 1
            if done == steps or opt.should_stop:
                return


def actions(history: list[dict], controller: str) -> list[tuple[int, dict]]:
    return [
        (i, a)
        for i, r in enumerate(history)
        for a in r.get("actions", [])
        if a["controller"] == controller
    ]


def test_closed_loop_gradient_test_grows_the_batch():
    model, loss_fn, data = classification()
    sampler = AdaptiveBatchSampler(data, 8, drop_last=True)
    control = GradientTestBatchSize(sampler, theta=0.3, max_batch_size=256)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=(),
        controllers=[control],
    )
    assert {i.name for i in opt.instruments} == {"NormTest", "GradNorm"}
    train(opt, model, loss_fn, data, sampler, 12)
    grown = actions(opt.history, "GradientTestBatchSize")
    assert grown and grown[0][1]["from"] == 8
    for i, action in grown:  # the next batch has the new size (no Alpha: records end in-step)
        assert opt.history[i]["batch_size"] == action["from"] < action["to"]
        assert opt.history[i + 1]["batch_size"] == action["to"]


def test_closed_loop_cabs_sets_the_batch_size():
    model, loss_fn, data = classification(n=2048)
    sampler = AdaptiveBatchSampler(data, 32, drop_last=True)
    control = CABSBatchSize(sampler, min_batch_size=4, max_batch_size=512)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.5),
        model,
        loss_fn,
        instruments=(),
        controllers=[control],
    )
    train(opt, model, loss_fn, data, sampler, 10)
    changed = actions(opt.history, "CABSBatchSize")
    # first record: N = tr(Sigma), D = L and the same lr, so B = lr * tr(Sigma) / L = CABS
    assert changed[0][0] == 0
    assert changed[0][1]["to"] == min(max(round(opt.history[0]["CABS"]), 4), 512)
    for i, action in changed:
        assert opt.history[i + 1]["batch_size"] == action["to"]
    assert sampler.batch_size == changed[-1][1]["to"]


def test_closed_loop_alpha_lr_brakes_a_too_large_rate():
    model, loss_fn, data = classification()
    sampler = AdaptiveBatchSampler(data, 64, drop_last=True)
    control = AlphaLR(window=5, warmup=0)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=20.0),
        model,
        loss_fn,
        instruments=(),
        controllers=[control],
    )
    train(opt, model, loss_fn, data, sampler, 15)
    changed = actions(opt.history, "AlphaLR")
    assert changed and opt.param_groups[0]["lr"] < 20.0
    for i, action in changed:  # record t is completed (and acted on) during step t + 1
        assert action["step"] == opt.history[i]["step"]
        assert action["from"] == pytest.approx(opt.history[i]["lr"])
        assert opt.history[i + 1]["lr"] == pytest.approx(action["to"])
    assert opt.param_groups[0]["lr"] == pytest.approx(20.0 * control.scale)


def test_closed_loop_evidence_early_stopping_on_an_overfit_regression():
    torch.manual_seed(0)
    model, loss_fn = nn.Linear(4, 1), nn.MSELoss()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=gen)
    data = TensorDataset(x, x @ torch.ones(4, 1) + 0.5 * torch.randn(64, 1, generator=gen))
    sampler = AdaptiveBatchSampler(data, 64, shuffle=False)  # full batch: the sample's optimum
    control = EvidenceEarlyStopping(window=5, patience=5)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.2),
        model,
        loss_fn,
        instruments=(),
        controllers=[control],
    )
    train(opt, model, loss_fn, data, sampler, 500)
    assert opt.should_stop and opt.stop_reason.startswith("EvidenceEarlyStopping")
    assert opt.history[0]["EarlyStopping"] < 0 < opt.history[-1]["EarlyStopping"]
    ((i, action),) = actions(opt.history, "EvidenceEarlyStopping")
    assert i == len(opt.history) - 1 and action["what"] == "stop"
    assert 10 <= opt.history[-1]["step"] < 499


def test_resume_through_the_optimizer_state_continues_identically():
    def build(lr: float = 2.0):
        model, loss_fn, data = classification()
        sampler = AdaptiveBatchSampler(data, 8, drop_last=True, seed=5)
        controllers = [
            GradientTestBatchSize(sampler, theta=0.5, average_over=2),
            AlphaLR(window=3, warmup=0, significance=1.0),
        ]
        opt = MonitoredOptimizer(
            torch.optim.SGD(model.parameters(), lr=lr),
            model,
            loss_fn,
            instruments=("Loss",),
            controllers=controllers,
        )
        return opt, model, loss_fn, data, sampler

    opt, model, loss_fn, data, sampler = build()
    train(opt, model, loss_fn, data, sampler, 8)
    checkpoint = copy.deepcopy((model.state_dict(), opt.state_dict(), sampler.state_dict()))
    resumed_at = len(opt.history)
    train(opt, model, loss_fn, data, sampler, 10)
    later = opt.history[resumed_at:]
    assert actions(later, "GradientTestBatchSize") and actions(later, "AlphaLR")

    opt2, model2, loss_fn2, data2, sampler2 = build(lr=0.01)
    model2.load_state_dict(checkpoint[0])
    opt2.load_state_dict(checkpoint[1])
    sampler2.load_state_dict(checkpoint[2])
    assert sampler2.batch_size == checkpoint[2]["batch_size"]
    train(opt2, model2, loss_fn2, data2, sampler2, 10)
    assert [r.get("actions") for r in opt2.history] == [r.get("actions") for r in opt.history]
    assert [r["Loss"] for r in opt2.history] == pytest.approx([r["Loss"] for r in opt.history])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]

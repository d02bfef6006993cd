"""MonitoredOptimizer behaviour: passivity, RNG, closure, resume, schedules, edge cases, errors."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from models import make_problem
from torch import nn

from cockpit_optim import (
    MonitoredOptimizer,
    ReadingWarning,
    UnsupportedLossError,
    UnsupportedModelError,
    load_log,
    schedules,
)
from cockpit_optim.instruments import GradHist1d

PASSIVE = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}


def train(
    problem, make_opt, monitored, steps=5, instruments="full", track=1, closure=False, dropout=False
):
    model, loss_fn, batch = make_problem(problem)
    if dropout:
        model = nn.Sequential(model[0], nn.Dropout(0.3), *list(model)[1:])
    opt = make_opt(model.parameters())
    if monitored:
        opt = MonitoredOptimizer(opt, model, loss_fn, instruments=instruments, track=track)
    gen = torch.Generator().manual_seed(3)
    rng_states = []
    for _ in range(steps):
        x, y = batch(gen, 6)
        if closure:

            def step_closure(x=x, y=y):
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss

            opt.step(step_closure)
        else:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        rng_states.append(torch.get_rng_state().clone())
    return model, opt, rng_states


@pytest.mark.parametrize("name", sorted(PASSIVE))
def test_passive_bit_identity_and_global_rng(name):
    bare, _, bare_rng = train("cnn", PASSIVE[name], monitored=False, dropout=True)
    watched, opt, watched_rng = train("cnn", PASSIVE[name], monitored=True, dropout=True)
    for p, q in zip(bare.parameters(), watched.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(bare_rng, watched_rng):
        assert torch.equal(a, b)
    assert len(opt.history) == 4  # the last record waits for its Alpha
    assert math.isfinite(opt.history[0]["HessMaxEV"])


def test_closure_form_equals_plain_loop():
    _, plain, _ = train("mlp", PASSIVE["adam"], monitored=True)
    _, closed, _ = train("mlp", PASSIVE["adam"], monitored=True, closure=True)
    assert len(plain.history) == len(closed.history) >= 3
    for a, b in zip(plain.history, closed.history):
        for key in ("Loss", "NormTest", "Alpha", "HessTrace", "EarlyStopping", "UpdateSize"):
            assert a[key] == b[key]


def _legacy(state: dict) -> dict:
    """A monitor state as saved before instruments kept their own state."""
    monitor = dict(state["monitor"])
    own = monitor.pop("instruments")
    alpha = own["Alpha"]
    monitor["pending"] = {"record": monitor["pending"]["record"], **alpha}
    monitor["eigenvector"] = own["HessMaxEV"]["vector"]
    monitor["histogram_draws"] = own["GradHist1d"]["draws"]
    return {**state, "monitor": monitor}


def _checkpoint_run(tmp_path, split, legacy=False):
    """Train 7 steps; when split, save after 3 steps and continue in fresh objects."""
    model, loss_fn, batch = make_problem("mlp")
    gen = torch.Generator().manual_seed(5)
    batches = [batch(gen, 5 + i % 3) for i in range(7)]

    def build(model):
        return MonitoredOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            model,
            loss_fn,
            instruments="full",
            track=schedules.linear(2),
            log_dir=tmp_path,
        )

    opt = build(model)
    for i, (x, y) in enumerate(batches):
        if split and i == 3:
            state = {"model": model.state_dict(), "opt": opt.state_dict()}
            model, *_ = make_problem("mlp", seed=99)
            model.load_state_dict(state["model"])
            opt = build(model)
            opt.load_state_dict(_legacy(state["opt"]) if legacy else state["opt"])
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("legacy", [False, True], ids=["state", "legacy-state"])
def test_resume_continues_exactly(tmp_path, legacy):
    whole_model, whole = _checkpoint_run(tmp_path / "whole", split=False)
    split_model, split = _checkpoint_run(tmp_path / "split", split=True, legacy=legacy)
    for p, q in zip(whole_model.parameters(), split_model.parameters()):
        assert torch.equal(p, q)
    assert [r["step"] for r in whole.history] == [r["step"] for r in split.history]
    for a, b in zip(whole.history, split.history):
        for key in ("Loss", "Alpha", "HessMaxEV", "GradHist1d", "Distance", "GradHist2d"):
            assert a[key] == b[key], key
    logged = load_log(tmp_path / "split")
    assert [r["step"] for r in logged] == [r["step"] for r in whole.history]


def test_log_is_written_per_record_and_tolerates_truncation(tmp_path):
    _, loss_fn, _ = make_problem("mlp")
    model, opt, _ = train("mlp", PASSIVE["sgd"], monitored=False)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, log_dir=tmp_path
    )
    x, y = torch.randn(4, 3, 4), torch.randint(0, 4, (4,))
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    records = load_log(tmp_path)
    assert [r["step"] for r in records] == [0, 1]  # step 2's Alpha completes at step 3
    with open(tmp_path / "cockpit.jsonl", "a") as handle:
        handle.write('{"step": 2, "Lo')
    with pytest.warns(UserWarning, match="truncated"):
        assert len(load_log(tmp_path)) == 2


def test_schedules():
    lin = schedules.linear(4, offset=2)
    assert [s for s in range(15) if lin(s)] == [2, 6, 10, 14]
    log = schedules.logarithmic(end=1000, points=50)
    steps = sorted(log.steps)
    assert steps[0] == 0 and steps[-1] == 1000 and len(steps) == len(set(steps)) <= 50
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert gaps[-1] > gaps[0]
    with pytest.raises(ValueError):
        schedules.linear(0)


def step_with(opt, model, loss_fn, x, y):
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()


def test_batch_size_one_and_zero_gradient_give_nan_with_warning():
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, instruments="economy"
    )
    x, y = batch(torch.Generator().manual_seed(0), 1)
    with pytest.warns(ReadingWarning, match="batch size 1"):
        step_with(opt, model, loss_fn, x, y)
        step_with(opt, model, loss_fn, x, y)
    record = opt.history[0]
    assert math.isnan(record["NormTest"]) and math.isnan(record["Alpha"])
    assert math.isfinite(record["Loss"]) and math.isfinite(record["GradNorm"])

    zero = nn.Linear(3, 2)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    mse = nn.MSELoss()
    opt = MonitoredOptimizer(torch.optim.SGD(zero.parameters(), lr=0.1), zero, mse)
    with pytest.warns(ReadingWarning, match="zero"):
        step_with(opt, zero, mse, torch.randn(4, 3), torch.zeros(4, 2))
        step_with(opt, zero, mse, torch.randn(4, 3), torch.zeros(4, 2))
    assert math.isnan(opt.history[0]["NormTest"])


def test_non_finite_loss_keeps_training_and_matches_bare_step():
    model, loss_fn, batch = make_problem("regression")
    bare, _, _ = make_problem("regression")
    bare.load_state_dict(model.state_dict())
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, instruments="full"
    )
    bare_opt = torch.optim.SGD(bare.parameters(), lr=0.1)
    x, y = batch(torch.Generator().manual_seed(0), 4)
    y[0, 0] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step_with(opt, model, loss_fn, x, y)
        step_with(bare_opt, bare, nn.MSELoss(), x, y)
        for p, q in zip(model.parameters(), bare.parameters()):
            assert torch.equal(p.isnan(), q.isnan())
            assert torch.equal(p.nan_to_num(0.0), q.nan_to_num(0.0))
        step_with(opt, model, loss_fn, x, y)
    assert not math.isfinite(opt.history[0]["Loss"])


def test_histogram_subsample_is_unbiased_and_reported():
    model, loss_fn, batch = make_problem("mlp")
    exact = GradHist1d(bins=20, range=(-1, 1), max_elements=None)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), model, loss_fn, instruments=[exact]
    )
    sampled = [GradHist1d(bins=20, range=(-1, 1), max_elements=400) for _ in range(1)]
    x, y = batch(torch.Generator().manual_seed(0), 32)
    step_with(opt, model, loss_fn, x, y)
    reference = torch.tensor(opt.history[0]["GradHist1d"]["counts"], dtype=torch.float64)
    total = torch.zeros_like(reference)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), model, loss_fn, instruments=sampled, seed=1
    )
    for _ in range(200):
        step_with(opt, model, loss_fn, x, y)
    binned = [r["GradHist1d"]["binned"] for r in opt.history]
    population = opt.history[0]["GradHist1d"]["population"]
    assert all(b < population for b in binned)
    for record in opt.history:
        hist = record["GradHist1d"]
        total += torch.tensor(hist["counts"], dtype=torch.float64)
    l1 = (total / total.sum() - reference / reference.sum()).abs().sum()
    assert l1 < 0.03


def test_bad_inputs_name_the_fix():
    model, loss_fn, _ = make_problem("mlp")
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UnsupportedLossError, match="reduction='mean'"):
        MonitoredOptimizer(sgd, model, nn.CrossEntropyLoss(reduction="sum"))
    with pytest.raises(UnsupportedLossError, match="reduction='mean'"):
        MonitoredOptimizer(sgd, model, nn.MSELoss(reduction="none"))
    with pytest.raises(UnsupportedLossError, match="loss modules"):
        MonitoredOptimizer(sgd, model, nn.KLDivLoss())
    with pytest.raises(ValueError, match="valid names"):
        MonitoredOptimizer(sgd, model, loss_fn, instruments=["Loss", "GradNrom"])
    opt = MonitoredOptimizer(sgd, model, loss_fn)
    with pytest.warns(ReadingWarning, match="no call of loss_fn reached the backward pass"):
        opt.step()  # no backward at all: readings nan, the (empty) update taken
    opt.close()
    assert math.isnan(opt.history[0]["Loss"]) and opt.history[0]["GradNorm"] == 0.0

    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = MonitoredOptimizer(torch.optim.SGD(bn.parameters(), lr=0.1), bn, loss_fn)
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    with pytest.raises(UnsupportedModelError, match="eval mode"):
        step_with(opt, bn, loss_fn, x, y)
    bn.eval()
    step_with(opt, bn, loss_fn, x, y)
    step_with(opt, bn, loss_fn, x, y)
    assert math.isfinite(opt.history[-1]["NormTest"])


def test_module_without_individual_gradients_is_named_and_other_readings_go_on():
    class NoisyGain(nn.Module):  # random operations inside: no per-sample replay possible
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return nn.functional.dropout(x * self.gain, 0.5, training=True)

    model = nn.Sequential(nn.Linear(3, 4), NoisyGain(), nn.Linear(4, 2))
    loss_fn = nn.CrossEntropyLoss()
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, instruments="full"
    )
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    with pytest.warns(ReadingWarning, match="NoisyGain"):
        step_with(opt, model, loss_fn, x, y)
        step_with(opt, model, loss_fn, x, y)
    record = opt.history[0]
    assert math.isnan(record["NormTest"])
    for key in ("Loss", "GradNorm", "UpdateSize", "HessMaxEV"):
        assert math.isfinite(record[key])


def test_loss_module_shared_with_another_model_and_missing_loss_call():
    model, loss_fn, batch = make_problem("mlp")
    other, _, _ = make_problem("mlp", seed=3)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=["Loss", "NormTest"],
    )
    x, y = batch(torch.Generator().manual_seed(0), 6)
    for _ in range(2):
        opt.zero_grad()
        loss_fn(other(x), y).backward()  # same loss module, another model: ignored
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    assert len(opt.history) == 2 and math.isfinite(opt.history[1]["NormTest"])
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.warns(ReadingWarning, match="no call of loss_fn reached the backward pass"):
        opt.step()
    assert math.isnan(opt.history[-1]["Loss"])


@pytest.mark.parametrize("name", ["GradNorm", "Distance", "UpdateSize", "Time", "Loss"])
def test_each_cheap_instrument_alone(name):
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=[name],
        track=schedules.linear(2, offset=1),
    )
    gen = torch.Generator().manual_seed(0)
    thetas = []
    for _ in range(4):
        thetas.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
        step_with(opt, model, loss_fn, *batch(gen, 5))
    assert [r["step"] for r in opt.history] == [1, 3]
    assert all(math.isfinite(r[name]) for r in opt.history)
    if name == "Distance":  # theta_0 is taken at the first step() call, tracked or not
        expected = float((thetas[3] - thetas[0]).norm())
        assert opt.history[-1]["Distance"] == pytest.approx(expected, rel=1e-12)


def test_default_histogram_budget_is_within_one_percent_of_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 300), torch.randint(0, 10, (64,))
    records = []
    for budget in (None, GradHist1d().spec.max_elements):
        hist = GradHist1d(range=(-0.05, 0.05), max_elements=budget)
        opt = MonitoredOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0), model, loss_fn, instruments=[hist]
        )
        step_with(opt, model, loss_fn, x, y)
        opt.remove_hooks()
        records.append(opt.history[0]["GradHist1d"])
    exact, sampled = records
    assert exact["binned"] == exact["population"] > 4 * sampled["binned"]
    assert 2**18 - 100 < sampled["binned"] <= 2**20 + 100

    def normalized(r):
        c = torch.tensor([r["underflow"], *r["counts"], r["overflow"]], dtype=torch.float64)
        return c / c.sum()

    assert float((normalized(exact) - normalized(sampled)).abs().sum()) < 0.01


def test_log_keeps_strings_and_converts_array_scalars(tmp_path):
    import numpy as np

    from cockpit_optim.log import LogWriter

    writer = LogWriter(tmp_path)
    writer.write(
        {
            "step": 0,
            "why": "nan",
            "x": np.float32(1.5),
            "n": np.int64(3),
            "t": torch.tensor(2.0),
            "bad": float("-inf"),
        }
    )
    (record,) = load_log(tmp_path)
    assert record["why"] == "nan" and record["x"] == 1.5 and record["n"] == 3
    assert record["t"] == 2.0 and record["bad"] == float("-inf")


def test_plot_every_draws_the_live_cockpit(tmp_path):
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, log_dir=tmp_path, plot_every=2
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        step_with(opt, model, loss_fn, *batch(gen, 5))
    opt.close()
    assert (tmp_path / "cockpit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="log_dir"):
        MonitoredOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, plot_every=2
        )


def test_batchnorm_train_mode_opt_in_approximation_is_marked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    loss_fn = nn.CrossEntropyLoss()
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=["NormTest", "GradHist1d"],
        batchnorm_approximation=True,
    )
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    step_with(opt, model, loss_fn, x, y)
    record = opt.history[0]
    assert record["approximate"] is True and math.isfinite(record["NormTest"])
    model.eval()  # in eval mode the readings are exact again and no longer marked
    step_with(opt, model, loss_fn, x, y)
    step_with(opt, model, loss_fn, x, y)
    assert "approximate" not in opt.history[-1]


def test_a_controller_schedule_adds_tracked_steps():
    class EveryStep:
        instruments = ("NormTest",)
        track = 1

        def __init__(self):
            self.seen = []

        def observe(self, record, optimizer):
            self.seen.append(record["step"])
            return []

    model, loss_fn, batch = make_problem("mlp")
    watcher = EveryStep()
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=["Loss"],
        track=100,
        controllers=[watcher],
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        step_with(opt, model, loss_fn, *batch(gen, 5))
    assert watcher.seen == [0, 1, 2, 3]
    assert all(math.isfinite(r["NormTest"]) for r in opt.history)


def test_close_completes_the_record_waiting_for_alpha(tmp_path):
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=["Loss", "Alpha"],
        log_dir=tmp_path,
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        step_with(opt, model, loss_fn, *batch(gen, 5))
    assert [r["step"] for r in opt.history] == [0, 1]
    opt.close()
    assert [r["step"] for r in load_log(tmp_path)] == [0, 1, 2]
    assert math.isnan(opt.history[-1]["Alpha"]) and math.isfinite(opt.history[-1]["Loss"])

"""One device-to-host read per step: every way of turning a tensor into host values is counted
while ``step()`` runs (on a GPU each of them waits for all queued kernels)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from models import make_problem

from cockpit_optim import MonitoredOptimizer, ReadingWarning
from cockpit_optim.contract import Request
from cockpit_optim.instruments import BUSINESS, ECONOMY, GradHist1d, GradHist2d, Instrument
from cockpit_optim.transfer import HostTransfer

_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")
# Cross-entropy may ignore targets (ignore_index): whether any target of the step is ignored
# decides which rows are samples, one read at each step that collects losses.
TARGETS = 1


@contextlib.contextmanager
def counted_reads(monkeypatch):
    """Yield a list that collects the name of every host read made inside the block."""
    seen: list[str] = []
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            seen.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    yield seen
    monkeypatch.undo()


def _instruments(names, max_elements=64):
    """``names`` with histograms subsampled (``max_elements`` below the tiny models' B x D)."""
    out = [n for n in names if n not in ("GradHist1d", "GradHist2d")]
    out.append(GradHist1d(max_elements=max_elements))
    if "GradHist2d" in names:
        out.append(GradHist2d(max_elements=max_elements))
    return out


class _Recorder:
    """A controller that only looks (it makes completed Alphas reach controllers first)."""

    def __init__(self):
        self.seen = []

    def observe(self, record, optimizer):
        self.seen.append(record["step"])
        return []


def _reads_per_step(monkeypatch, problem, instruments, steps=4, track=1, controllers=()):
    model, loss_fn, batch = make_problem(problem)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        loss_fn,
        instruments,
        track=track,
        controllers=controllers,
    )
    gen = torch.Generator().manual_seed(0)
    counts = []
    for _ in range(steps):
        x, y = batch(gen, 16)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        with counted_reads(monkeypatch) as seen:
            opt.step()
        counts.append(len(seen))
    return counts, opt


@pytest.mark.parametrize("problem", ["mlp", "cnn"])
@pytest.mark.parametrize("names", [ECONOMY, BUSINESS], ids=["economy", "business"])
def test_tracked_step_reads_the_host_once(monkeypatch, problem, names):
    counts, opt = _reads_per_step(monkeypatch, problem, _instruments(names))
    # the CNN's Sigmoid takes its Hessian diagonal from BackPACK, which checks its loss once
    backpack = problem == "cnn" and names == BUSINESS
    assert counts == [TARGETS + (2 if backpack else 1)] * 4
    assert opt.history[0]["GradHist1d"]["binned"] < opt.history[0]["GradHist1d"]["population"]
    assert all(math.isfinite(r["NormTest"]) for r in opt.history)


def test_untracked_steps_read_nothing_and_alpha_completion_once(monkeypatch):
    counts, opt = _reads_per_step(monkeypatch, "mlp", _instruments(ECONOMY), steps=8, track=4)
    # steps 0 and 4 tracked, 1 and 5 complete their Alpha, the rest read nothing
    assert counts == [c + (TARGETS if c else 0) for c in (1, 1, 0, 0, 1, 1, 0, 0)]
    assert [r["step"] for r in opt.history] == [0, 4]
    assert all(math.isfinite(r["Alpha"]) for r in opt.history)


def test_controllers_get_alpha_before_the_update_within_one_read(monkeypatch):
    recorder = _Recorder()
    counts, opt = _reads_per_step(
        monkeypatch, "mlp", _instruments(ECONOMY), steps=5, controllers=[recorder]
    )
    assert counts == [TARGETS + 1] * 5
    assert recorder.seen == [0, 1, 2, 3]  # record t is complete before update t + 1
    opt.close()
    assert [r["step"] for r in opt.history] == [0, 1, 2, 3, 4]
    assert all(math.isfinite(r["UpdateSize"]) for r in opt.history)


def test_full_adds_one_read_per_lanczos_product(monkeypatch):
    counts, opt = _reads_per_step(monkeypatch, "mlp", _instruments((*BUSINESS, "HessMaxEV")))
    opt.close()
    assert counts == [TARGETS + 1 + r["HessMaxEV_hvps"] for r in opt.history]


def test_host_transfer_reads_once_and_runs_callbacks_in_order():
    transfer = HostTransfer()
    counts = torch.tensor([3, 2**40], dtype=torch.int64)
    scalar = transfer.defer(torch.tensor(0.5, dtype=torch.float32))
    pair = transfer.defer(counts, torch.ones(2, 2), convert=lambda c, o: (c, len(o)))
    with pytest.raises(RuntimeError, match="before the step's host read"):
        _ = scalar.value
    order = []
    transfer.then(lambda: order.append(("first", scalar.value)))
    transfer.then(lambda: transfer.then(lambda: order.append("next read")))
    assert transfer.pending
    transfer.read()
    assert scalar.value == 0.5 and pair.value == ([3.0, float(2**40)], 4)
    assert order == [("first", 0.5)] and transfer.reads == 1
    transfer.read()
    assert order == [("first", 0.5), "next read"] and transfer.reads == 1  # nothing to copy
    assert not transfer.pending


def test_a_failing_conversion_concerns_its_own_value_only():
    transfer = HostTransfer()
    broken = transfer.defer(torch.ones(2), convert=lambda values: 1 / 0)
    fine = transfer.defer(torch.full((), 3.0))
    transfer.then(lambda: None)
    transfer.read()
    assert fine.value == 3.0
    with pytest.raises(ZeroDivisionError):
        _ = broken.value


class _Undeclared(Instrument):
    """Reads a shared reduction without naming it in ``reads``."""

    name = "Undeclared"
    needs = Request(sq_norms=True)

    def compute(self, stats):
        return stats.sq_norms_sum


class _Declared(_Undeclared):
    name = "Declared"
    reads = ("sq_norms_sum",)


class _Broken(Instrument):
    name = "Broken"
    needs = Request(losses=True)

    def __init__(self, fail_at):
        self.fail_at, self.calls = fail_at, 0

    def compute(self, stats):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ZeroDivisionError("a bug in a custom instrument")
        return 1.0


def test_undeclared_reduction_still_works_at_the_cost_of_a_read(monkeypatch):
    undeclared, a = _reads_per_step(monkeypatch, "mlp", ["Loss", _Undeclared()], steps=2)
    declared, b = _reads_per_step(monkeypatch, "mlp", ["Loss", _Declared()], steps=2)
    assert declared == [TARGETS + 1] * 2 and undeclared == [TARGETS + 2] * 2
    for x, y in zip(a.history, b.history):
        assert x["Undeclared"] == pytest.approx(y["Declared"], rel=1e-12)


def test_a_failing_instrument_reads_nan_and_its_record_stays():
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        loss_fn,
        ["Loss", "UpdateSize", "Alpha", _Broken(fail_at=2)],
    )
    gen = torch.Generator().manual_seed(0)
    with pytest.warns(ReadingWarning, match="Broken of step 1 failed and reads nan"):
        for _ in range(4):
            x, y = batch(gen, 8)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    opt.close()
    assert [r["step"] for r in opt.history] == [0, 1, 2, 3]
    assert [math.isnan(r["Broken"]) for r in opt.history] == [False, True, False, False]
    assert all(math.isfinite(r["Alpha"]) and math.isfinite(r["Loss"]) for r in opt.history[:3])

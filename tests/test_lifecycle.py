"""The monitor's lifecycle: one monitor per model, hooks that hold nothing, copies, a real
``torch.optim.Optimizer``, ``close()`` that is safe to forget."""

from __future__ import annotations

import copy
import gc
import io
import math
import pickle
import subprocess
import sys
import textwrap
import weakref

import pytest
import reference as ref
import torch
from models import make_problem
from torch import nn

from cockpit_optim import CockpitError, MonitoredOptimizer

FIRST_ORDER = ("Loss", "NormTest", "InnerTest", "OrthoTest", "CABS")


def train(opt, model, loss_fn, batch, steps=3, seed=0, extra=None):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = batch(gen, 8)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        if extra is not None:
            extra(x, y)
        opt.step()


def _hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_a_new_monitor_detaches_the_old_one_which_then_holds_nothing():
    model, loss_fn, batch = make_problem("mlp")
    bare = _hooks(model) + _hooks(loss_fn)
    first = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn)
    with pytest.warns(UserWarning, match="it is detached"):
        second = MonitoredOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, instruments="business"
        )
    train(second, model, loss_fn, batch)
    assert first.engine.capture.loss_calls == [] and not first.engine.capture.armed
    assert len(second.history) == 2  # the third waits for its Alpha
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None
    hooked = _hooks(model) + _hooks(loss_fn)
    del second
    gc.collect()
    assert hooked > bare and _hooks(model) + _hooks(loss_fn) == bare  # a forgotten monitor


def test_memory_of_a_forgotten_monitor_does_not_grow():
    import tracemalloc

    model, loss_fn, batch = make_problem("mlp")
    old = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn)
    plain = torch.optim.SGD(model.parameters(), lr=0.1)  # training goes on without ``old``
    train(plain, model, loss_fn, batch, steps=2)
    tracemalloc.start()
    train(plain, model, loss_fn, batch, steps=5)
    before = tracemalloc.take_snapshot()
    train(plain, model, loss_fn, batch, steps=40)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 200_000, grown
    assert len(old.engine.capture.loss_calls) <= 1


def test_deep_copy_of_a_wrapped_model_carries_no_active_hooks():
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn)
    teacher = copy.deepcopy(model)
    assert _hooks(teacher) == _hooks(model)  # copied, but inert
    trace = []

    def teach(x, y):  # the copy is used with gradients between backward and step
        loss_fn(teacher(x), y).backward()

    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x, y = batch(gen, 8)
        trace.append((ref.flat_params(model), x, y))
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        teach(x, y)
        opt.step()
    opt.close()
    for record in opt.history:
        params, x, y = trace[record["step"]]
        losses, grads = ref.individual(model, loss_fn, params, x, y)
        for key, value in ref.first_order(losses, grads, 0.1).items():
            if key in FIRST_ORDER:
                assert math.isclose(record[key], value, rel_tol=1e-6), key


def test_two_monitors_on_disjoint_parameters_of_one_model_each_read_their_own():
    model, loss_fn, batch = make_problem("mlp")
    first = MonitoredOptimizer(
        torch.optim.SGD(model[1].parameters(), lr=0.1), model, loss_fn, instruments="business"
    )
    second = MonitoredOptimizer(
        torch.optim.SGD(model[3].parameters(), lr=0.1), model, loss_fn, instruments="business"
    )
    x, y = batch(torch.Generator().manual_seed(0), 8)
    params = ref.flat_params(model)
    for opt in (first, second):
        opt.zero_grad()
    loss_fn(model(x), y).backward()
    first.step()
    second.step()
    first.close()
    second.close()
    losses, grads = ref.individual(model, loss_fn, params, x, y)
    sizes = [p.numel() for p in params.values()]
    pieces = grads.split(sizes, dim=1)
    for opt, columns in ((first, pieces[:2]), (second, pieces[2:])):
        own = torch.cat(columns, dim=1)
        expected = ref.first_order(losses, own, 0.1)
        record = opt.history[0]
        for key in FIRST_ORDER:
            assert math.isclose(record[key], expected[key], rel_tol=1e-6), key
        assert math.isfinite(record["HessTrace"])


def test_models_with_non_leaf_attributes_and_old_weight_norm_are_monitored():
    model, loss_fn, batch = make_problem("mlp")
    model.scale = torch.ones(3, requires_grad=True) * 2.0  # a non-leaf tensor attribute
    nn.utils.weight_norm(model[3])
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, instruments="business"
    )
    train(opt, model, loss_fn, batch, steps=2)
    opt.close()
    assert len(opt.history) == 2 and all(math.isfinite(r["NormTest"]) for r in opt.history)


def test_a_real_optimizer_hooks_state_dict_with_weights_only_and_clear_copy_errors():
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.01), model, loss_fn, instruments="business"
    )
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_post_hook(lambda o, state: {**state, "extra": 1})
    train(opt, model, loss_fn, batch, steps=2)
    assert calls == ["pre", "post"] * 2
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["extra"] == 1 and state["monitor"]["step"] == 2
    for attempt in (lambda: pickle.dumps(opt), lambda: copy.deepcopy(opt)):
        with pytest.raises(TypeError, match=r"save opt\.state_dict"):
            attempt()


def test_step_after_close_raises_before_anything_changes_and_close_twice_is_fine():
    model, loss_fn, batch = make_problem("mlp")
    with MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn) as opt:
        train(opt, model, loss_fn, batch, steps=2)
    assert len(opt.history) == 2  # the context manager closed it: Alpha completed as nan
    opt.close()
    x, y = batch(torch.Generator().manual_seed(5), 8)
    loss_fn(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CockpitError, match="closed MonitoredOptimizer"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert opt.step_count == 2


def test_a_monitor_left_open_is_closed_at_exit(tmp_path):
    script = textwrap.dedent(
        f"""
        import torch
        from torch import nn
        from cockpit_optim import MonitoredOptimizer, load_log
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        loss_fn = nn.CrossEntropyLoss()
        opt = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn,
                                 log_dir={str(tmp_path)!r}, plot_every=2)
        for _ in range(5):
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    from cockpit_optim import load_log

    assert [r["step"] for r in load_log(tmp_path / "cockpit.jsonl")] == [0, 1, 2, 3, 4]
    assert (tmp_path / "cockpit.png").stat().st_size > 10_000

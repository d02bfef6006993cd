"""The boundaries between monitor, engine and instruments, and the two extension points a user
has: a layer rule for their own module and an instrument defined in their own file."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import reference as ref
import torch
from torch import nn

from cockpit_optim import MaterializedRule, MonitoredOptimizer, plot, register_rule
from cockpit_optim.contract import Request, Statistics
from cockpit_optim.instruments import REGISTRY, Instrument

PACKAGE = Path(__file__).resolve().parents[1] / "cockpit_optim"


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py")) if folder else []


def test_import_helper_resolves_relative_imports():
    names = _imports(PACKAGE / "engine" / "rules" / "build.py")
    assert "cockpit_optim.engine.rules.base" in names
    assert "cockpit_optim.engine.capture" in names  # the type-checking import counts too


def test_instruments_import_only_the_contract():
    allowed = ("cockpit_optim.contract", "cockpit_optim.transfer", "cockpit_optim.errors")
    for path in _modules("instruments"):
        for name in _imports(path):
            if name.startswith("cockpit_optim.") and not name.startswith(
                "cockpit_optim.instruments"
            ):
                assert name.startswith(allowed), f"{path.name} imports {name}"


def test_contract_imports_nothing_of_the_engine():
    for path in (PACKAGE / "contract.py", PACKAGE / "transfer.py"):
        internal = [n for n in _imports(path) if n.startswith("cockpit_optim.")]
        assert all(n.startswith("cockpit_optim.transfer") for n in internal), (path, internal)


def test_engine_never_imports_plotting_controllers_or_experiments():
    forbidden = (
        "cockpit_optim.plotting",
        "cockpit_optim.controllers",
        "cockpit_optim.experiment",
        "cockpit_optim.instruments",
        "cockpit_optim.optimizer",
        "controllers",
    )
    engine = _modules("engine")
    assert len(engine) > 10
    for path in engine:
        for name in _imports(path):
            assert not name.startswith(forbidden), f"{path.name} imports {name}"


@pytest.mark.parametrize(
    "files",
    [
        ["optimizer.py", "readings.py", "pipeline.py", "contract.py", "transfer.py"],
        [str(p.relative_to(PACKAGE)) for p in _modules("engine")],
    ],
    ids=["monitor", "engine"],
)
def test_no_instrument_is_named_by_the_monitor_or_the_engine(files):
    names = sorted(REGISTRY)
    assert "Alpha" in names and "HessMaxEV" in names
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    for file in files:
        found = pattern.findall((PACKAGE / file).read_text())
        assert not found, f"{file} names instruments {sorted(set(found))}"


# ------------------------------------------------------------------------ a user's layer rule
class Scale(nn.Module):
    """``y = x * gain + shift`` per feature: a module the engine has no rule for."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(1.0 + 0.3 * torch.randn(features))
        self.shift = nn.Parameter(0.1 * torch.randn(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain + self.shift


calls = []


@register_rule(Scale, parameters=("gain", "shift"))
def scale_rule(module: Scale, inputs: torch.Tensor, grad_out: torch.Tensor):
    """``g_n(gain) = B x_n * delta_n``, ``g_n(shift) = B delta_n`` (``delta`` of the mean loss)."""
    calls.append(module)
    batch = inputs.shape[0]
    return MaterializedRule(
        [module.gain, module.shift], [batch * inputs * grad_out, batch * grad_out]
    )


def test_registered_rule_gives_exact_readings():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), Scale(6), nn.Tanh(), nn.Linear(6, 3))
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    params = ref.flat_params(model)
    losses, grads = ref.individual(model, loss_fn, params, x, y)
    expected = ref.first_order(losses, grads, lr=0.1)
    opt = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn)
    calls.clear()
    for batch in ((x, y), (torch.randn(10, 4), torch.randint(0, 3, (10,)))):
        opt.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        opt.step()  # the second step completes the first record (Alpha)
    assert calls == [model[1], model[1]]  # the user's rule served the module, not the generic one
    record = opt.history[0]
    for key, value in expected.items():
        assert math.isclose(record[key], value, rel_tol=1e-5, abs_tol=1e-9), key
    opt.close()


def test_register_rule_refuses_what_is_not_a_module_type():
    with pytest.raises(TypeError, match=r"nn\.Module subclasses"):
        register_rule("Scale")


# ---------------------------------------------------------------------- a user's instrument
class MeanSquaredNorm(Instrument):
    """``(1/B) sum_n ||g_n||^2`` from existing statistics, drawn in the gradients column."""

    name = "MeanSquaredNorm"
    needs = Request(sq_norms=True)
    reads = ("sq_norms_sum",)
    panel = "gradients"

    def compute(self, stats: Statistics) -> float:
        return stats.sq_norms_sum / stats.batch_size


def test_user_instrument_appears_in_the_record_and_the_plot(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    loss_fn = nn.CrossEntropyLoss()
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        loss_fn,
        instruments=["Loss", "GradNorm", MeanSquaredNorm()],
    )
    expected = []
    for _ in range(4):
        x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
        _, grads = ref.individual(model, loss_fn, ref.flat_params(model), x, y)
        expected.append(float((grads * grads).sum(1).mean()))
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    readings = [r["MeanSquaredNorm"] for r in opt.history]
    assert readings == pytest.approx(expected, rel=1e-6)
    fig = plot(opt, tmp_path / "cockpit.png")
    (ax,) = [a for a in fig.axes if a.get_label() == "MeanSquaredNorm"]
    points = ax.collections[0].get_offsets()
    assert list(points[:, 0]) == [0, 1, 2, 3]
    assert list(points[:, 1]) == pytest.approx(expected, rel=1e-6)
    assert ax.get_title(loc="left") == "MeanSquaredNorm"
    assert fig.get_size_inches()[1] > 12.0  # a row was added for it
    assert (tmp_path / "cockpit.png").stat().st_size > 0
    opt.close()


def test_declared_panel_must_be_a_known_family():
    with pytest.raises(ValueError, match="panel must be one of"):

        class Misplaced(Instrument):
            name = "Misplaced"
            panel = "sidebar"


# ------------------------------------------------------------------- instruments that fail
class Flaky(Instrument):
    """Reads the loss; ``request`` fails at the steps in ``bad``."""

    name = "Flaky"
    needs = Request(losses=True)
    reads = ("loss_mean",)

    def __init__(self, bad: set[int]) -> None:
        self.bad, self.calls = bad, 0

    def request(self) -> Request:
        self.calls += 1
        if self.calls - 2 in self.bad:  # the first call is the monitor's construction
            raise RuntimeError("flaky request")
        return self.needs

    def compute(self, stats: Statistics) -> float:
        return stats.loss_mean


def _steps(opt, model, loss_fn, count):
    gen = torch.Generator().manual_seed(3)
    for _ in range(count):
        x, y = torch.randn(6, 5, generator=gen), torch.randint(0, 2, (6,), generator=gen)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


def test_a_failing_request_loses_only_that_reading():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    loss_fn = nn.CrossEntropyLoss()
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, ["Loss", "Alpha", Flaky({1})]
    )
    with pytest.warns(UserWarning, match="Flaky of step 1 failed and reads nan"):
        _steps(opt, model, loss_fn, 4)
    assert [r["step"] for r in opt.history] == [0, 1, 2]
    flaky = [r["Flaky"] for r in opt.history]
    assert math.isnan(flaky[1]) and flaky[0] == pytest.approx(opt.history[0]["Loss"])
    assert all(math.isfinite(r["Alpha"]) and math.isfinite(r["Loss"]) for r in opt.history)


def test_a_failing_pending_request_loses_only_that_reading(monkeypatch):
    from cockpit_optim.instruments import Alpha

    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    loss_fn = nn.CrossEntropyLoss()
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, ["Loss", "Alpha"]
    )
    monkeypatch.setattr(Alpha, "pending", lambda self: 1 / 0)
    with pytest.warns(UserWarning, match="Alpha of step 0 failed and reads nan"):
        _steps(opt, model, loss_fn, 3)
    assert [r["step"] for r in opt.history] == [0, 1]
    assert all(math.isnan(r["Alpha"]) and math.isfinite(r["Loss"]) for r in opt.history)


def test_controllers_added_later_observe_the_records():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    loss_fn = nn.CrossEntropyLoss()
    opt = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, ["Loss"])
    seen = []

    class Watcher:
        def observe(self, record, optimizer):
            seen.append(record["step"])
            return []

    _steps(opt, model, loss_fn, 1)
    opt.controllers.append(Watcher())
    _steps(opt, model, loss_fn, 2)
    assert seen == [1, 2]


def test_two_different_requests_for_one_option_are_refused():
    from cockpit_optim.contract import HistogramRequest

    one = Request(hist1d=HistogramRequest(10, None, None))
    assert (one | Request(hist1d=HistogramRequest(10, None, None))).hist1d == one.hist1d
    with pytest.raises(ValueError, match="different hist1d"):
        one | Request(hist1d=HistogramRequest(20, None, None))
    with pytest.raises(ValueError, match="disagree on the curvature"):
        Request(curvature="ggn") | Request(curvature="exact")

"""TICDiag/TICTrace on any model: a non-negative curvature diagonal, named, against dense GGNs;
``nan`` with a warning for a Hessian diagonal with negative entries."""

from __future__ import annotations

import math

import pytest
import reference as ref
import torch
from models import make_problem
from test_architectures import TinyTransformer, _tokens
from test_curvature_trace import gelu_layernorm_mlp
from torch import nn

from cockpit_optim import MonitoredOptimizer, ReadingWarning
from cockpit_optim.instruments import TICDiag, TICTrace


def _one_step(model, loss_fn, x, y, instruments):
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), model, loss_fn, instruments=instruments
    )
    params = ref.flat_params(model)
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return opt.history[0], params


def _tic_reference(model, loss_fn, params, x, y, diagonal):
    _, grads = ref.individual(model, loss_fn, params, x, y)
    second = (grads * grads).mean(0)
    return float((second / (diagonal + 1e-7)).sum()), float(second.sum() / (diagonal.sum() + 1e-7))


@pytest.mark.parametrize("kind", ["transformer", "gelu-layernorm", "tanh-regression"])
def test_tic_reads_the_exact_ggn_diagonal_where_the_hessian_diagonal_is_not_known(kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    if kind == "transformer":
        model, loss_fn = TinyTransformer(width=4), nn.CrossEntropyLoss()
        x, y = _tokens(gen, 6)
    elif kind == "gelu-layernorm":
        model, loss_fn = gelu_layernorm_mlp(), nn.CrossEntropyLoss()
        x, y = torch.randn(6, 6, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    else:
        model, loss_fn, batch = make_problem("regression")
        x, y = batch(gen, 6)
    record, params = _one_step(model, loss_fn, x, y, ["TICDiag", "TICTrace"])
    assert record["TICDiag_curvature"] == record["TICTrace_curvature"] == "ggn"
    ggn = torch.diagonal(ref.dense_ggn(model, loss_fn, params, x, y))
    tic_diag, tic_trace = _tic_reference(model, loss_fn, params, x, y, ggn)
    assert math.isclose(record["TICDiag"], tic_diag, rel_tol=1e-5)
    assert math.isclose(record["TICTrace"], tic_trace, rel_tol=1e-5)


def test_monte_carlo_ggn_diagonal_is_non_negative_and_unbiased_for_many_classes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 20))
    loss_fn = nn.CrossEntropyLoss()  # 20 classes: above the exact limit, Monte-Carlo
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 5, generator=gen), torch.randint(0, 20, (6,), generator=gen)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), model, loss_fn, instruments=["TICTrace"]
    )
    params = ref.flat_params(model)
    for _ in range(100):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    records = opt.history
    assert all(r["TICTrace_curvature"] == "mc-ggn" and r["TICTrace"] > 0 for r in records)
    _, grads = ref.individual(model, loss_fn, params, x, y)
    second = float((grads * grads).mean(0).sum())
    traces = [second / r["TICTrace"] for r in records]  # the MC GGN traces, one per step
    exact = float(torch.diagonal(ref.dense_ggn(model, loss_fn, params, x, y)).sum())
    mean = sum(traces) / len(traces)
    spread = math.sqrt(sum((t - mean) ** 2 for t in traces) / (len(traces) - 1))
    assert abs(mean - exact) <= 4 * spread / math.sqrt(len(traces))


@pytest.mark.parametrize("problem", ["mlp", "cnn", "regression"])
def test_tic_is_never_negative_on_the_suite_problems(problem):
    model, loss_fn, batch = make_problem(problem)
    x, y = batch(torch.Generator().manual_seed(1), 6)
    record, _ = _one_step(model, loss_fn, x, y, ["TICDiag", "TICTrace"])
    assert record["TICDiag"] >= 0 and record["TICTrace"] >= 0
    assert record["TICDiag_curvature"] in ("exact", "ggn")


def test_an_explicit_hessian_diagonal_with_negative_entries_gives_nan_and_says_why():
    model, loss_fn, batch = make_problem("regression")  # tanh: negative Hessian diagonal entries
    x, y = batch(torch.Generator().manual_seed(1), 6)
    instruments = [TICDiag(curvature="hessian"), TICTrace(curvature="hessian")]
    with pytest.warns(ReadingWarning, match="negative entries"):
        record, params = _one_step(model, loss_fn, x, y, instruments)
    assert record["TICDiag_curvature"] == "exact"
    assert math.isnan(record["TICDiag"]) and math.isnan(record["TICTrace"])
    hessian = ref.dense_hessian(model, loss_fn, params, x, y)
    assert bool((torch.diagonal(hessian) < 0).any())

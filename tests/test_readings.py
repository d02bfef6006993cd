"""Every reading against brute-force references (autograd loops, dense Hessians, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
import torch
from models import make_problem

from cockpit_optim import MonitoredOptimizer, schedules

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
}


def run(problem, optimizer, sizes, track, instruments="full"):
    model, loss_fn, batch = make_problem(problem)
    opt = MonitoredOptimizer(
        OPTIMIZERS[optimizer](model.parameters()),
        model,
        loss_fn,
        instruments=instruments,
        track=track,
    )
    gen = torch.Generator().manual_seed(1)
    trace = []
    for b in sizes:
        x, y = batch(gen, b)
        trace.append((ref.flat_params(model), x, y))
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    trace.append((ref.flat_params(model), None, None))
    return model, loss_fn, opt, trace


def close(actual, expected, rtol=1e-6, atol=1e-10):
    assert math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol), (actual, expected)


@pytest.mark.parametrize("problem", ["mlp", "cnn", "regression"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_full_configuration_matches_references(problem, optimizer):
    sizes = [6, 5, 7, 4, 6, 5]
    model, loss_fn, opt, trace = run(problem, optimizer, sizes, schedules.linear(2))
    assert [r["step"] for r in opt.history] == [0, 2, 4]
    theta0 = torch.cat([v.reshape(-1) for v in trace[0][0].values()])
    for record in opt.history:
        t = record["step"]
        params, x, y = trace[t]
        losses, grads = ref.individual(model, loss_fn, params, x, y)
        lr = opt.param_groups[0]["lr"]
        for key, value in ref.first_order(losses, grads, lr).items():
            close(record[key], value)
        close(record["GradNorm"], float(grads.mean(0).norm()))
        theta = torch.cat([v.reshape(-1) for v in params.values()])
        theta_next = torch.cat([v.reshape(-1) for v in trace[t + 1][0].values()])
        close(record["Distance"], float((theta - theta0).norm()))
        close(record["UpdateSize"], float((theta_next - theta).norm()))
        hessian = ref.dense_hessian(model, loss_fn, params, x, y)
        # the TIC reads the GGN where the Hessian diagonal may have negative entries
        piecewise = problem == "mlp"
        assert record["TICDiag_curvature"] == ("exact" if piecewise else "ggn")
        ggn = None if piecewise else torch.diagonal(ref.dense_ggn(model, loss_fn, params, x, y))
        expected = ref.curvature(hessian, grads, tic_diagonal=ggn)
        for key in ("HessTrace", "TICDiag", "TICTrace"):
            close(record[key], expected[key])
        close(record["HessMaxEV"], expected["HessMaxEV"], rtol=2e-3)
        assert record["HessMaxEV_hvps"] >= 1
        # Alpha: observations at theta_t on batch t and at theta_{t+1} on batch t+1.
        close(record["Alpha"], ref.alpha_of_step(model, loss_fn, trace, t), rtol=1e-5)
        check_histograms(record, grads, theta)


def check_histograms(record, grads, theta):
    hist = record["GradHist1d"]
    elements = grads.reshape(-1).numpy()
    assert hist["population"] == hist["binned"] == elements.size
    edges = np.array(hist["edges"])
    expected, _ = np.histogram(elements, bins=edges)
    assert np.abs(np.array(hist["counts"]) - expected).sum() <= 2
    assert sum(hist["counts"]) + hist["underflow"] + hist["overflow"] == hist["binned"]
    assert hist["underflow"] == int((elements < edges[0]).sum())
    assert hist["overflow"] == int((elements > edges[-1]).sum())
    assert sum(layer["population"] for layer in hist["layers"].values()) == elements.size
    hist2 = record["GradHist2d"]
    pairs_theta = np.broadcast_to(theta.numpy(), grads.shape).reshape(-1)
    expected2, _, _ = np.histogram2d(
        pairs_theta, elements, bins=[hist2["param_edges"], hist2["grad_edges"]]
    )
    assert np.abs(np.array(hist2["counts"]) - expected2).sum() <= 4
    inside = ((elements >= hist2["grad_edges"][0]) & (elements <= hist2["grad_edges"][-1])).sum()
    assert hist2["outside"] == elements.size - inside
    assert hist2["binned"] == hist2["population"] == elements.size


def test_alpha_across_untracked_next_step_and_changing_batch_sizes():
    """Tracking every third step: Alpha of step t is completed at untracked step t+1."""
    model, loss_fn, opt, trace = run(
        "mlp", "sgd", [8, 3, 9, 5, 4, 7, 6], schedules.linear(3), instruments=["Alpha", "Loss"]
    )
    assert [r["step"] for r in opt.history] == [0, 3]  # step 6's record waits for step 7
    for record in opt.history:
        close(record["Alpha"], ref.alpha_of_step(model, loss_fn, trace, record["step"]), rtol=1e-5)
    opt.close()  # nothing completes the last Alpha: it reads nan
    assert [r["step"] for r in opt.history] == [0, 3, 6]
    assert math.isnan(opt.history[-1]["Alpha"]) and math.isfinite(opt.history[-1]["Loss"])


def test_ggn_curvature_equals_hessian_for_relu_network_and_is_named():
    model, loss_fn, opt, trace = run(
        "mlp",
        "sgd",
        [6, 6],
        1,
        instruments=["Loss", __import__("cockpit_optim").instruments.HessTrace(curvature="ggn")],
    )
    record = opt.history[0]
    params, x, y = trace[0]
    hessian = ref.dense_hessian(model, loss_fn, params, x, y)
    close(record["HessTrace"], float(torch.diagonal(hessian).sum()))
    assert record["HessTrace_curvature"] == "ggn"


def test_gradient_noise_scale_matches_reference():
    from cockpit_optim.instruments import noise_scale_average

    model, loss_fn, opt, trace = run("mlp", "sgd", [8, 8, 8], 1, instruments=["GradientNoiseScale"])
    for record in opt.history:
        params, x, y = trace[record["step"]]
        _, grads = ref.individual(model, loss_fn, params, x, y)
        b = grads.shape[0]
        g = grads.mean(0)
        trace_sigma = float(((grads - g) ** 2).sum()) / (b - 1)
        signal = float(g @ g) - trace_sigma / b
        close(record["GradientNoiseScale_trace"], trace_sigma)
        close(record["GradientNoiseScale_signal"], signal)
        if signal > 0:
            close(record["GradientNoiseScale"], trace_sigma / signal)
    averaged = noise_scale_average(opt.history, decay=0.5)
    first = opt.history[0]
    ratio = first["GradientNoiseScale_trace"] / first["GradientNoiseScale_signal"]
    assert averaged[0] == pytest.approx(ratio) if ratio > 0 else math.isnan(averaged[0])
    assert len(averaged) == len(opt.history)


@pytest.mark.parametrize("loss_name", ["mse", "bce", "ce"])
def test_exact_diagonal_of_piecewise_linear_networks_for_each_loss(loss_name):
    """ReLU/max-pool networks: the diagonal comes from GGN backward passes and is exact."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 5),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(5, 3),
    )
    loss_fn = {
        "mse": torch.nn.MSELoss(),
        "bce": torch.nn.BCEWithLogitsLoss(),
        "ce": torch.nn.CrossEntropyLoss(),
    }[loss_name]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 1, 4, 4, generator=gen)
    y = (
        torch.randint(0, 3, (6,), generator=gen)
        if loss_name == "ce"
        else torch.rand(6, 3, generator=gen)
    )
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=["HessTrace", "TICDiag", "TICTrace"],
    )
    params = ref.flat_params(model)
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
    assert opt.engine.second_order.diagonals.piecewise
    record = opt.history[0]
    _, grads = ref.individual(model, loss_fn, params, x, y)
    expected = ref.curvature(ref.dense_hessian(model, loss_fn, params, x, y), grads)
    for key in ("HessTrace", "TICDiag", "TICTrace"):
        close(record[key], expected[key], rtol=1e-8)

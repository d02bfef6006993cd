"""GradHist1d / GradHist2d against np.histogram on the records' own edges (exact zeros included),
the compiled loop against the torch path on the same draws, and the subsample's accuracy."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import reference as ref
import torch
from sklearn.datasets import load_digits
from torch import nn

from cockpit_optim import MonitoredOptimizer
from cockpit_optim.engine import fused_histogram, histogram_draws
from cockpit_optim.engine.binning import ElementSample, bin_edges
from cockpit_optim.engine.histogram_draws import Share
from cockpit_optim.engine.rules import MaterializedRule
from cockpit_optim.instruments import GradHist1d, GradHist2d

BINS = 100


def digits(batch: int, steps: int, seed: int = 0):
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # about half the pixels are 0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i::steps][:batch]], y[order[i::steps][:batch]]) for i in range(steps)]


def net(kind: str, hidden: int = 16) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    act = nn.ReLU() if kind == "relu" else nn.Tanh()
    model = nn.Sequential(nn.Linear(64, hidden), act, nn.Linear(hidden, 10)).float()
    return model, nn.CrossEntropyLoss()


def train(model, loss_fn, instruments, batches, lr=0.1, seed=0):
    """Tracked steps; per step the parameters before the update and the batch."""
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr), model, loss_fn, instruments, seed=seed
    )
    trace = []
    for x, y in batches:
        trace.append((ref.flat_params(model), x, y))
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    opt.close()
    return opt.history, trace


def capture_shares(monkeypatch) -> list[Share]:
    """The shares binned for the 1-D histogram, in order."""
    shares: list[Share] = []
    original = ElementSample.bin

    def spy(self, share, grad_edges, param_edges):
        if param_edges is None:
            shares.append(share)
        return original(self, share, grad_edges, param_edges)

    monkeypatch.setattr(ElementSample, "bin", spy)
    return shares


@pytest.mark.parametrize("bins", [100, 50, 7])
def test_symmetric_edges_are_symmetric_with_an_exact_zero(bins):
    rng = np.random.default_rng(0)
    for high in [1.0, 0.1, 1 / 3, 7.3e-5, *rng.lognormal(-8, 4, 200)]:
        high_t = torch.tensor(float(high), dtype=torch.float64)
        edges = bin_edges(-high_t, high_t, bins).tolist()
        assert edges[0] == -high and edges[-1] == high
        assert all(a < b for a, b in itertools.pairwise(edges))
        assert all(edges[bins - i] == -edges[i] for i in range(bins + 1))
        if bins % 2 == 0:
            assert edges[bins // 2] == 0.0 and str(edges[bins // 2]) == "0.0"


def check_against_numpy(counts, expected, edges, tolerance):
    """Counts within ``tolerance`` of np.histogram's, and the two bins beside 0 as np puts them
    (rounding differences between the references move elements across edges other than 0 only)."""
    counts, expected = np.asarray(counts), np.asarray(expected)
    assert np.abs(counts - expected).sum() <= tolerance, np.nonzero(counts - expected)
    middle = len(edges) // 2
    assert edges[middle] == 0.0
    assert abs(counts[middle - 1] - expected[middle - 1]) <= tolerance
    assert abs(counts[middle] - expected[middle]) <= tolerance


@pytest.mark.parametrize("kind", ["relu", "tanh"])
@pytest.mark.parametrize("fused", [True, False])
def test_exact_counts_follow_the_record_edges_with_exact_zeros(kind, fused, monkeypatch):
    if not fused:
        monkeypatch.setattr(fused_histogram, "disabled", "torch path under test")
    model, loss_fn = net(kind)
    instruments = [GradHist1d(max_elements=None), GradHist2d(max_elements=None)]
    history, trace = train(model, loss_fn, instruments, digits(32, 4))
    zeros = 0
    for record, (params, x, y) in zip(history, trace):
        _, grads = ref.individual(model, loss_fn, params, x, y)
        elements = grads.float().double().numpy()  # the float32 values, exactly
        zeros += int((elements == 0).sum())
        hist = record["GradHist1d"]
        edges = np.array(hist["edges"])
        assert hist["binned"] == hist["population"] == elements.size
        expected, _ = np.histogram(elements, bins=edges)
        check_against_numpy(hist["counts"], expected, edges, tolerance=3)
        assert hist["underflow"] == int((elements < edges[0]).sum())
        assert hist["overflow"] == int((elements > edges[-1]).sum())
        hist2 = record["GradHist2d"]
        theta = torch.cat([v.reshape(-1) for v in params.values()]).double().numpy()
        pairs = np.broadcast_to(theta, elements.shape).reshape(-1)
        expected2, _, _ = np.histogram2d(
            pairs, elements.reshape(-1), bins=[hist2["param_edges"], hist2["grad_edges"]]
        )
        assert np.abs(np.array(hist2["counts"]) - expected2).sum() <= 3
        assert hist2["grad_edges"][25] == 0.0  # 50 gradient bins by default
    assert zeros > 0.2 * len(history) * elements.size  # exact zeros are the common case here


@pytest.mark.parametrize("kind", ["relu", "tanh"])
@pytest.mark.parametrize("fused", [True, False])
def test_subsampled_counts_follow_the_record_edges_with_exact_zeros(kind, fused, monkeypatch):
    if not fused:
        monkeypatch.setattr(fused_histogram, "disabled", "torch path under test")
    shares = capture_shares(monkeypatch)
    model, loss_fn = net(kind)
    history, trace = train(model, loss_fn, [GradHist1d(max_elements=3000)], digits(32, 3))
    per_step = len(shares) // len(history)
    for step, (record, (params, x, y)) in enumerate(zip(history, trace)):
        _, grads = ref.individual(model, loss_fn, params, x, y)
        grads = grads.float().double()
        hist = record["GradHist1d"]
        edges = np.array(hist["edges"])
        assert hist["binned"] < hist["population"]
        offset, total = 0, np.zeros(BINS, dtype=np.int64)
        for share in shares[step * per_step : (step + 1) * per_step]:
            n, r, c = histogram_draws.indices(share, 0, share.count, torch.device("cpu"))
            drawn = grads[n, offset + r * share.cols + c].numpy()
            offset += share.rows * share.cols
            expected, _ = np.histogram(drawn, bins=edges)
            layer = hist["layers"][share.name]
            assert layer["binned"] == share.count
            check_against_numpy(layer["counts"], expected, edges, tolerance=2)
            total += expected
        assert offset == grads.shape[1]
        check_against_numpy(hist["counts"], total, edges, tolerance=3)


class LayerNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = nn.LayerNorm([3, 6, 6])
        self.out = nn.Linear(108, 4)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.conv(x))).flatten(1))


@pytest.mark.parametrize("budget", [None, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_loop_counts_as_the_torch_path_on_the_same_draws(budget, dtype, monkeypatch):
    pytest.importorskip("numba")
    torch.manual_seed(0)
    model = LayerNormNet().to(dtype)  # convolution (positions), Linear, LayerNorm (table)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(12, 2, 6, 6, generator=gen, dtype=dtype), torch.randint(0, 4, (12,)))
        for _ in range(3)
    ]
    instruments = [GradHist1d(max_elements=budget), GradHist2d(max_elements=budget)]
    calls = []
    fused_bin = fused_histogram.bin_share
    monkeypatch.setattr(fused_histogram, "bin_share", lambda *a: calls.append(1) or fused_bin(*a))
    fused, _ = train(copy.deepcopy(model), loss_fn, copy.deepcopy(instruments), batches)
    assert len(calls) == 2 * 6 * len(batches)  # six parameters, 1-D and 2-D, every step
    monkeypatch.setattr(fused_histogram, "disabled", "torch path under test")
    plain, _ = train(copy.deepcopy(model), loss_fn, instruments, batches)
    assert len(calls) == 2 * 6 * len(batches)
    for a, b in zip(fused, plain):
        assert a["GradHist1d"] == b["GradHist1d"]
        assert a["GradHist2d"] == b["GradHist2d"]
        assert (a["GradHist1d"]["binned"] < a["GradHist1d"]["population"]) == (budget is not None)


def test_both_paths_bin_edge_values_nan_and_infinity_as_numpy():
    edges = bin_edges(torch.tensor(-1.0, dtype=torch.float64), torch.tensor(1.0), 4)
    special = [-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0, float("nan"), float("inf")]
    rng = np.random.default_rng(1)
    values = torch.tensor(special + list(rng.normal(0, 0.7, 50)), dtype=torch.float32)
    values = torch.cat([values, torch.zeros(40)]).reshape(4, -1)
    param = nn.Parameter(torch.zeros(values.shape[1]))
    rule = MaterializedRule([param], [values])
    share = Share("p", rule, 0, 4, values.shape[1], 1, values.numel(), True)
    finite = values[torch.isfinite(values)].double().numpy()
    inside, _ = np.histogram(finite, bins=edges.numpy())
    x = values.double()
    expected = [int((x < -1).sum()), *inside, int((x > 1).sum()), int(x.isnan().sum())]
    paths = [histogram_draws.bin_share]
    if fused_histogram.available():
        paths.append(fused_histogram.bin_share)
    for path in paths:
        assert path(share, None, edges, None).tolist() == expected


def test_draws_are_stratified_in_range_and_differ_between_keys():
    param = nn.Parameter(torch.zeros(6, 5))
    rule = MaterializedRule([param], [torch.zeros(3, 30)])  # rows 30, one column: stand-in
    pairs = 3 * 6
    share = Share("p", rule, 0, 3, 6, 5, 2 * pairs + 7, False, 2 * pairs, (11, 22, 33))
    n, r, c = histogram_draws.indices(share, 0, share.count, torch.device("cpu"))
    assert torch.equal(torch.bincount(n[: 2 * pairs] * 6 + r[: 2 * pairs]), torch.full((18,), 2))
    assert n.max() < 3 and r.max() < 6 and c.max() < 5 and min(n.min(), r.min(), c.min()) >= 0
    again = histogram_draws.indices(share, 3, share.count, torch.device("cpu"))
    assert all(torch.equal(a[3:], b) for a, b in zip((n, r, c), again))  # counter-based
    other = copy.copy(share)
    other.keys = (11, 22, 34)
    assert not torch.equal(histogram_draws.indices(other, 0, share.count, "cpu")[2], c)
    many = Share("p", rule, 0, 3, 6, 5, 60000, False, 0, (5, 6, 7))
    n, r, c = histogram_draws.indices(many, 0, many.count, torch.device("cpu"))
    frequencies = torch.bincount((n * 6 + r) * 5 + c, minlength=90).double() / many.count
    assert (frequencies - 1 / 90).abs().max() < 0.0022  # 5 standard deviations


def test_default_budget_is_within_one_percent_l1_and_exact_when_it_fits():
    model, loss_fn = net("relu", hidden=256)
    (batch,) = digits(128, 1)
    exact, _ = train(
        copy.deepcopy(model), loss_fn, [GradHist1d(max_elements=None)], [batch] * 2, lr=0
    )
    reference = exact[0]["GradHist1d"]
    population = reference["population"]
    assert population > 2**20  # the default budget subsamples
    fixed = (reference["edges"][0], reference["edges"][-1])

    def normalized(hist):
        counts = np.array([hist["underflow"], *hist["counts"], hist["overflow"]], dtype=float)
        return counts / counts.sum()

    for seed in range(2):
        sampled, _ = train(
            copy.deepcopy(model), loss_fn, [GradHist1d(range=fixed)], [batch] * 2, lr=0, seed=seed
        )
        for record in sampled:  # the first step (2^19 draws) and the next (sized by the first)
            hist = record["GradHist1d"]
            assert hist["edges"] == reference["edges"] and hist["binned"] < population
            assert np.abs(normalized(hist) - normalized(reference)).sum() < 0.01
    fits, _ = train(
        copy.deepcopy(model), loss_fn, [GradHist1d(max_elements=population)], [batch], lr=0
    )
    assert fits[0]["GradHist1d"] == reference


def test_fused_loop_failure_falls_back_to_the_same_counts(monkeypatch):
    monkeypatch.setattr(fused_histogram, "disabled", None)
    monkeypatch.setattr(fused_histogram, "_installed", lambda: True)

    def broken(*args):
        raise ImportError("numba is broken")

    monkeypatch.setattr(fused_histogram, "bin_share", broken)
    model, loss_fn = net("relu")
    batches = digits(16, 2)
    with pytest.warns(RuntimeWarning, match="numba is broken"):
        history, _ = train(copy.deepcopy(model), loss_fn, [GradHist1d()], batches)
    assert fused_histogram.disabled is not None
    monkeypatch.setattr(fused_histogram, "disabled", "torch path under test")
    plain, _ = train(copy.deepcopy(model), loss_fn, [GradHist1d()], batches)
    assert [r["GradHist1d"] for r in history] == [r["GradHist1d"] for r in plain]

"""Any architecture: transformers, normalization layers, custom modules, tied weights."""

from __future__ import annotations

import math

import reference as ref
import torch
from torch import nn

from cockpit_optim import MonitoredOptimizer
from cockpit_optim.instruments import HessTrace

FIRST_ORDER = [
    "Loss",
    "GradNorm",
    "NormTest",
    "InnerTest",
    "OrthoTest",
    "CABS",
    "EarlyStopping",
    "MeanGSNR",
    "GradHist1d",
    "Alpha",
    "UpdateSize",
    "HessMaxEV",
]


class TinyTransformer(nn.Module):
    """Embedding, learned positions, self-attention, LayerNorm, GELU, residuals, mean pooling."""

    def __init__(self, vocab=7, length=5, width=8, classes=3, tied=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(0.1 * torch.randn(length, width))
        # no bias: the key bias has an exactly zero gradient, i.e. pure rounding noise
        self.attention = nn.MultiheadAttention(width, 2, batch_first=True, bias=False)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 12), nn.GELU(), nn.Linear(12, width))
        self.head = nn.Linear(width, vocab if tied else classes)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, tokens):
        h = self.embed(tokens) + self.position
        attended, _ = self.attention(h, h, h, need_weights=False)
        h = self.norm1(h + attended)
        h = self.norm2(h + self.mlp(h))
        return self.head(h.mean(dim=1))


class GatedBlock(nn.Module):
    """A custom module holding parameters directly and through a submodule."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.shift = nn.Parameter(0.1 * torch.randn(6))
        self.inner = nn.Linear(6, 6)

    def forward(self, x):
        return torch.tanh(self.inner(x)) * self.scale + self.shift


def _check(model, loss_fn, batches, instruments=FIRST_ORDER):
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), model, loss_fn, instruments=instruments
    )
    trace = []
    for x, y in batches:
        trace.append((ref.flat_params(model), x, y))
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    trace.append((ref.flat_params(model), None, None))
    assert len(opt.history) == len(batches) - 1
    for record in opt.history:
        t = record["step"]
        params, x, y = trace[t]
        losses, grads = ref.individual(model, loss_fn, params, x, y)
        expected = ref.first_order(losses, grads, 0.05)
        asked = {name for name in instruments if isinstance(name, str)}
        assert asked & set(expected) <= set(record), "a requested reading is missing"
        for key in asked & set(expected):
            value = expected[key]
            assert math.isclose(record[key], value, rel_tol=1e-6, abs_tol=1e-10), key
        assert record["GradHist1d"]["population"] == grads.numel()
        if "HessMaxEV" in record:
            hessian = ref.dense_hessian(model, loss_fn, params, x, y)
            expected = float(torch.linalg.eigvalsh(hessian)[-1])
            assert math.isclose(record["HessMaxEV"], expected, rel_tol=2e-3)
        alpha = ref.alpha_of_step(model, loss_fn, trace, t)
        assert math.isclose(record["Alpha"], alpha, rel_tol=1e-5, abs_tol=1e-9)
    return opt


def _tokens(gen, batch, vocab=7, length=5, classes=3):
    return (
        torch.randint(0, vocab, (batch, length), generator=gen),
        torch.randint(0, classes, (batch,), generator=gen),
    )


def test_transformer_encoder_classifier_is_exact():
    torch.manual_seed(0)
    model = TinyTransformer()
    gen = torch.Generator().manual_seed(1)
    _check(model, nn.CrossEntropyLoss(), [_tokens(gen, 6), _tokens(gen, 5), _tokens(gen, 6)])


def test_tied_embedding_and_output_weights_count_once_with_summed_gradients():
    torch.manual_seed(0)
    model = TinyTransformer(tied=True)
    assert model.head.weight is model.embed.weight
    gen = torch.Generator().manual_seed(2)
    batches = [_tokens(gen, 6, classes=7), _tokens(gen, 6, classes=7)]
    opt = _check(model, nn.CrossEntropyLoss(), batches, instruments=FIRST_ORDER[:-1])
    layers = opt.history[0]["GradHist1d"]["layers"]
    assert sum(name == "embed.weight" for name in layers) == 1 and "head.weight" not in layers


def test_custom_modules_groupnorm_layernorm_inplace_relu_are_exact():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.LayerNorm(6),
        nn.GELU(),
        GatedBlock(),
        nn.Linear(6, 3),
    )
    gen = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(5, 2, 4, 4, generator=gen), torch.randint(0, 3, (5,), generator=gen))
        for _ in range(3)
    ]
    _check(model, nn.CrossEntropyLoss(), batches)


def test_eval_mode_batchnorm_is_exact_and_mse_regression():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    gen = torch.Generator().manual_seed(4)
    batches = [
        (torch.randn(6, 4, generator=gen), torch.randn(6, 2, generator=gen)) for _ in range(3)
    ]
    _check(model, nn.MSELoss(), batches)


def test_sequence_first_attention():
    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 1, bias=False)
            self.head = nn.Linear(4, 2)

        def forward(self, x):  # x: (L, B, E)
            out, _ = self.attention(x, x, x)
            return self.head(out.mean(0))

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(3, 5, 4, generator=gen), torch.randint(0, 2, (5,), generator=gen))
        for _ in range(2)
    ]
    model = SeqFirst()
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        nn.CrossEntropyLoss(),
        instruments=["NormTest", "Loss"],
    )
    for x, y in batches:
        opt.zero_grad()
        loss = opt.loss_fn(model(x), y)
        loss.backward()
        opt.step()
    x, y = batches[0]
    losses, grads = [], []
    params0 = opt.history[0]
    model_at_0 = SeqFirst()
    model_at_0.load_state_dict(state0)
    for n in range(x.shape[1]):  # the samples are the columns of x
        loss = nn.CrossEntropyLoss()(model_at_0(x[:, n : n + 1]), y[n : n + 1])
        g = torch.autograd.grad(loss, list(model_at_0.parameters()))
        grads.append(torch.cat([t.reshape(-1) for t in g]))
        losses.append(loss.detach())
    expected = ref.first_order(torch.stack(losses).double(), torch.stack(grads).double(), 0.05)
    for key in ("Loss", "NormTest"):
        assert math.isclose(params0[key], expected[key], rel_tol=1e-6), key


def test_trace_estimate_within_its_reported_error_where_no_exact_diagonal():
    torch.manual_seed(0)
    model = TinyTransformer()  # not an nn.Sequential: the trace is estimated, the TIC uses the GGN
    loss_fn = nn.CrossEntropyLoss()
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        model,
        loss_fn,
        instruments=[HessTrace(max_products=64), "TICDiag", "HessMaxEV"],
    )
    x, y = _tokens(torch.Generator().manual_seed(6), 8)
    params = ref.flat_params(model)
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    record = opt.history[0]
    assert record["HessTrace_curvature"] == "estimate" and record["TICDiag_curvature"] == "ggn"
    exact = float(torch.diagonal(ref.dense_hessian(model, loss_fn, params, x, y)).sum())
    assert 0 < record["HessTrace_stderr"] < abs(exact)
    assert abs(record["HessTrace"] - exact) < 4 * record["HessTrace_stderr"]
    assert record["HessTrace_hvps"] <= 64
    assert math.isfinite(record["TICDiag"]) and math.isfinite(record["HessMaxEV"])

"""Passive monitoring in every real loop: the parameter trajectory is bit-identical to the bare
optimizer's and the global RNG is left as it would be."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import make_problem
from test_real_loops import InternalLossLM, MixingLM, padded_tokens
from torch import nn

from cockpit_optim import MonitoredOptimizer
from cockpit_optim.losses import CausalLMLoss


def _mlp_step(model, loss_fn, opt, x, y, case):
    if case == "accumulation":
        for xs, ys in zip(x.chunk(3), y.chunk(3)):
            (loss_fn(model(xs), ys) / 3).backward()
    elif case == "validation":
        loss_fn(model(x[:3]), y[:3])  # a forward that never reaches a backward pass
        loss_fn(model(x), y).backward()
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        (loss * 8.0).backward()
    else:
        loss_fn(model(x), y).backward()


def _setup(case):
    if case in ("tokens", "internal"):
        torch.manual_seed(0)
        model = InternalLossLM() if case == "internal" else MixingLM()
        loss_fn = CausalLMLoss() if case == "internal" else nn.CrossEntropyLoss()
        return model, loss_fn, list(model.parameters())
    model, loss_fn, _ = make_problem("mlp")
    loss_fn = nn.CrossEntropyLoss(ignore_index=2) if case == "ignored" else loss_fn
    params = list(model.parameters())
    if case == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias"))
        params = [p for p in params if p.requires_grad]
    if case == "unused":
        model = _WithUnusedHead(model)
        params = list(model.parameters())
    return model, loss_fn, params


class _WithUnusedHead(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body, self.unused = body, nn.Linear(3, 3)  # never called: no gradient

    def forward(self, x):
        return self.body(x)


def _run(case, monitor):
    if case == "autocast":
        torch.set_default_dtype(torch.float32)
    model, loss_fn, params = _setup(case)
    inner = torch.optim.Adam(params, lr=0.01)
    opt = MonitoredOptimizer(inner, model, loss_fn, instruments="full") if monitor else inner
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        opt.zero_grad()
        if case == "tokens":
            tokens, targets = padded_tokens(gen)
            loss_fn(model(tokens).reshape(-1, 7), targets.reshape(-1)).backward()
        elif case == "internal":
            tokens, labels = padded_tokens(gen)
            model(input_ids=tokens, labels=labels).loss.backward()
        else:
            x, y = make_problem("mlp")[2](gen, 12)
            if case == "ignored":
                y[::4] = 2
            _mlp_step(model, loss_fn, opt, x, y, case)
        opt.step()
    if monitor:
        opt.close()
    return [p.detach().clone() for p in model.parameters()], torch.get_rng_state()


@pytest.mark.parametrize(
    "case",
    ["accumulation", "validation", "autocast", "ignored", "bitfit", "unused", "tokens", "internal"],
)
def test_passive_bit_identity_and_rng_in_real_loops(case):
    params, rng = _run(case, monitor=True)
    bare_params, bare_rng = _run(case, monitor=False)
    for p, q in zip(params, bare_params):
        assert torch.equal(p, q)
    assert torch.equal(rng, bare_rng)


def test_zeros_follow_the_edges_of_an_explicit_range():
    from cockpit_optim.instruments import GradHist1d

    model, loss_fn, batch = make_problem("mlp")
    hist = GradHist1d(bins=10, range=(-0.03, 0.07))
    opt = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, [hist])
    x, y = batch(torch.Generator().manual_seed(0), 8)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
    opt.close()
    import reference as ref

    _, grads = ref.individual(model, loss_fn, params, x, y)
    record = opt.history[0]["GradHist1d"]
    edges = np.array(record["edges"])
    assert 0.0 < edges[3] < 1e-15  # (7 low + 3 high) / 10 is not exactly 0 in binary
    values = grads.reshape(-1).numpy()
    inside = values[(values >= edges[0]) & (values <= edges[-1])]
    counts, _ = np.histogram(inside, edges)
    assert (values == 0).sum() > 100 and record["counts"] == counts.tolist()

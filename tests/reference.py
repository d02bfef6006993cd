"""Brute-force references: individual gradients by an autograd loop, dense Hessians, float64."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel


def flat_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def individual(model, loss_fn, params, x, y):
    """(losses [B], individual gradients [B, D]) at ``params`` by a per-sample autograd loop."""
    losses, grads = [], []
    names = list(params)
    for n in range(x.shape[0]):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = loss_fn(functional_call(model, leaves, (x[n : n + 1],)), y[n : n + 1])
        g = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
        grads.append(
            torch.cat(
                [
                    (gi if gi is not None else torch.zeros_like(leaves[k])).reshape(-1)
                    for gi, k in zip(g, names)
                ]
            )
        )
        losses.append(loss.detach())
    return torch.stack(losses).double(), torch.stack(grads).double()


def dense_hessian(model, loss_fn, params, x, y) -> torch.Tensor:
    names = list(params)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    flat = torch.cat([params[k].reshape(-1) for k in names])

    def loss_of(vector):
        pieces = dict(zip(names, [c.reshape(s) for c, s in zip(vector.split(sizes), shapes)]))
        return loss_fn(functional_call(model, pieces, (x,)), y)

    with sdpa_kernel(
        SDPBackend.MATH
    ):  # the fused CPU attention kernels are not twice differentiable
        return torch.autograd.functional.hessian(loss_of, flat).double()


def dense_ggn(model, loss_fn, params, x, y) -> torch.Tensor:
    """``(1/B) sum_n J_n^T (d^2 l_n / d f_n^2) J_n`` from the dense Jacobian (CE or MSE, mean)."""
    names = list(params)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    flat = torch.cat([params[k].reshape(-1) for k in names])

    def output_of(vector):
        pieces = dict(zip(names, [c.reshape(s) for c, s in zip(vector.split(sizes), shapes)]))
        return functional_call(model, pieces, (x,))

    with sdpa_kernel(SDPBackend.MATH):
        jacobian = torch.autograd.functional.jacobian(output_of, flat).double()
        output = output_of(flat).detach().double()
    batch = output.shape[0]
    jacobian = jacobian.reshape(batch, -1, flat.numel())
    ggn = torch.zeros(flat.numel(), flat.numel(), dtype=torch.float64)
    for n in range(batch):
        if isinstance(loss_fn, nn.CrossEntropyLoss):
            p = torch.softmax(output[n], 0)
            inner = torch.diag(p) - torch.outer(p, p)
        else:
            size = jacobian.shape[1]
            inner = 2.0 / size * torch.eye(size, dtype=torch.float64)
        ggn += jacobian[n].T @ inner @ jacobian[n]
    return ggn / batch


def first_order(losses, grads, lr):
    """Expected first-order readings from individual losses and gradients."""
    b = grads.shape[0]
    g = grads.mean(0)
    norm2 = float(g @ g)
    s = float((grads * grads).sum())
    dots = grads @ g
    p = float((dots * dots).sum())
    sgs = (grads * grads).sum(0)
    var = (sgs - b * g * g) / (b - 1)
    keep = var > 0
    noise = sgs / b - g * g
    keep2 = noise > 0
    return {
        "Loss": float(losses.mean()),
        "NormTest": math.sqrt(max((s / norm2 - b) / (b * (b - 1)), 0)),
        "InnerTest": math.sqrt(max((p / norm2**2 - b) / (b * (b - 1)), 0)),
        "OrthoTest": math.sqrt(max((s / norm2 - p / norm2**2) / (b * (b - 1)), 0)),
        "CABS": lr * float((sgs / b - g * g).sum()) / float(losses.mean()),
        "EarlyStopping": 1 - b / int(keep.sum()) * float((g[keep] ** 2 / var[keep]).sum()),
        "MeanGSNR": float((g[keep2] ** 2 / noise[keep2]).mean()),
    }


def curvature(hessian, grads, eps=1e-7, tic_diagonal=None):
    """Curvature readings; the TIC from ``tic_diagonal`` (default: the Hessian's diagonal)."""
    second = (grads * grads).mean(0)
    diag = torch.diagonal(hessian)
    tic = diag if tic_diagonal is None else tic_diagonal
    return {
        "HessTrace": float(diag.sum()),
        "HessMaxEV": float(torch.linalg.eigvalsh(hessian)[-1]),
        "TICDiag": float((second / (tic + eps)).sum()),
        "TICTrace": float(second.sum() / (tic.sum() + eps)),
    }


def alpha(s, losses0, proj0, losses1, proj1):
    """Alpha by the normal equations of the weighted least-squares fit (independent of the library)."""

    def obs(losses, proj):
        b = len(losses)
        return (losses.mean(), losses.var(ddof=1) / b, proj.mean(), proj.var(ddof=1) / b)

    f0, vf0, d0, vd0 = obs(losses0, proj0)
    f1, vf1, d1, vd1 = obs(losses1, proj1)
    phi = np.array([[1, 1, 0, 0], [0, s, 1, 1], [0, s * s, 0, 2 * s]], dtype=float)
    weights = np.diag(1 / np.array([vf0, vf1, vd0, vd1]))
    f = np.array([f0, f1, d0, d1])
    w = np.linalg.solve(phi @ weights @ phi.T, phi @ weights @ f)
    if w[2] <= 0:
        return -1.0
    return 2 * s / (-w[1] / w[2]) - 1


def alpha_of_step(model, loss_fn, trace, t):
    """Alpha of update ``t`` from a trace of ``(params, x, y)`` before each step."""
    params, x, y = trace[t]
    params1, x1, y1 = trace[t + 1]
    theta = torch.cat([v.reshape(-1) for v in params.values()])
    direction = torch.cat([v.reshape(-1) for v in params1.values()]) - theta
    s = float(direction.norm())
    losses, grads = individual(model, loss_fn, params, x, y)
    losses1, grads1 = individual(model, loss_fn, params1, x1, y1)
    return alpha(
        s,
        losses.numpy(),
        (grads @ direction / s).numpy(),
        losses1.numpy(),
        (grads1 @ direction / s).numpy(),
    )

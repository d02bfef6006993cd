"""Exact diagonal of the generalized Gauss-Newton matrix for sequences of Linear/Conv layers.

``diag G = (1/B) sum_n sum_c (J_n^T s_{n,c})^2`` with ``S_n S_n^T`` the Hessian of the individual
loss w.r.t. the network output: one backward pass per output dimension ``c`` (to the layer outputs
only), each reduced per layer by the same per-coordinate rules as the individual gradients.

For networks whose activations and pooling are piecewise linear (ReLU, max-pooling, ...) the
network is linear in every single parameter, so the diagonal of the residual term of the Hessian
vanishes and ``diag H = diag G`` exactly: the Hessian diagonal at the cost of the GGN's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import ModelInput
from .curvature import replay_rng
from .layers import SharedLinearRule, _unfold

_PARAMETRIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PIECEWISE_LINEAR = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.ZeroPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
)
_LOSSES = (nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss)


def _leaves(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in _leaves(child)]
    return [model]


def _parametric(module: nn.Module) -> bool:
    return isinstance(module, _PARAMETRIC) and getattr(module, "groups", 1) == 1


def supports(model: nn.Module, loss_fn: nn.Module, method: str) -> bool:
    """Whether :func:`ggn_diagonal` gives the requested diagonal exactly for this model."""
    if not isinstance(model, nn.Sequential) or not isinstance(loss_fn, _LOSSES):
        return False
    leaves = _leaves(model)
    with_params = [m for m in leaves if any(True for _ in m.parameters(recurse=False))]
    if not all(_parametric(m) for m in with_params):
        return False
    if method == "ggn":
        return True
    return method == "exact" and all(
        _parametric(m) or isinstance(m, _PIECEWISE_LINEAR) for m in leaves
    )


def _loss_hessian_roots(loss_fn: nn.Module, output: Tensor, target: Tensor) -> Tensor | None:
    """``S`` with ``S[c, n]`` the c-th column of a square root of the individual loss's Hessian
    w.r.t. sample n's output: shape ``(C, *output.shape)``."""
    batch = output.shape[0]
    flat = output.detach().reshape(batch, -1)
    size = flat.shape[1]
    if isinstance(loss_fn, nn.CrossEntropyLoss) and output.dim() != 2:
        return None  # per-position classes: not a per-sample (B, C) output
    if isinstance(loss_fn, nn.BCEWithLogitsLoss) and (
        loss_fn.pos_weight is not None or loss_fn.weight is not None
    ):
        return None
    if isinstance(
        loss_fn, nn.CrossEntropyLoss
    ):  # H = diag(p) - p p^T = A A^T, A_c = sqrt(p_c)(e_c - p)
        p = F.softmax(flat, dim=1)
        eye = torch.eye(size, dtype=p.dtype, device=p.device)
        roots = p.sqrt().T.unsqueeze(2) * (eye.unsqueeze(1) - p.unsqueeze(0))
    else:
        if isinstance(loss_fn, nn.MSELoss):  # mean over the elements: H = (2 / K) I
            scale = torch.full_like(flat, math.sqrt(2.0 / size))
        else:  # BCEWithLogits: H = diag(sigma (1 - sigma)) / K
            sigma = torch.sigmoid(flat)
            scale = (sigma * (1 - sigma) / size).sqrt()
        eye = torch.eye(size, dtype=flat.dtype, device=flat.device)
        roots = eye.unsqueeze(1) * scale.unsqueeze(0)
    return roots.reshape(size, *output.shape)


def _layout(module: nn.Module, inputs: Tensor) -> Tensor:
    """Patches ``(B, p, T)`` of a Linear or convolution input."""
    batch = inputs.shape[0]
    if isinstance(module, nn.Linear):
        return inputs.reshape(batch, -1, module.in_features).transpose(1, 2)
    return _unfold(module, inputs)


def _deltas(module: nn.Module, grad: Tensor) -> Tensor:
    batch = grad.shape[0]
    if isinstance(module, nn.Linear):
        return grad.reshape(batch, -1, module.out_features).transpose(1, 2)
    return grad.reshape(batch, module.out_channels, -1)


def ggn_diagonal(
    model: nn.Sequential, loss_fn: nn.Module, model_input: ModelInput, target: Tensor
) -> dict[int, Tensor] | None:
    """Diagonal of the GGN of the mean loss, keyed by ``id(parameter)`` (``None``: unsupported
    loss options)."""
    if len(model_input.args) != 1 or model_input.kwargs:
        return None
    layers, patches, outputs = [], [], []
    with replay_rng(model_input), torch.enable_grad():
        (h,) = model_input.args
        for module in _leaves(model):
            if _parametric(module):
                layers.append(module)
                patches.append(_layout(module, h.detach()))
                h = module(h)
                outputs.append(h)
            else:
                h = module(h)
    roots = _loss_hessian_roots(loss_fn, h, target)
    if roots is None:
        return None
    batch = h.shape[0]
    # Without weight sharing (T = 1) the individual gradient of class c is B delta_{n,c} u_n^T:
    # the class sum folds into the squared deltas, and one product per layer follows the loop.
    # Shared weights reduce per class (their second moments materialize, in blocks).
    squares: dict[int, Tensor] = {}
    diagonal: dict[int, Tensor] = {}
    for root in roots:  # one pass per class: autograd's vectorized passes measured slower
        grads = torch.autograd.grad(h, outputs, grad_outputs=root / batch, retain_graph=True)
        for i, (module, u, grad) in enumerate(zip(layers, patches, grads)):
            if u.shape[2] == 1:
                square = (batch * grad.reshape(batch, -1)).square_()
                squares[i] = squares[i].add_(square) if i in squares else square
            else:
                rule = SharedLinearRule(module.weight, module.bias, u, _deltas(module, grad))
                _accumulate(diagonal, module, rule.second_moments())
    for i, square in squares.items():
        module, u = layers[i], patches[i]
        moments = [(square.T @ u[:, :, 0].square()).reshape(module.weight.shape)]
        if module.bias is not None:
            moments.append(square.sum(0).reshape(module.bias.shape))
        _accumulate(diagonal, module, moments)
    return {key: value / batch for key, value in diagonal.items()}


def _accumulate(diagonal: dict[int, Tensor], module: nn.Module, moments: list[Tensor]) -> None:
    params = [module.weight] if module.bias is None else [module.weight, module.bias]
    for param, value in zip(params, moments):
        key = id(param)
        diagonal[key] = diagonal[key].add_(value) if key in diagonal else value

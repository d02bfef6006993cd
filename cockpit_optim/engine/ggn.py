"""Diagonal of the generalized Gauss-Newton matrix: exact for sequences of Linear/Conv layers, and
for any model through the per-layer rules (exact, or a non-negative Monte-Carlo estimate).

``diag G = (1/B) sum_n sum_c (J_n^T s_{n,c})^2`` with ``S_n S_n^T`` the Hessian of the individual
loss w.r.t. the network output: one backward pass per output dimension ``c`` (to the layer outputs
only), each reduced per layer by the same per-coordinate rules as the individual gradients.

For networks whose activations and pooling are piecewise linear (ReLU, max-pooling, ...) the
network is linear in every single parameter, so the diagonal of the residual term of the Hessian
vanishes and ``diag H = diag G`` exactly: the Hessian diagonal at the cost of the GGN's.

For any other model (:func:`any_ggn_diagonal`) the backward vectors ``S_n e_c`` (exact, one pass per
output entry of a sample) or ``S_n z_n`` with Rademacher ``z_n`` (Monte-Carlo: ``E[z z^T] = I``, so
``E[(J_n^T S_n z_n)^2] = diag(J_n^T S_n S_n^T J_n)``, non-negative and unbiased) are reduced by the
rules of the first-order statistics (``sum_n g_n^2`` of the pseudo-gradients), generic
``torch.func`` rule included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .capture import Capture, ModelInput
from .hessian import replay_rng
from .rules import Rows, SharedLinearRule, build_rules, layout_for

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
    """A layer ``z_t = W u_t + b`` with a registered layout (Linear, convolutions)."""
    return layout_for(module) is not None


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
                u = layout_for(module).patches(module, h.detach())
                h = module(h)
                if h.requires_grad:  # not a frozen layer below every trained one
                    layers.append(module)
                    patches.append(u)
                    outputs.append(h)
            else:
                h = module(h)
    roots = _loss_hessian_roots(loss_fn, h, target)
    if roots is None or not outputs:
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
                deltas = layout_for(module).deltas(module, grad)
                rule = SharedLinearRule(module.weight, module.bias, u, deltas)
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


#: Output entries per sample up to which :func:`any_ggn_diagonal` is exact by default.
MAX_EXACT_COLUMNS = 16


def _row_root(loss_fn: nn.Module, output: Tensor, target: Tensor):
    """``z -> S z`` (``z`` shaped like ``output``), ``S`` a square root of the Hessian of each
    sample's loss ``l_n`` (the mean over its elements) w.r.t. its output; ``None`` for losses
    without one (NLL on log-probabilities, L1, Huber, weighted BCE)."""
    out = output.detach()
    if isinstance(loss_fn, nn.CrossEntropyLoss) and out.dim() >= 2:  # class probabilities too
        p = F.softmax(out, dim=1)
        s = p.sqrt()
        positions = out[0, 0].numel()
        scale = 1.0 / math.sqrt(positions)
        return lambda z: (s * z - p * (s * z).sum(1, keepdim=True)) * scale
    per_sample = out[0].numel()
    if isinstance(loss_fn, nn.MSELoss):
        scale = math.sqrt(2.0 / per_sample)
        return lambda z: z * scale
    if isinstance(loss_fn, nn.BCEWithLogitsLoss) and loss_fn.pos_weight is None:
        if loss_fn.weight is None:
            sigma = torch.sigmoid(out)
            root = (sigma * (1 - sigma) / per_sample).sqrt()
            return lambda z: z * root
    return None


def any_ggn_diagonal(
    model: nn.Module,
    loss_fn: nn.Module,
    model_input: ModelInput,
    target: Tensor,
    monitored: dict[int, str],
    exact: bool | None,
    generator: torch.Generator,
) -> tuple[dict[str, Tensor] | None, str]:
    """GGN diagonal of the mean loss by parameter name (of ``monitored``: ``id -> name``) for any
    model whose layers have rules: exact (one backward pass per output entry of a sample),
    Monte-Carlo (one pass; ``generator``, on the parameters' device, draws ``z``), or with
    ``exact=None`` exact up to :data:`MAX_EXACT_COLUMNS` entries.  Returns ``(diagonal, "ggn" or
    "mc-ggn")`` or ``(None, reason)``."""
    capture = Capture(model, loss_fn, monitored, replay=True)
    capture.armed = True
    try:
        with replay_rng(model_input), torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            output = model(*model_input.args, **model_input.kwargs)
        if not isinstance(output, Tensor) or output.dim() == 0:
            return None, "the model output is not a batched tensor"
        root = _row_root(loss_fn, output, target)
        if root is None:
            return None, f"{type(loss_fn).__name__} has no GGN factorization here"
        params = [p for p in model.parameters() if id(p) in monitored]
        batch = output.shape[0]
        columns = output[0].numel()
        exact = columns <= MAX_EXACT_COLUMNS if exact is None else exact
        if exact:
            probes = []
            for column in range(columns):
                z = torch.zeros_like(output).reshape(batch, -1)
                z[:, column] = 1
                probes.append(z.reshape(output.shape))
        else:
            signs = torch.randint(0, 2, output.shape, generator=generator, device=output.device)
            probes = [signs.to(output.dtype).mul_(2).sub_(1)]
        diagonal: dict[str, Tensor] = {}
        for z in probes:
            torch.autograd.grad(
                output, params, grad_outputs=root(z) / batch, retain_graph=True, allow_unused=True
            )
            rows = [Rows(capture.forward_index, batch, batch, 1.0)]  # cotangents of 1/B rows
            with capture.suspended():  # the generic rule replays module calls
                rules, problem, _ = build_rules(capture.slots, rows)
            if problem is not None:
                return None, problem
            for rule, names in rules:
                reduction = rule.reduce(sq_norms=False, sum_sq_grads=True, mean_dots=False)
                for name, sum_sq_grads in zip(names, reduction.sum_sq_grads):
                    value = sum_sq_grads.detach() / batch
                    diagonal[name] = diagonal[name].add_(value) if name in diagonal else value
        return diagonal, "ggn" if exact else "mc-ggn"
    finally:
        capture.remove()

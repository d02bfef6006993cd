"""The generic rule: individual gradients of any module's own parameters by ``torch.func``.

For a module without a dedicated rule (a custom module, attention, embeddings, ...), its recorded
call is replayed per sample under ``vmap``: ``g_n = B * J_theta(f(x_n))^T delta_n``, a vector-Jacobian
product of the module alone with the recorded output gradients.  Only the module's *direct*
parameters are differentiated (submodules have their own rules); the result is a
:class:`MaterializedRule` holding ``(B, *param.shape)`` tensors for this module only, freed with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from .base import LayerRule, MaterializedRule

# Keyword arguments that carry one row per sample (everything else is shared by all samples).
_PER_SAMPLE_KWARGS = ("key_padding_mask",)


def batch_dim(module: nn.Module) -> int:
    """Dimension of the batch in the module's inputs and outputs."""
    return 1 if getattr(module, "batch_first", True) is False else 0


def functional_rule(
    module: nn.Module, local: Sequence[str], args: tuple, kwargs: dict, grads: dict[int, Tensor]
) -> LayerRule:
    """Individual gradients of the direct parameters ``local`` of ``module`` from its recorded
    call (``grads``: output index -> gradient, for the outputs that received one)."""
    dim = batch_dim(module)
    own = {n: module.get_parameter(n) for n in local}
    params = {n: own[n].detach() for n in local}
    batch = next(a.shape[dim] for a in args if isinstance(a, Tensor))
    float_outputs = sorted(grads)
    batched = [isinstance(a, Tensor) and a.dim() > dim and a.shape[dim] == batch for a in args]
    per_sample_kwargs = {
        k: v for k, v in kwargs.items() if k in _PER_SAMPLE_KWARGS and isinstance(v, Tensor)
    }
    shared_kwargs = {k: v for k, v in kwargs.items() if k not in per_sample_kwargs}

    def outputs_of(theta, sample_args, sample_kwargs):
        call_args = tuple(
            a.unsqueeze(dim) if is_batched else a for a, is_batched in zip(sample_args, batched)
        )
        call_kwargs = {k: v.unsqueeze(0) for k, v in sample_kwargs.items()}
        out = functional_call(module, theta, call_args, {**shared_kwargs, **call_kwargs})
        tensors = [out] if isinstance(out, Tensor) else [t for t in out if isinstance(t, Tensor)]
        return tuple(tensors[i] for i in float_outputs)

    def per_sample(sample_args, sample_kwargs, sample_cotangents):
        _, pullback = vjp(lambda theta: outputs_of(theta, sample_args, sample_kwargs), params)
        cot = tuple(c.unsqueeze(dim) for c in sample_cotangents)
        return pullback(cot)[0]

    arg_dims = tuple(dim if is_batched else None for is_batched in batched)
    cot_dims = tuple(dim for _ in float_outputs)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):  # batching rules exist for math
        result = vmap(per_sample, in_dims=(arg_dims, 0, cot_dims))(
            args, per_sample_kwargs, tuple(grads[i] for i in float_outputs)
        )
    scale = float(batch)
    return MaterializedRule([own[n] for n in local], [scale * result[n].detach() for n in local])

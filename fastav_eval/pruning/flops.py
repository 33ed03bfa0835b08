"""Analytic prefill FLOPs of a decoder from the tokens each layer actually processed.

Two conventions, both counting one multiply-add as one FLOP and both excluding the encoders, the LM head and
decode steps:

- ``fastv`` (the convention of FastV, and of FastAV's tables), per layer with n tokens:
  ``4·n·d² + 2·n²·d + 2·n·d·m`` (four d×d projections, QKᵀ and AV, a two-matrix MLP).
- ``exact``: the same terms for the real block: grouped-query K/V projections
  (``n·d·(2·H + 2·H_kv)·d_h``), ``2·n²·H·d_h`` for QKᵀ and AV, and a three-matrix SwiGLU MLP (``3·n·d·m``).

Relative FLOPs = 100 · Σ_l f(n_l) / (L · f(n_0)): the unpruned prefill (every layer sees the n_0 prompt
tokens that layer 0 saw) is 100.

The sizes a layer's cost depends on are :class:`~fastav_eval.decoder_shape.DecoderShape` (defined in a torch-free
leaf so the records read it too; importable from here and from :mod:`fastav_eval.pruning`).
"""

from __future__ import annotations

import torch

from fastav_eval.decoder_shape import DecoderShape

CONVENTIONS: tuple[str, ...] = ("fastv", "exact")


def layer_flops(tokens: torch.Tensor, shape: DecoderShape, convention: str = "fastv") -> torch.Tensor:
    """FLOPs of one layer's prefill over ``tokens`` (any shape of token counts; float64 result)."""
    n = tokens.double()
    d, m = float(shape.hidden_size), float(shape.intermediate_size)
    if convention == "fastv":
        return 4 * n * d**2 + 2 * n**2 * d + 2 * n * d * m
    if convention == "exact":
        h, h_kv, d_h = float(shape.num_heads), float(shape.num_kv_heads), float(shape.head_dim)
        projections = n * d * (2 * h + 2 * h_kv) * d_h
        attention = 2 * n**2 * h * d_h
        return projections + attention + 3 * n * d * m
    raise ValueError(f"convention={convention!r}; accepted: {list(CONVENTIONS)}")


def prefill_flops(tokens_per_layer: torch.Tensor, shape: DecoderShape, convention: str = "fastv") -> torch.Tensor:
    """Total prefill FLOPs; ``tokens_per_layer`` is ``[..., num_layers]``, the result ``[...]``."""
    if tokens_per_layer.shape[-1] != shape.num_layers:
        raise ValueError(f"tokens_per_layer has {tokens_per_layer.shape[-1]} layers, the shape has {shape.num_layers}")
    return layer_flops(tokens_per_layer, shape, convention).sum(-1)


def relative_flops(tokens_per_layer: torch.Tensor, shape: DecoderShape, convention: str = "fastv") -> torch.Tensor:
    """Prefill FLOPs relative to the unpruned prefill (= 100); ``[..., num_layers]`` -> ``[...]``."""
    full = layer_flops(tokens_per_layer[..., 0], shape, convention) * shape.num_layers
    return 100.0 * prefill_flops(tokens_per_layer, shape, convention) / full

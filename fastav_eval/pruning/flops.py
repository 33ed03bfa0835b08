"""Analytic prefill FLOPs of a decoder from the tokens each layer actually processed.

Two conventions, both counting one multiply-add as one FLOP and both excluding the encoders, the LM head and
decode steps:

- ``fastv`` (the convention of FastV, and of FastAV's tables), per layer with n tokens:
  ``4·n·d² + 2·n²·d + 2·n·d·m`` (four d×d projections, QKᵀ and AV, a two-matrix MLP).
- ``exact``: the same terms for the real block: grouped-query K/V projections
  (``n·d·(2·H + 2·H_kv)·d_h``), ``2·n²·H·d_h`` for QKᵀ and AV, and a three-matrix SwiGLU MLP (``3·n·d·m``).

Relative FLOPs = 100 · Σ_l f(n_l) / (L · f(n_0)): the unpruned prefill (every layer sees the n_0 prompt
tokens that layer 0 saw) is 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

CONVENTIONS: tuple[str, ...] = ("fastv", "exact")


@dataclass(frozen=True)
class DecoderShape:
    """The sizes that set a decoder layer's cost."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        """Read the shape from a transformers text config (or a config with a ``text_config``)."""
        config = getattr(config, "text_config", None) or config
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
        )


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

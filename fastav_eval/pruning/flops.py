"""Analytic prefill FLOPs of a decoder from the tokens each layer actually processed.

Two conventions, both counting one multiply-add as one FLOP and both excluding the encoders, the LM head and
decode steps:

- ``fastv`` (the convention of FastV, and of FastAV's tables), per layer with n tokens:
  ``4·n·d² + 2·n²·d + 2·n·d·m`` (four d×d projections, QKᵀ and AV, a two-matrix MLP).
- ``exact``: the same terms for the real block: grouped-query K/V projections
  (``n·d·(2·H + 2·H_kv)·d_h``), ``2·n²·H·d_h`` for QKᵀ and AV, and a three-matrix SwiGLU MLP (``3·n·d·m``).

In a mixture-of-experts layer the MLP term counts what a token runs: the router (``n·d·E``) and its ``k`` experts
(``k`` times the dense term at one expert's width), not the ``E`` experts the layer holds
(:func:`mlp_flops_per_token`).

Relative FLOPs = 100 · Σ_l f(n_l) / Σ_l f(N): the unpruned prefill (every layer sees the N prompt tokens; N = n_0
unless a cut before the decoder dropped some) is 100.

The sizes a layer's cost depends on are :class:`~fastav_eval.decoder_shape.DecoderShape` (defined in a torch-free
leaf so the records read it too; importable from here and from :mod:`fastav_eval.pruning`).
"""

from __future__ import annotations

import torch

from fastav_eval.decoder_shape import DecoderShape

CONVENTIONS: tuple[str, ...] = ("fastv", "exact")


def mlp_flops_per_token(shape: DecoderShape, convention: str = "fastv") -> torch.Tensor:
    """``[num_layers]`` float64: one token's MLP FLOPs in each layer. Dense: ``2·d·m`` (``fastv``) or ``3·d·m``
    (``exact``: SwiGLU). Mixture of experts: the router's ``d·E`` plus the ``k`` experts the token runs, each
    ``2·d·m_e`` or ``3·d·m_e``, not the ``E`` it holds; a dense layer of the same decoder as dense."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r}; accepted: {list(CONVENTIONS)}")
    matrices = 2.0 if convention == "fastv" else 3.0
    d = float(shape.hidden_size)
    dense = matrices * d * shape.intermediate_size
    per_layer = torch.full((shape.num_layers,), dense, dtype=torch.float64)
    if shape.is_moe:
        sparse = d * shape.num_experts + shape.num_experts_per_tok * matrices * d * shape.moe_intermediate_size
        for layer in range(shape.num_layers):
            if layer not in shape.dense_layers:
                per_layer[layer] = sparse
    return per_layer


def layer_flops(tokens: torch.Tensor, shape: DecoderShape, convention: str = "fastv", layer: int = 0) -> torch.Tensor:
    """FLOPs of layer ``layer``'s prefill over ``tokens`` (any shape of token counts; float64 result)."""
    n = tokens.double()
    d = float(shape.hidden_size)
    mlp = float(mlp_flops_per_token(shape, convention)[layer])
    if convention == "fastv":
        return 4 * n * d**2 + 2 * n**2 * d + n * mlp
    h, h_kv, d_h = float(shape.num_heads), float(shape.num_kv_heads), float(shape.head_dim)
    return n * d * (2 * h + 2 * h_kv) * d_h + 2 * n**2 * h * d_h + n * mlp


def prefill_flops(tokens_per_layer: torch.Tensor, shape: DecoderShape, convention: str = "fastv") -> torch.Tensor:
    """Total prefill FLOPs; ``tokens_per_layer`` is ``[..., num_layers]``, the result ``[...]``."""
    if tokens_per_layer.shape[-1] != shape.num_layers:
        raise ValueError(f"tokens_per_layer has {tokens_per_layer.shape[-1]} layers, the shape has {shape.num_layers}")
    layers = [layer_flops(tokens_per_layer[..., i], shape, convention, i) for i in range(shape.num_layers)]
    return torch.stack(layers, -1).sum(-1)


def relative_flops(
    tokens_per_layer: torch.Tensor,
    shape: DecoderShape,
    convention: str = "fastv",
    prompt_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prefill FLOPs relative to the unpruned prefill (= 100), in which every layer sees the whole prompt:
    ``prompt_tokens`` ``[...]`` (None: layer 0's count, i.e. no cut before the decoder); ``[..., num_layers]`` ->
    ``[...]``."""
    whole = tokens_per_layer[..., 0] if prompt_tokens is None else torch.as_tensor(prompt_tokens)
    prompt = whole.to(tokens_per_layer.device)[..., None].expand(tokens_per_layer.shape)
    full = prefill_flops(prompt, shape, convention)
    return 100.0 * prefill_flops(tokens_per_layer, shape, convention) / full

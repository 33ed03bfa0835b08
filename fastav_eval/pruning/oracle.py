"""The engine's oracle: the stock decoder layers over the *full* sequence with per-layer masks that hide the keys a
pruned layer would not hold. Written independently of the engine (eager attention, no gathering, no cache, nothing
imported from this package), on any device and dtype: the tests run it on CPU in float32, ``benchmarks/gpu_check.py``
on CUDA in bf16."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def attention_implementation(module: nn.Module, name: str) -> Iterator[None]:
    """Run ``module`` (a model or its text decoder) with ``config._attn_implementation = name`` for a while."""
    original = module.config._attn_implementation
    module.config._attn_implementation = name
    try:
        yield
    finally:
        module.config._attn_implementation = original


def kept_masks(kv_positions: list[torch.Tensor], length: int) -> list[torch.Tensor]:
    """Per layer ``[B, length]`` bool on the CPU: the original positions held in the layer's cache (from
    ``PrefillStats.kv_positions``, each ``[B, L_layer]`` padded with -1). Consecutive equal masks are one tensor, so
    :func:`masked_decoder` builds each additive mask once."""
    masks: list[torch.Tensor] = []
    for positions in kv_positions:
        positions = positions.cpu()
        mask = torch.zeros(positions.shape[0], length, dtype=torch.bool)
        for row in range(positions.shape[0]):
            mask[row, positions[row][positions[row] >= 0]] = True
        masks.append(masks[-1] if masks and torch.equal(masks[-1], mask) else mask)
    return masks


def masked_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    visible: list[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits of a Qwen2/Llama causal LM where layer i's keys are limited to ``visible[i]`` ``[B, L]``.

    Returns:
        ``(logits [B, L, V], last-row head-averaged attention per layer [B, L])``.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    hidden = model.model.embed_tokens(input_ids)
    hidden, last_rows = masked_decoder(model.model, hidden, position_ids, visible, attention_mask)
    return model.lm_head(hidden), last_rows


def masked_decoder(
    text_model: nn.Module,
    hidden: torch.Tensor,
    position_ids: torch.Tensor,
    visible: list[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    after_layer: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The decoder stack over ``hidden [B, L, D]`` with layer i's keys limited to ``visible[i] [B, L]`` and to
    ``attention_mask [B, L]`` (padding; None: none), a position always seeing itself; final norm applied.
    ``after_layer(i, hidden)`` (optional) is what the stock decoder does to the hidden states between layer i and
    the next (Qwen3-Omni's DeepStack additions).

    Returns:
        ``(hidden [B, L, D], last-row head-averaged attention per layer [B, L] in float32)``.
    """
    batch, length = hidden.shape[:2]
    device, dtype = hidden.device, hidden.dtype
    keys_allowed = (
        torch.ones(batch, length, dtype=torch.bool, device=device)
        if attention_mask is None
        else attention_mask.bool().to(device)
    )
    cos, sin = text_model.rotary_emb(hidden, position_ids)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=device)
    last_rows: list[torch.Tensor] = []

    def record(_module: nn.Module, _args: tuple, output: tuple) -> None:
        last_rows.append(output[1][:, :, -1, :].float().mean(1))

    hooks = [layer.self_attn.register_forward_hook(record) for layer in text_model.layers]
    additive: dict[int, torch.Tensor] = {}
    try:
        with attention_implementation(text_model, "eager"):
            for layer_idx, layer in enumerate(text_model.layers):
                key = id(visible[layer_idx])
                if key not in additive:  # equal masks are adjacent: keep one [B, 1, L, L] mask alive at a time
                    keys = visible[layer_idx].to(device) & keys_allowed
                    allowed = (causal[None] & keys[:, None, :]) | eye[None]
                    mask = torch.zeros(batch, 1, length, length, dtype=dtype, device=device)
                    additive = {key: mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)}
                hidden = layer(hidden, attention_mask=additive[key], position_embeddings=(cos, sin), position_ids=None)
                if after_layer is not None:
                    hidden = after_layer(layer_idx, hidden)
    finally:
        for hook in hooks:
            hook.remove()
    return text_model.norm(hidden), last_rows

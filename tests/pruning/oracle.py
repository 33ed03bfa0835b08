"""Test oracle: the stock decoder layers run over the *full* sequence with per-layer masks that hide the keys
a pruned layer would not hold. Written independently of the engine: eager attention, no gathering, no cache."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def attention_implementation(model: nn.Module, name: str):
    original = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = original


def kept_masks(kv_positions: list[torch.Tensor], length: int) -> list[torch.Tensor]:
    """Per layer ``[B, length]`` bool: original positions held in the layer's cache (from PrefillStats)."""
    masks = []
    for positions in kv_positions:
        mask = torch.zeros(positions.shape[0], length, dtype=torch.bool)
        for row in range(positions.shape[0]):
            valid = positions[row][positions[row] >= 0]
            mask[row, valid] = True
        masks.append(mask)
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
    attention_mask: torch.Tensor,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The decoder stack over ``hidden [B, L, D]`` with layer i's keys limited to ``visible[i]``; final norm applied."""
    batch, length = hidden.shape[:2]
    cos, sin = text_model.rotary_emb(hidden, position_ids)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    eye = torch.eye(length, dtype=torch.bool)
    last_rows: list[torch.Tensor] = []

    def record(_module, _args, output):
        last_rows.append(output[1][:, :, -1, :].float().mean(1))

    hooks = [layer.self_attn.register_forward_hook(record) for layer in text_model.layers]
    try:
        with attention_implementation(text_model, "eager"):
            for layer_idx, layer in enumerate(text_model.layers):
                keys = visible[layer_idx] & attention_mask.bool()
                allowed = (causal[None] & keys[:, None, :]) | eye[None]
                additive = torch.zeros(batch, 1, length, length).masked_fill(
                    ~allowed[:, None], torch.finfo(torch.float32).min
                )
                hidden = layer(hidden, attention_mask=additive, position_embeddings=(cos, sin), position_ids=None)
    finally:
        for hook in hooks:
            hook.remove()
    return text_model.norm(hidden), last_rows

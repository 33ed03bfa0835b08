"""Last-query attention scores without an attention map.

The engine switches the decoder to ``fastav_<kernel>`` (``fastav_sdpa``, ``fastav_eager``,
``fastav_flash_attention_2``, ...), attention functions registered through transformers'
``AttentionInterface``. Each one, at the single layer the engine asks for, computes

    s = mean_h softmax(q_last,h · K_hᵀ · scale)          q_last [B, H, D], K [B, H_kv, L, D]

from the post-RoPE query and key tensors the layer already has (GQA-aware, fp32, O(H·L·D)), then calls the
real kernel unchanged. No ``[L, L]`` matrix is ever formed, so sdpa and FlashAttention keep working.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "fastav_"
SINK_ATTRIBUTE = "_fastav_score_sink"
SUPPORTED_KERNELS: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")
"""Kernels the scored wrapper can sit in front of (flex attention's BlockMask and paged caches are not handled)."""


def last_query_scores(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Head-averaged attention of the last query over every key.

    Args:
        query: ``[B, H, q_len, D]`` post-RoPE queries.
        key: ``[B, H_kv, kv_len, D]`` post-RoPE keys (H a multiple of H_kv).
        attention_mask: the mask the kernel receives: boolean (True = attend) or additive float
            ``[B, 1, q_len, kv_len]``, a ``[B, kv_len]`` key-padding mask (FlashAttention), or None.
        scaling: the softmax scale (``head_dim ** -0.5``).

    Returns:
        ``[B, kv_len]`` fp32; each row sums to 1 over its unmasked keys.
    """
    batch, num_heads, _, head_dim = query.shape
    num_kv_heads = key.shape[1]
    grouped = query[:, :, -1, :].reshape(batch, num_kv_heads, num_heads // num_kv_heads, head_dim).float()
    logits = torch.einsum("bgrd,bgkd->bgrk", grouped, key.float()) * scaling  # [B, H_kv, groups, kv_len]
    if attention_mask is not None:
        last_row = attention_mask[:, 0, -1, :] if attention_mask.ndim == 4 else attention_mask
        last_row = last_row[:, None, None, -logits.shape[-1] :]
        if last_row.dtype == torch.bool:
            logits = logits.masked_fill(~last_row, float("-inf"))
        elif attention_mask.ndim == 2:
            logits = logits.masked_fill(last_row == 0, float("-inf"))
        else:
            logits = logits + last_row.float()
    return logits.softmax(-1).mean(dim=(1, 2))


class ScoreSink:
    """Where the scored attention function leaves the scores of the layer the engine asked for."""

    def __init__(self) -> None:
        self.layer: int | None = None
        self.scores: torch.Tensor | None = None

    def request(self, layer_idx: int | None) -> None:
        self.layer = layer_idx
        self.scores = None

    def take(self) -> torch.Tensor | None:
        scores, self.scores, self.layer = self.scores, None, None
        return scores


def base_attention(name: str, module: torch.nn.Module) -> Callable[..., Any]:
    """The kernel registered as ``name`` (``"eager"`` is the module's own ``eager_attention_forward``)."""
    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward  # type: ignore[attr-defined]
    return ALL_ATTENTION_FUNCTIONS[name]


def _scored_attention(base: str) -> Callable[..., Any]:
    def attention(module, query, key, value, attention_mask, **kwargs):
        sink: ScoreSink | None = getattr(module, SINK_ATTRIBUTE, None)
        if sink is not None and sink.layer == module.layer_idx:
            scaling = kwargs.get("scaling") or module.scaling
            sink.scores = last_query_scores(query, key, attention_mask, scaling)
        # Kernels may dispatch on the config's name (FlashAttention loads flash_attn only for its own name).
        config = module.config
        wrapper_name, config._attn_implementation = config._attn_implementation, base
        try:
            return base_attention(base, module)(module, query, key, value, attention_mask, **kwargs)
        finally:
            config._attn_implementation = wrapper_name

    attention.__name__ = f"{PREFIX}{base}_attention"
    return attention


KERNEL_PACKAGES: dict[str, tuple[str, str]] = {
    "flash_attention_2": ("flash_attn", "pip install flash-attn --no-build-isolation (or pip install -e '.[gpu]')"),
    "flash_attention_3": ("flash_attn_interface", "build FlashAttention 3 from its hopper/ folder"),
}
"""Kernels that need a package of their own: the module to find and how to install it."""


def check_attention_kernel(name: str, accepted: tuple[str, ...] | None = None) -> None:
    """Raise a ValueError, before any weight is loaded, if ``name`` is not a kernel the engine can run here.

    ``accepted`` narrows :data:`SUPPORTED_KERNELS` (to what a model adapter supports).
    """
    accepted = accepted or SUPPORTED_KERNELS
    if name not in accepted:
        raise ValueError(f"attn_implementation={name!r}; accepted: {list(accepted)}")
    if name in KERNEL_PACKAGES:
        module, how = KERNEL_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(
                f"attn_implementation={name!r} needs the {module!r} package, which is not installed ({how}; "
                "it needs a CUDA GPU); or use attn_implementation='sdpa'"
            )


def register_scored_attention(base: str) -> str:
    """Register ``fastav_<base>`` (attention function and mask builder) once; return its name."""
    check_attention_kernel(base)
    return register_wrapper(f"{PREFIX}{base}", _scored_attention(base), masks_of=base)


def register_wrapper(name: str, function: Callable[..., Any], masks_of: str) -> str:
    """Register ``function`` as attention implementation ``name`` (once), building its masks like ``masks_of``."""
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[masks_of])
    return name

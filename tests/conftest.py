"""Shared fixtures: tiny random-weight decoders built from transformers config classes (CPU, fp32)."""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from transformers import Cache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 97


def _tiny(config_class, model_class, attn: str, layers: int, kv_heads: int, seed: int):
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        attn_implementation=attn,
    )
    return model_class(config).eval()


def tiny_qwen2(attn: str = "sdpa", layers: int = 6, seed: int = 0) -> Qwen2ForCausalLM:
    """6 layers, d 64, 4 query / 2 KV heads."""
    return _tiny(Qwen2Config, Qwen2ForCausalLM, attn, layers, kv_heads=2, seed=seed)


def tiny_llama(attn: str = "sdpa", layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    """4 layers, d 64, 4 query heads sharing 1 KV head."""
    return _tiny(LlamaConfig, LlamaForCausalLM, attn, layers, kv_heads=1, seed=seed)


CACHE_NAME = "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"
"""The keyword the installed transformers takes the KV cache by (``cache`` from 5.24)."""


def with_cache(cache: Cache) -> dict[str, Cache]:
    """``model(..., **with_cache(cache))`` on any supported transformers release."""
    return {CACHE_NAME: cache}


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield

"""Oracle checks every adapter that merges its encoders into a causal LM's ``inputs_embeds`` (``EmbedsAdapter``:
VideoLLaMA2, video-SALMONN 2) must pass, shared by their test files: the engine switched off is the stock model, a
batch of two answers as each alone, and sdpa answers as eager."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastav_eval.models.base import EmbedsAdapter, Request
from fastav_eval.pruning import PruningConfig, install

MakeAdapter = Callable[..., EmbedsAdapter]


def load(adapter: EmbedsAdapter, visual: Any, prompt: str) -> Any:
    return adapter.load_request(Request([str(visual)], prompt), 0)


def assert_engine_off_is_the_stock_model(make_adapter: MakeAdapter, clip: Any, prompt: str) -> None:
    stock, pruned_off = make_adapter(), make_adapter()
    install(pruned_off.decoder, PruningConfig.off())
    inputs = stock.prepare([load(stock, clip, prompt)])
    with torch.no_grad():
        expected = stock.decoder(**inputs.generate_kwargs).logits[0, -1]
        ours = pruned_off.decoder(**inputs.generate_kwargs).logits[0, -1]
    assert torch.allclose(ours, expected, atol=1e-6, rtol=0)
    assert pruned_off.generate(inputs, 8, []) == stock.generate(inputs, 8, [])


def assert_a_batch_of_two_equals_each_alone(adapter: EmbedsAdapter, clips: tuple[Any, Any], prompt: str) -> None:
    """Two clips of different lengths and prompts (the batch is left-padded)."""
    samples = [load(adapter, clips[0], prompt), load(adapter, clips[1], "Which one?")]
    batch = adapter.generate(adapter.prepare(samples), 6, [])
    assert batch == [adapter.generate(adapter.prepare([s]), 6, [])[0] for s in samples]


def assert_sdpa_answers_as_eager(make_adapter: MakeAdapter, clip: Any, prompt: str) -> None:
    eager, sdpa = make_adapter("eager"), make_adapter("sdpa")
    sample = load(eager, clip, prompt)
    assert eager.generate(eager.prepare([sample]), 8, []) == sdpa.generate(sdpa.prepare([sample]), 8, [])

"""The pruned decoder forward, installed on a loaded transformers model in one reversible call.

:func:`install` finds the model's text decoder (``Qwen2Model``, ``LlamaModel`` or the Qwen2.5-Omni thinker's
text model), replaces its ``forward`` on that instance only, and switches its attention to the scored
``fastav_<kernel>`` wrapper. The forward runs the stock decoder layers; at a fresh prefill with a layout set
(:meth:`FastAVDecoder.layout`) it:

1. keeps every token through layers ``0 .. global_layer - 1``;
2. before each prune point gathers the kept tokens (sorted, so causal order holds) from the hidden states and
   the rotary ``cos``/``sin`` (so kept tokens keep their original positions);
3. gives each layer a causal mask sized to what that layer holds, so each layer's KV cache keeps exactly
   the tokens that layer saw.

Decode steps prune nothing: the new token is appended to every layer's (shorter) cache, and each layer gets
a mask over its own cache. Positions come from ``generate``, which derives them from the unpruned
attention mask, so decoding uses the original positions.
"""

from __future__ import annotations

import logging
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

from fastav_eval.pruning.config import PruningConfig
from fastav_eval.pruning.flops import DecoderShape
from fastav_eval.pruning.layout import ModalityLayout
from fastav_eval.pruning.plan import PrefillPlan, PrefillStats
from fastav_eval.pruning.scoring import SINK_ATTRIBUTE, ScoreSink, register_scored_attention

logger = logging.getLogger(__name__)

SUPPORTED_DECODERS: dict[str, str] = {
    "qwen2": "rope",  # Qwen2 (VideoLLaMA2-AV's and video-SALMONN 2's LLM)
    "llama": "rope",
    "qwen2_5_omni_text": "mrope",  # Qwen2.5-Omni thinker: [3, B, L] positions, cos/sin arrive [B, L, D]
}
"""Text-model ``config.model_type`` -> its position scheme."""

TEXT_MODEL_PATHS: tuple[str, ...] = (
    "",
    "model",
    "language_model",
    "model.language_model",
    "thinker.model.language_model",
)
ENGINE_ATTRIBUTE = "_fastav_engine"


def find_text_model(model: nn.Module) -> nn.Module:
    """The decoder stack inside ``model``: the first of :data:`TEXT_MODEL_PATHS` with layers and rotary embeddings."""
    for path in TEXT_MODEL_PATHS:
        candidate: Any = model
        for part in filter(None, path.split(".")):
            candidate = getattr(candidate, part, None)
        if all(hasattr(candidate, name) for name in ("layers", "rotary_emb", "norm", "embed_tokens")):
            return candidate
    raise ValueError(
        f"model {type(model).__name__} has no supported text decoder at any of {list(TEXT_MODEL_PATHS)} "
        f"(supported model types: {sorted(SUPPORTED_DECODERS)})"
    )


@dataclass
class _LayerInputs:
    """What every decoder layer of one forward receives besides its hidden states and mask."""

    cos: torch.Tensor  # [B or 1, L, head_dim]
    sin: torch.Tensor
    text_position_ids: torch.Tensor | None  # [B or 1, L]; for masks and FlashAttention's packing check
    cache: Cache | None
    use_cache: bool
    kwargs: dict[str, Any]


class FastAVDecoder:
    """FastAV installed on one text decoder. Create it with :func:`install`.

    A pruned prefill returns hidden states (and so logits) for the tokens the last layer kept only,
    ``[B, L_last, ...]``; the last row is still the last prompt token. ``last_stats.kv_positions[-1]`` maps the
    rows back to prompt positions. Decode steps return one row per new token, as usual.

    Attributes:
        config: the resolved :class:`PruningConfig`.
        shape: the decoder's :class:`DecoderShape` (for FLOPs).
        last_stats: what the most recent fresh prefill with a layout processed; None after a prefill without one.
    """

    def __init__(self, text_model: nn.Module, config: PruningConfig) -> None:
        text_config = text_model.config
        model_type = getattr(text_config, "model_type", None)
        if model_type not in SUPPORTED_DECODERS:
            raise ValueError(f"text model type {model_type!r} is not supported; accepted: {sorted(SUPPORTED_DECODERS)}")
        if any(kind != "full_attention" for kind in getattr(text_config, "layer_types", None) or []):
            raise ValueError("sliding-window attention layers are not supported (config.layer_types)")
        self.text_model = text_model
        self.position_scheme = SUPPORTED_DECODERS[model_type]
        self.num_layers = len(text_model.layers)
        self.config = config.resolve(self.num_layers)
        self.shape = DecoderShape.from_config(text_config)
        self.last_stats: PrefillStats | None = None
        self._layout: ModalityLayout | None = None
        self._sink = ScoreSink()
        self._decode_states: weakref.WeakKeyDictionary[Cache, _DecodeState] = weakref.WeakKeyDictionary()
        self._original_attn: str | None = text_config._attn_implementation
        self._installed = False

    # ------------------------------------------------------------------ install / uninstall
    def _install(self) -> None:
        text_model = self.text_model
        if getattr(text_model, ENGINE_ATTRIBUTE, None) is not None:
            raise ValueError("FastAV is already installed on this model; call uninstall() first")
        kernel = self._original_attn or "eager"
        text_model.config._attn_implementation = register_scored_attention(kernel)
        for layer in text_model.layers:
            setattr(layer.self_attn, SINK_ATTRIBUTE, self._sink)
        text_model.forward = types.MethodType(_pruned_forward, text_model)
        setattr(text_model, ENGINE_ATTRIBUTE, self)
        self._installed = True
        logger.info(
            "FastAV installed on %s (%d layers, attention %s): %s",
            type(text_model).__name__,
            self.num_layers,
            kernel,
            self.config.describe(),
        )

    def uninstall(self) -> None:
        """Restore the stock forward and attention implementation."""
        if not self._installed:
            return
        text_model = self.text_model
        del text_model.forward
        for layer in text_model.layers:
            delattr(layer.self_attn, SINK_ATTRIBUTE)
        text_model.config._attn_implementation = self._original_attn
        delattr(text_model, ENGINE_ATTRIBUTE)
        self._installed = False

    @contextmanager
    def layout(self, layout: ModalityLayout) -> Iterator[FastAVDecoder]:
        """Prune every fresh prefill run inside this block with ``layout`` (``[B, L]``, the prompt)."""
        previous, self._layout = self._layout, layout
        try:
            yield self
        finally:
            self._layout = previous

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        text_model = self.text_model
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        for flag in ("output_attentions", "output_hidden_states"):
            if kwargs.pop(flag, False):
                raise ValueError(f"{flag}=True is not supported while FastAV is installed (layers differ in length)")
        if isinstance(attention_mask, dict):
            raise ValueError("precomputed mask dicts (static caches, torch.compile) are not supported with FastAV")
        if past_key_values is not None and not isinstance(past_key_values, DynamicCache):
            raise ValueError(
                f"past_key_values={type(past_key_values).__name__}; accepted: DynamicCache or None "
                "(pruned layers hold caches of different lengths)"
            )
        if use_cache is None:
            use_cache = bool(getattr(text_model.config, "use_cache", True))
        if inputs_embeds is None:
            inputs_embeds = text_model.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=text_model.config)
        batch, length = inputs_embeds.shape[:2]
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        position_ids, text_position_ids = self._positions(position_ids, batch, length, past_length, inputs_embeds)
        cos, sin = text_model.rotary_emb(inputs_embeds, position_ids)
        inputs = _LayerInputs(cos, sin, text_position_ids, past_key_values, use_cache, kwargs)

        plan = self._start_prefill(past_length, attention_mask, batch, length)
        if plan is None:
            hidden = self._run_over_cache(inputs_embeds, attention_mask, inputs)
        else:
            hidden = self._run_prefill(plan, inputs_embeds, inputs)
        hidden = text_model.norm(hidden)
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=past_key_values if use_cache else None)

    def _positions(
        self, position_ids: torch.Tensor | None, batch: int, length: int, past_length: int, embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(rotary position ids, text position ids for masks)`` as the stock forward derives them."""
        if self.position_scheme == "rope":
            if position_ids is None:
                position_ids = (torch.arange(length, device=embeds.device) + past_length).unsqueeze(0)
            return position_ids, position_ids
        if position_ids is None:
            position_ids = torch.arange(length, device=embeds.device) + past_length
            position_ids = position_ids.view(1, 1, -1).expand(3, batch, -1)
        elif position_ids.ndim == 2:
            position_ids = position_ids[None, ...].expand(3, position_ids.shape[0], -1)
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:
            return position_ids[1:], position_ids[0]
        return position_ids, None

    def _start_prefill(
        self, past_length: int, attention_mask: torch.Tensor | None, batch: int, length: int
    ) -> PrefillPlan | None:
        """A plan when this forward is a fresh prefill with a layout (with pruning off it records, never drops)."""
        layout = self._layout
        if past_length > 0:
            return None
        self.last_stats = None
        if layout is None or length < 2:
            return None
        if (layout.batch_size, layout.length) != (batch, length):
            raise ValueError(
                f"layout is [{layout.batch_size}, {layout.length}] but the prefill input is [{batch}, {length}]; "
                "FastAV prunes the prompt's prefill once, so generate with use_cache=True and without "
                "assisted or prompt-lookup decoding"
            )
        layout = layout.to(self.text_model.embed_tokens.weight.device)
        layout.check_padding(None if attention_mask is None else attention_mask[:, :length])
        return PrefillPlan(layout, self.config, self.num_layers)

    def _run_prefill(self, plan: PrefillPlan, hidden: torch.Tensor, inputs: _LayerInputs) -> torch.Tensor:
        config = self.text_model.config
        mask = _causal_mask(config, hidden, plan.valid, inputs.cache, inputs.text_position_ids, layer_idx=0)
        position_ids = inputs.text_position_ids
        cos, sin = inputs.cos, inputs.sin
        segment_valid: list[torch.Tensor] = []
        scores = None
        for layer_idx, layer in enumerate(self.text_model.layers):
            index = plan.step(layer_idx, scores)
            if index is not None:
                hidden = _gather(hidden, index)
                cos, sin = _gather(cos, index), _gather(sin, index)
                # Kept positions are no longer contiguous: masks and FlashAttention must not read them as packing.
                position_ids = None
                mask = _causal_mask(config, hidden, plan.valid, inputs.cache, None, layer_idx=layer_idx)
            segment_valid.append(plan.valid)
            self._sink.request(layer_idx if plan.needs_scores(layer_idx) else None)
            hidden = _run_layer(layer, hidden, mask, cos, sin, position_ids, inputs)
            scores = self._sink.take()
        self.last_stats = plan.stats()
        if inputs.use_cache and inputs.cache is not None:
            self._decode_states[inputs.cache] = _DecodeState(plan.layout.length, segment_valid)
        return hidden

    def _run_over_cache(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, inputs: _LayerInputs
    ) -> torch.Tensor:
        """A forward that prunes nothing: decode steps and continuations (per-layer masks over a pruned cache),
        and prefills without a layout (the stock computation)."""
        config, cache = self.text_model.config, inputs.cache
        state = self._decode_states.get(cache) if cache is not None else None
        if state is None and cache is not None and cache.get_seq_length() > 0:
            if len({cache.get_seq_length(i) for i in range(len(cache.layers))}) > 1:
                raise ValueError("this cache holds pruned layers from a prefill another FastAV engine ran")
            if self._layout is not None and hidden.shape[1] > 1:
                raise ValueError(
                    f"a layout is set, but this forward continues a cache of {cache.get_seq_length()} tokens that "
                    "FastAV did not prune; FastAV prunes fresh prefills only (pass past_key_values=None)"
                )
        masks: dict[int, Any] = {}
        for layer_idx, layer in enumerate(self.text_model.layers):
            if state is None:
                key, position_ids = 0, inputs.text_position_ids
                if key not in masks:
                    masks[key] = _causal_mask(config, hidden, attention_mask, cache, position_ids, layer_idx=0)
            else:
                key, position_ids = id(state.kv_valid[layer_idx]), None
                if key not in masks:
                    layer_mask = state.mask_2d(layer_idx, cache, attention_mask, hidden.shape[1])
                    masks[key] = _causal_mask(config, hidden, layer_mask, cache, None, layer_idx=layer_idx)
            hidden = _run_layer(layer, hidden, masks[key], inputs.cos, inputs.sin, position_ids, inputs)
        return hidden


class _DecodeState:
    """Per-layer key validity of a pruned prompt, for the masks of later forwards over the same cache."""

    def __init__(self, prompt_length: int, kv_valid: list[torch.Tensor]) -> None:
        self.prompt_length = prompt_length
        self.kv_valid = kv_valid  # per layer [B, L_i] bool; layers of one segment share one tensor

    def mask_2d(
        self, layer_idx: int, cache: Cache, attention_mask: torch.Tensor | None, new_tokens: int
    ) -> torch.Tensor:
        """``[B, L_i + past_new + new_tokens]`` key mask of layer ``layer_idx`` for the current forward."""
        prompt_valid = self.kv_valid[layer_idx]
        cached_new = cache.get_seq_length(0) - self.prompt_length
        if attention_mask is not None:
            tail = attention_mask[:, self.prompt_length :].bool()
        else:
            shape = (prompt_valid.shape[0], cached_new + new_tokens)
            tail = torch.ones(shape, dtype=torch.bool, device=prompt_valid.device)
        return torch.cat([prompt_valid, tail], dim=1)


def _run_layer(
    layer: nn.Module,
    hidden: torch.Tensor,
    mask: Any,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_ids: torch.Tensor | None,
    inputs: _LayerInputs,
) -> torch.Tensor:
    return layer(
        hidden,
        attention_mask=mask,
        position_embeddings=(cos, sin),
        position_ids=position_ids,
        past_key_values=inputs.cache,
        use_cache=inputs.use_cache,
        **inputs.kwargs,
    )


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor [B', L, ...]`` gathered along dim 1 with ``index [B, L_new]`` (B' may be 1: broadcast)."""
    if tensor.shape[0] != index.shape[0]:
        tensor = tensor.expand(index.shape[0], *tensor.shape[1:])
    expanded = index.view(*index.shape, *([1] * (tensor.ndim - 2))).expand(*index.shape, *tensor.shape[2:])
    return tensor.gather(1, expanded)


def _causal_mask(
    config: Any,
    hidden: torch.Tensor,
    key_valid: torch.Tensor | None,
    cache: Cache | None,
    position_ids: torch.Tensor | None,
    layer_idx: int,
) -> Any:
    """The layer's causal mask over its own cache; a key-validity mask with no False entry is passed as None."""
    if key_valid is not None and bool(key_valid.all()):
        key_valid = None
    return create_causal_mask(
        config=config,
        inputs_embeds=hidden,
        attention_mask=key_valid,
        past_key_values=cache,
        position_ids=position_ids,
        layer_idx=layer_idx,
    )


def _pruned_forward(self: nn.Module, *args: Any, **kwargs: Any) -> BaseModelOutputWithPast:
    engine: FastAVDecoder = getattr(self, ENGINE_ATTRIBUTE)
    return engine.forward(*args, **kwargs)


def install(model: nn.Module, config: PruningConfig | None = None) -> FastAVDecoder:
    """Install FastAV on ``model`` (a causal LM, a thinker, or the text decoder itself) and return the engine.

    ``engine.uninstall()`` (or :func:`uninstall`) restores the stock model.
    """
    engine = FastAVDecoder(find_text_model(model), config or PruningConfig())
    engine._install()
    return engine


def uninstall(model: nn.Module) -> None:
    """Remove FastAV from ``model`` if it is installed."""
    engine = getattr(find_text_model(model), ENGINE_ATTRIBUTE, None)
    if engine is not None:
        engine.uninstall()

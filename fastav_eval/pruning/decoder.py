"""FastAV on a stock transformers text decoder, through hooks: one reversible call, no copy of its forward.

:func:`install` finds the model's text decoder (``Qwen2Model``, ``LlamaModel`` or the Qwen2.5-Omni thinker's
text model), checks that it speaks the interface the engine was written for
(:func:`~fastav_eval.pruning.compat.check_decoder_interface`), switches its attention to the scored
``fastav_<kernel>`` wrapper and registers hooks. The stock forward keeps doing everything else (embeddings, the
cache, positions including TMRoPE, rotary, the final norm); the hooks only change what the layers receive:

- before the decoder: note the 2-D attention mask, refuse what the engine does not handle;
- before layer 0: decide what this forward is, from the cache the stock forward hands its layers (so however a
  release passes it): a fresh prefill to prune (a layout is set), a forward over a cache this engine pruned, or
  one to leave alone; anything else under a layout is an error, never a silent fresh prefill;
- before each layer of a pruned prefill: run the prune point, then hand the layer the kept tokens (sorted, so
  causal order holds) with their own rotary ``cos``/``sin`` (kept tokens keep their original positions) and a
  causal mask sized to what the layer holds, so each layer's KV cache keeps exactly the tokens that layer saw;
- before each pruned layer of a later forward over that cache (decode steps, continuations): a mask over the
  layer's own cache; layers that hold the whole prompt keep the stock mask;
- after the decoder: keep the prefill's statistics and what each layer's cache holds.

A decoder with DeepStack (Qwen3-Omni's thinker adds vision features to the visual positions after its first
layers, outside them) gets its ``_deepstack_process`` wrapped on the instance: after a cut, the visual mask and the
feature rows are taken at the kept positions, so a cut before any layer is the masked recompute of the stock model.

Positions of decode steps come from ``generate``, which derives them from the unpruned attention mask, so
decoding uses the original positions.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask

from fastav_eval.pruning.compat import DEEPSTACK_METHOD, check_decoder_interface
from fastav_eval.pruning.config import PruningConfig
from fastav_eval.pruning.flops import DecoderShape
from fastav_eval.pruning.layout import ModalityLayout
from fastav_eval.pruning.plan import PrefillPlan, PrefillStats
from fastav_eval.pruning.rules import SampleInfo
from fastav_eval.pruning.scoring import SINK_ATTRIBUTE, ScoreSink, register_scored_attention

logger = logging.getLogger(__name__)

SUPPORTED_DECODERS: dict[str, str] = {
    "qwen2": "Qwen2 (VideoLLaMA2-AV's and video-SALMONN 2's LLM)",
    "llama": "Llama",
    "qwen2_5_omni_text": "Qwen2.5-Omni thinker (TMRoPE: [3, B, L] positions, cos/sin arrive [B, L, D])",
    "qwen2_5_vl_text": "Qwen2.5-VL (video-SALMONN 2+'s LLM; M-RoPE: [3, B, L] positions, cos/sin arrive [B, L, D])",
    "qwen3_omni_moe_text": "Qwen3-Omni thinker (mixture of experts; DeepStack vision features after its first layers)",
}
"""Text-model ``config.model_type`` -> what it is."""

TEXT_MODEL_PATHS: tuple[str, ...] = (
    "",
    "model",
    "language_model",
    "model.language_model",
    "thinker.model.language_model",
)
ENGINE_ATTRIBUTE = "_fastav_engine"
OUTPUT_FLAGS = ("output_attentions", "output_hidden_states")
"""Per-layer outputs the engine refuses to return (pruned layers differ in length), given by keyword or config."""


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


class FastAVDecoder:
    """FastAV installed on one text decoder. Create it with :func:`install`.

    A pruned prefill returns hidden states (and so logits) for the tokens the last layer kept only,
    ``[B, L_last, ...]``; the last row is still the last prompt token. ``last_stats.kv_positions[-1]`` maps the
    rows back to prompt positions. Decode steps return one row per new token, as usual.

    Attributes:
        config: the resolved :class:`PruningConfig`.
        shape: the decoder's :class:`DecoderShape` (for FLOPs).
        interface: how the installed transformers calls the decoder (:class:`DecoderInterface`).
        last_stats: what the most recent fresh prefill with a layout processed; None after a prefill without one.
    """

    def __init__(self, text_model: nn.Module, config: PruningConfig) -> None:
        text_config = text_model.config
        model_type = getattr(text_config, "model_type", None)
        if model_type not in SUPPORTED_DECODERS:
            raise ValueError(f"text model type {model_type!r} is not supported; accepted: {sorted(SUPPORTED_DECODERS)}")
        if any(kind != "full_attention" for kind in getattr(text_config, "layer_types", None) or []):
            raise ValueError("sliding-window attention layers are not supported (config.layer_types)")
        self.interface = check_decoder_interface(text_model)
        check = getattr(config.chooser, "check_decoder", None)
        if callable(check):  # a chooser made for one decoder (a learned policy) refuses any other
            check(text_config)
        self.text_model = text_model
        self.num_layers = len(text_model.layers)
        self.config = config.resolve(self.num_layers)
        self.shape = DecoderShape.from_config(text_config)
        self.last_stats: PrefillStats | None = None
        self._layout: ModalityLayout | None = None
        self._samples: tuple[SampleInfo, ...] | None = None
        self._pruned_under_layout = False  # a pruned prefill ran inside the current layout block
        self._attention_mask: torch.Tensor | None = None  # the 2-D mask of the forward in progress
        self._caller_keywords: frozenset[str] = frozenset()  # the keywords the forward in progress was called with
        self._run: _Prefill | _OverCache | None = None  # what the forward in progress does, decided at layer 0
        self._sink = ScoreSink()
        self._decode_states: weakref.WeakKeyDictionary[Cache, _DecodeState] = weakref.WeakKeyDictionary()
        self._original_attn: str | None = text_config._attn_implementation
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    # ------------------------------------------------------------------ install / uninstall
    def _install(self) -> None:
        text_model = self.text_model
        if getattr(text_model, ENGINE_ATTRIBUTE, None) is not None:
            raise ValueError("FastAV is already installed on this model; call uninstall() first")
        kernel = self._original_attn or "eager"
        text_model.config._attn_implementation = register_scored_attention(kernel)
        self._hooks.append(text_model.register_forward_pre_hook(self._before_decoder, with_kwargs=True))
        self._hooks.append(text_model.register_forward_hook(self._after_decoder))
        for layer_idx, layer in enumerate(text_model.layers):
            setattr(layer.self_attn, SINK_ATTRIBUTE, self._sink)
            hook = functools.partial(self._before_layer, layer_idx)
            self._hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        if callable(getattr(text_model, DEEPSTACK_METHOD, None)):
            setattr(text_model, DEEPSTACK_METHOD, self._kept_deepstack(getattr(text_model, DEEPSTACK_METHOD)))
        setattr(text_model, ENGINE_ATTRIBUTE, self)
        logger.info(
            "FastAV installed on %s (%d layers, attention %s, transformers %s): %s",
            type(text_model).__name__,
            self.num_layers,
            kernel,
            transformers.__version__,
            self.config.describe(),
        )

    def uninstall(self) -> None:
        """Remove the hooks and restore the attention implementation."""
        if not self._hooks:
            return
        text_model = self.text_model
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for layer in text_model.layers:
            delattr(layer.self_attn, SINK_ATTRIBUTE)
        text_model.config._attn_implementation = self._original_attn
        if DEEPSTACK_METHOD in vars(text_model):  # the instance wrapper; the class's method shows again
            delattr(text_model, DEEPSTACK_METHOD)
        delattr(text_model, ENGINE_ATTRIBUTE)

    def _kept_deepstack(self, deepstack: Any) -> Any:
        """``deepstack(hidden [B, L_k, D], visual_pos_masks [B, L], features [N, D])`` as the stock method, with the
        mask and the feature rows taken at the positions the layer just run kept (``features`` holds one row per
        visual position, in row-major order of the mask)."""

        def kept(hidden: torch.Tensor, visual_pos_masks: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
            run = self._run
            if isinstance(run, _Prefill) and hidden.shape[1] != visual_pos_masks.shape[1]:
                plan = run.plan
                visual = visual_pos_masks.to(plan.positions.device)
                rank = (visual.flatten().long().cumsum(0) - 1).view(visual.shape)  # each visual position's row
                visual_pos_masks = visual.gather(1, plan.positions) & plan.valid
                features = features[rank.gather(1, plan.positions)[visual_pos_masks].to(features.device)]
            return deepstack(hidden, visual_pos_masks, features)

        return kept

    @contextmanager
    def layout(self, layout: ModalityLayout, samples: Sequence[SampleInfo] | None = None) -> Iterator[FastAVDecoder]:
        """Prune every fresh prefill run inside this block with ``layout`` (``[B, L]``, the prompt); ``samples``
        (one :class:`SampleInfo` per row) reach the chooser's context."""
        if samples is not None and len(samples) != layout.batch_size:
            raise ValueError(f"{len(samples)} samples for a layout of batch {layout.batch_size}; give one per row")
        previous = self._layout, self._samples, self._pruned_under_layout
        self._layout, self._pruned_under_layout = layout, False
        self._samples = None if samples is None else tuple(samples)
        try:
            yield self
        finally:
            self._layout, self._samples, self._pruned_under_layout = previous

    # ------------------------------------------------------------------ hooks
    def _before_decoder(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        call = {**dict(zip(self.interface.decoder_parameters, args, strict=False)), **kwargs}
        for flag in OUTPUT_FLAGS:
            if call.get(flag, getattr(module.config, flag, False)):
                raise ValueError(f"{flag}=True is not supported while FastAV is installed (layers differ in length)")
        attention_mask = call.get("attention_mask")
        if isinstance(attention_mask, dict):
            raise ValueError("precomputed mask dicts (static caches, torch.compile) are not supported with FastAV")
        self._attention_mask = attention_mask
        self._caller_keywords = frozenset(kwargs)
        self._run = None

    def _before_layer(
        self, layer_idx: int, _layer: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        if layer_idx == 0:
            self._run = self._start(args, kwargs)
        run = self._run
        if run is None:
            return None
        if isinstance(run, _Prefill):
            return self._prefill_layer(run, layer_idx, args, kwargs)
        return self._cached_layer(run, layer_idx, args, kwargs)

    def _after_decoder(self, _module: nn.Module, _args: tuple, _output: Any) -> None:
        run, self._run, self._attention_mask = self._run, None, None
        self._sink.request(None)
        if isinstance(run, _Prefill):
            self.last_stats = run.plan.stats()
            self._pruned_under_layout = True
            if run.cache is not None and run.use_cache:
                plan = run.plan
                self._decode_states[run.cache] = _DecodeState(plan.layout.length, run.kv_valid, plan.prompt_valid)

    # ------------------------------------------------------------------ what a forward is
    def _start(self, args: tuple, kwargs: dict[str, Any]) -> _Prefill | _OverCache | None:
        """Decide, before layer 0 runs, what the forward in progress does."""
        self.interface.check_layer_call(kwargs, passed_by_caller=self._caller_keywords)
        self._sink.request(None)
        hidden = _hidden(args, kwargs)
        cache = kwargs.get(self.interface.cache_name)
        if cache is not None and not isinstance(cache, DynamicCache):
            raise ValueError(
                f"{self.interface.cache_name}={type(cache).__name__}; accepted: DynamicCache or None "
                "(pruned layers hold caches of different lengths)"
            )
        batch, length = hidden.shape[:2]
        past_length = cache.get_seq_length() if cache is not None else 0
        layout = self._layout
        if past_length == 0:
            self.last_stats = None
            if cache is not None:  # a cache filled afresh (reset, or reused): what it held before is gone
                self._decode_states.pop(cache, None)
            if layout is None:
                return None
            self._check_prefill(layout, batch, length)
            layout = layout.to(hidden.device)
            mask = self._attention_mask
            layout.check_padding(None if mask is None else mask[:, :length])
            plan = PrefillPlan(layout, self.config, self.num_layers, self._samples)
            # Qwen3-Omni's decoder does not pass use_cache to its layers; it makes a cache only when asked to use one.
            use_cache = bool(kwargs["use_cache"]) if "use_cache" in kwargs else cache is not None
            return _Prefill(plan, cache, use_cache)
        state = self._decode_states.get(cache)
        if state is None:
            if len({cache.get_seq_length(i) for i in range(len(cache.layers))}) > 1:
                raise ValueError("this cache holds pruned layers from a prefill another FastAV engine ran")
            if layout is not None:
                raise ValueError(
                    f"a layout is set, but this forward continues a cache of {past_length} tokens that FastAV did "
                    "not prune; FastAV prunes fresh prefills only (pass an empty cache or none)"
                )
            return None
        if not state.pruned:
            return None
        return _OverCache(state, cache, self._attention_mask)

    def _check_prefill(self, layout: ModalityLayout, batch: int, length: int) -> None:
        if (layout.batch_size, layout.length) == (batch, length):
            return
        if self._pruned_under_layout:
            raise ValueError(
                f"a forward of [{batch}, {length}] tokens arrived with no KV cache after a pruned prefill of "
                f"[{layout.batch_size}, {layout.length}]; FastAV refuses to run it as a fresh prefill (generate with "
                "use_cache=True; if it did, this transformers passes the cache in a way the engine does not read)"
            )
        raise ValueError(
            f"layout is [{layout.batch_size}, {layout.length}] but the prefill input is [{batch}, {length}]; "
            "FastAV prunes the prompt's prefill once, so generate with use_cache=True and without "
            "assisted or prompt-lookup decoding"
        )

    # ------------------------------------------------------------------ per layer
    def _prefill_layer(
        self, run: _Prefill, layer_idx: int, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        plan = run.plan
        hidden = _hidden(args, kwargs)
        index = plan.step(layer_idx, self._sink.take(), hidden if self.config.chooser is not None else None)
        if index is not None:
            hidden = _gather(hidden, index)
            cos, sin = run.position_embeddings or kwargs["position_embeddings"]
            run.position_embeddings = (_gather(cos, index), _gather(sin, index))
            key_valid = None if bool(plan.valid.all()) else plan.valid
            run.mask = _causal_mask(self.text_model.config, hidden, key_valid, run.cache, layer_idx)
        run.kv_valid.append(plan.valid)
        self._sink.request(layer_idx if plan.needs_scores(layer_idx) else None)
        if run.position_embeddings is None:  # nothing dropped yet: the stock inputs are right
            return None
        # Kept positions are no longer contiguous: masks and FlashAttention must not read them as packing.
        changed = {"attention_mask": run.mask, "position_ids": None, "position_embeddings": run.position_embeddings}
        return _with_hidden(args, {**kwargs, **changed}, hidden)

    def _cached_layer(
        self, run: _OverCache, layer_idx: int, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        state = run.state
        prompt_valid = state.kv_valid[layer_idx]
        if prompt_valid is state.whole:  # this layer holds the whole prompt: the stock mask is right
            return None
        key = id(prompt_valid)
        if key not in run.masks:
            hidden = _hidden(args, kwargs)
            key_valid = state.key_valid(layer_idx, run.cache, run.attention_mask, hidden.shape[1])
            # None: one new token that sees every key, which no kernel needs a mask for (the common decode step).
            mask = (
                None
                if key_valid is None
                else _causal_mask(self.text_model.config, hidden, key_valid, run.cache, layer_idx)
            )
            run.masks[key] = mask
        return args, {**kwargs, "attention_mask": run.masks[key], "position_ids": None}


@dataclass
class _Prefill:
    """A fresh prefill being pruned."""

    plan: PrefillPlan
    cache: Cache | None
    use_cache: bool
    kv_valid: list[torch.Tensor] = field(default_factory=list)  # per layer run so far, [B, L_i] bool
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None  # kept tokens' cos/sin, once pruned
    mask: Any = None  # the causal mask of the current segment, once pruned


@dataclass
class _OverCache:
    """A forward (decode step or continuation) over a cache this engine pruned."""

    state: _DecodeState
    cache: Cache
    attention_mask: torch.Tensor | None  # this forward's 2-D mask, [B, prompt + past new + new] or None
    masks: dict[int, Any] = field(default_factory=dict)  # one per distinct prompt key set


class _DecodeState:
    """Per-layer key validity of a pruned prompt, for the masks of later forwards over the same cache."""

    def __init__(self, prompt_length: int, kv_valid: list[torch.Tensor], whole: torch.Tensor) -> None:
        self.prompt_length = prompt_length
        self.kv_valid = kv_valid  # per layer [B, L_i] bool; layers of one segment share one tensor
        self.whole = whole  # the tensor of the layers that hold the whole prompt (no cut reached them)
        self.pruned = any(valid is not whole for valid in kv_valid)
        self._dense = {id(valid): bool(valid.all()) for valid in kv_valid}  # no padding or filler slot

    def key_valid(
        self, layer_idx: int, cache: Cache, attention_mask: torch.Tensor | None, new_tokens: int
    ) -> torch.Tensor | None:
        """``[B, L_i + past_new + new_tokens]`` key mask of layer ``layer_idx`` for the current forward, or None
        when every key is visible and one new token attends to all of them (no mask needed)."""
        prompt_valid = self.kv_valid[layer_idx]
        if attention_mask is None:
            if new_tokens == 1 and self._dense[id(prompt_valid)]:
                return None
            # Layer ``layer_idx`` has not stored this forward's tokens yet (layer 0 has): read its own length.
            cached_new = cache.get_seq_length(layer_idx) - prompt_valid.shape[1]
            shape = (prompt_valid.shape[0], cached_new + new_tokens)
            tail = torch.ones(shape, dtype=torch.bool, device=prompt_valid.device)
        else:
            tail = attention_mask[:, self.prompt_length :].bool()
        return torch.cat([prompt_valid, tail], dim=1)


def _hidden(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict[str, Any], hidden: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor [B', L, ...]`` gathered along dim 1 with ``index [B, L_new]`` (B' may be 1: broadcast)."""
    if tensor.shape[0] != index.shape[0]:
        tensor = tensor.expand(index.shape[0], *tensor.shape[1:])
    expanded = index.view(*index.shape, *([1] * (tensor.ndim - 2))).expand(*index.shape, *tensor.shape[2:])
    return tensor.gather(1, expanded)


def _causal_mask(
    config: Any, hidden: torch.Tensor, key_valid: torch.Tensor | None, cache: Cache | None, layer_idx: int
) -> Any:
    """Layer ``layer_idx``'s causal mask over its own cache (``key_valid [B, kv_len]`` bool or None: all valid).

    The cache is passed by position: transformers renamed that parameter (``past_key_values`` -> ``cache``), and
    :func:`~fastav_eval.pruning.compat.check_decoder_interface` checked the order at install.
    """
    return create_causal_mask(config, hidden, key_valid, cache, None, layer_idx=layer_idx)


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

"""What the engine expects of transformers, checked before it touches a model.

The engine hooks a stock text decoder (see :mod:`fastav_eval.pruning.decoder`): it reads the arguments the decoder
receives and replaces a few of those its layers receive. A transformers release that renames or adds one of them
(5.24 renamed ``past_key_values`` to ``cache``) would otherwise make the engine compute something else without a
word, so :func:`check_decoder_interface` compares the installed decoder with what the engine handles and raises
:class:`IncompatibleTransformersError` (naming the version, the argument and the tested range) on any difference.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import transformers
from torch import nn
from transformers.masking_utils import create_causal_mask

TESTED_TRANSFORMERS = ">=5.23,<5.26"
"""The transformers releases the engine was tested with (CI runs the oldest and the newest)."""

CACHE_NAMES = ("past_key_values", "cache")
"""How transformers has named the KV cache argument: ``past_key_values`` up to 5.23, ``cache`` from 5.24."""

DECODER_PARAMETERS = frozenset({"input_ids", "attention_mask", "position_ids", "inputs_embeds", "use_cache"})
"""The text model's forward parameters the engine handles (besides the cache and ``**kwargs``)."""

DEEPSTACK_METHOD = "_deepstack_process"
"""The text-model method that adds DeepStack features between layers (Qwen3-Omni): ``(hidden, visual_pos_masks,
features)``; the engine wraps it, so a decoder that has it may also take :data:`DEEPSTACK_PARAMETERS`."""

DEEPSTACK_PARAMETERS = frozenset({"visual_pos_masks", "deepstack_visual_embeds"})

LAYER_PARAMETERS = frozenset({"hidden_states", "attention_mask", "position_ids", "use_cache", "position_embeddings"})
"""The decoder layer's forward parameters the engine handles (besides the cache and ``**kwargs``)."""

LAYER_CALL_KEYWORDS = frozenset({"attention_mask", "position_ids", "use_cache", "position_embeddings"})
"""The keyword arguments the stock decoder passes each layer, besides the cache (checked on every forward)."""

MASK_PARAMETERS = ("config", "inputs_embeds", "attention_mask")
"""``create_causal_mask``'s leading positional parameters; the fourth is the cache, then ``position_ids``."""


def output_cache(output: Any) -> Any:
    """The KV cache of a model or ``generate`` output, whichever of :data:`CACHE_NAMES` the release uses."""
    return next((output[name] for name in CACHE_NAMES if name in output), None)


class IncompatibleTransformersError(RuntimeError):
    """The installed transformers speaks an interface the engine was not written for."""


def incompatible(what: str) -> IncompatibleTransformersError:
    return IncompatibleTransformersError(
        f"FastAV cannot run on transformers {transformers.__version__}: {what}. The engine was written for and "
        f"tested with transformers{TESTED_TRANSFORMERS}; install a tested release "
        f"(`pip install 'transformers{TESTED_TRANSFORMERS}'`) or a FastAV-Eval release that supports this one"
    )


@dataclass(frozen=True)
class DecoderInterface:
    """How the installed transformers calls a text decoder and its layers.

    Attributes:
        cache_name: the keyword that carries the KV cache into the decoder and each of its layers.
        decoder_parameters: the text model forward's named parameters, in order (positional calls are read by them).
    """

    cache_name: str
    decoder_parameters: tuple[str, ...]

    def check_layer_call(self, kwargs: Mapping[str, Any], passed_by_caller: frozenset[str] = frozenset()) -> None:
        """Raise if a layer is called with a keyword the engine does not handle (checked on every forward).

        Args:
            kwargs: the layer call's keyword arguments; those left unset (None or False) are not checked.
            passed_by_caller: the keywords the decoder itself was called with; an unknown keyword among them is
                the caller's (a ValueError), any other is the installed transformers' own.
        """
        given = {name for name, value in kwargs.items() if value is not None and value is not False}
        unknown = given - LAYER_CALL_KEYWORDS - {"hidden_states", self.cache_name}
        from_caller = sorted(unknown & passed_by_caller)
        if from_caller:
            raise ValueError(
                f"this forward passes {from_caller} through to the decoder layers, which FastAV does not handle "
                f"(while it is installed, a layer takes {sorted(LAYER_CALL_KEYWORDS | {self.cache_name})})"
            )
        if unknown:
            raise incompatible(f"its decoder calls each layer with {sorted(unknown)}, which the engine does not handle")


def _parameters(function: Callable[..., Any]) -> list[inspect.Parameter]:
    """Named parameters of ``function`` (decorators unwrapped), without ``self`` and ``**kwargs``."""
    return [
        parameter
        for name, parameter in inspect.signature(function).parameters.items()
        if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]


def _cache_name(owner: str, names: list[str], handled: frozenset[str]) -> str:
    unknown = [name for name in names if name not in handled and name not in CACHE_NAMES]
    if unknown:
        raise incompatible(f"{owner} takes {unknown}, which the engine does not handle")
    cache = [name for name in names if name in CACHE_NAMES]
    if len(cache) != 1:
        raise incompatible(f"{owner} takes the KV cache as {cache or 'nothing'}; expected one of {list(CACHE_NAMES)}")
    return cache[0]


def check_decoder_interface(text_model: nn.Module) -> DecoderInterface:
    """The interface of ``text_model`` (a ``Qwen2Model``-like decoder stack), or :class:`IncompatibleTransformersError`.

    Checks, without running anything: the stock forward's parameters, every layer's forward parameters, and the
    mask builder's signature are all ones the engine handles, and all name the cache alike.
    """
    decoder = f"{type(text_model).__name__}.forward"
    decoder_names = [parameter.name for parameter in _parameters(type(text_model).forward)]
    deepstack = callable(getattr(text_model, DEEPSTACK_METHOD, None))
    handled = DECODER_PARAMETERS | DEEPSTACK_PARAMETERS if deepstack else DECODER_PARAMETERS
    cache_name = _cache_name(decoder, decoder_names, handled)
    for layer_class in {type(layer) for layer in text_model.layers}:
        owner = f"{layer_class.__name__}.forward"
        layer_cache = _cache_name(owner, [p.name for p in _parameters(layer_class.forward)], LAYER_PARAMETERS)
        if layer_cache != cache_name:
            raise incompatible(f"{owner} takes the cache as {layer_cache!r} but {decoder} as {cache_name!r}")
    mask_names = [parameter.name for parameter in _parameters(create_causal_mask)]
    expected = [*MASK_PARAMETERS, cache_name, "position_ids"]
    if mask_names[: len(expected)] != expected or "layer_idx" not in mask_names:
        raise incompatible(f"create_causal_mask takes {mask_names}; expected {expected} first and a layer_idx")
    return DecoderInterface(cache_name=cache_name, decoder_parameters=tuple(decoder_names))

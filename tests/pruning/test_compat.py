"""The engine refuses a transformers it was not written for, before touching the model or at the first forward.

A second transformers install is not needed: each test simulates one kind of drift on the installed release (an
unknown parameter in the decoder's or a layer's forward, an unknown keyword in the layer call, a cache that does
not reach the layers) and checks that the engine raises instead of computing something else.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
import transformers
from transformers import DynamicCache
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2Model

from fastav_eval.pruning import ModalityLayout, PruningConfig, PruningProfile, install
from fastav_eval.pruning.compat import TESTED_TRANSFORMERS, IncompatibleTransformersError, check_decoder_interface
from tests.conftest import CACHE_NAME, VOCAB, tiny_qwen2, with_cache

LAYOUT = ModalityLayout.from_segments([[("text", 3), ("video", 8), ("audio", 12), ("text", 3)]])
CONFIG = PruningConfig(global_layer=3, profile=PruningProfile.prefix(audio=4), fine_ratio=0.3, sink_tokens=1)


def names_version_argument_and_range(argument: str) -> str:
    return rf"transformers {re.escape(transformers.__version__)}.*{argument}.*{re.escape(TESTED_TRANSFORMERS)}"


def input_ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (1, LAYOUT.length), generator=torch.Generator().manual_seed(0))


def test_the_installed_release_speaks_the_tested_interface():
    interface = check_decoder_interface(tiny_qwen2().model)
    assert interface.cache_name == CACHE_NAME
    assert interface.decoder_parameters[:3] == ("input_ids", "attention_mask", "position_ids")


def drifted(cls: type, *parameters: str) -> type:
    """A subclass of ``cls`` whose forward takes exactly ``parameters`` (and ``**kwargs``): a simulated release."""

    def forward(self, *args, **kwargs):
        raise AssertionError("a refused decoder must never run")

    forward.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in ("self", *parameters)]
        + [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    )
    return type(f"Drifted{cls.__name__}", (cls,), {"forward": forward})


DECODER = ("input_ids", "attention_mask", "position_ids", CACHE_NAME, "inputs_embeds", "use_cache")
LAYER = ("hidden_states", "attention_mask", "position_ids", CACHE_NAME, "use_cache", "position_embeddings")


@pytest.mark.parametrize(
    ("decoder", "layer", "argument"),
    [
        ((*DECODER, "packed_lengths"), LAYER, "packed_lengths"),  # a new decoder argument
        (DECODER, (*LAYER, "layer_scale"), "layer_scale"),  # a new layer argument
        (tuple(n if n != CACHE_NAME else "kv_store" for n in DECODER), LAYER, "kv_store"),  # the cache renamed again
    ],
    ids=["decoder", "layer", "cache_renamed"],
)
def test_install_refuses_a_decoder_it_was_not_written_for(decoder, layer, argument):
    model = tiny_qwen2()
    model.model.__class__ = drifted(Qwen2Model, *decoder)
    for block in model.model.layers:
        block.__class__ = drifted(Qwen2DecoderLayer, *layer)
    with pytest.raises(IncompatibleTransformersError, match=names_version_argument_and_range(argument)):
        install(model, CONFIG)
    # Refused before touching the model: stock attention, no hooks.
    assert model.config._attn_implementation == "sdpa"
    assert not model.model._forward_pre_hooks and not model.model.layers[0]._forward_pre_hooks


def test_install_accepts_the_simulated_decoder_without_drift():
    """The simulation itself is sound: the same classes with the tested parameters install."""
    model = tiny_qwen2()
    model.model.__class__ = drifted(Qwen2Model, *DECODER)
    for block in model.model.layers:
        block.__class__ = drifted(Qwen2DecoderLayer, *LAYER)
    install(model, CONFIG).uninstall()


def test_a_layer_called_with_an_unknown_keyword_is_refused_at_the_first_forward():
    model = tiny_qwen2()
    engine = install(model, CONFIG)

    def new_keyword(_module, args, kwargs):
        return args, {**kwargs, "token_type_ids": torch.zeros(1, LAYOUT.length, dtype=torch.long)}

    model.model.layers[0].register_forward_pre_hook(new_keyword, with_kwargs=True, prepend=True)
    with pytest.raises(IncompatibleTransformersError, match=names_version_argument_and_range("token_type_ids")):
        model(input_ids())
    engine.uninstall()


@pytest.mark.parametrize("lost_cache", ["none", "fresh"])
def test_a_decode_step_without_the_pruned_cache_is_an_error_not_a_fresh_prefill(lost_cache):
    """transformers 5.24's failure: the cache never reached the engine, so each decode step ran as a prefill."""
    model = tiny_qwen2()
    engine = install(model, CONFIG)

    def drop_cache_on_decode(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] == 1:
            kwargs = {**kwargs, CACHE_NAME: None if lost_cache == "none" else DynamicCache(config=model.config)}
        return args, kwargs

    model.model.layers[0].register_forward_pre_hook(drop_cache_on_decode, with_kwargs=True, prepend=True)
    with (
        engine.layout(LAYOUT),
        pytest.raises(
            ValueError, match=r"\[1, 1\] tokens arrived with no KV cache after a pruned prefill of \[1, 26\]"
        ),
    ):
        model.generate(input_ids(), max_new_tokens=3, do_sample=False)
    engine.uninstall()


def test_a_decode_step_over_a_cache_the_engine_did_not_prune_is_an_error():
    model = tiny_qwen2()
    ids = input_ids()
    cache = DynamicCache(config=model.config)
    model(ids, **with_cache(cache))  # prefilled by the stock model
    engine = install(model, CONFIG)
    with (
        engine.layout(LAYOUT),
        pytest.raises(ValueError, match="continues a cache of 26 tokens that FastAV did not prune"),
    ):
        model(ids[:, -1:], **with_cache(cache))
    engine.uninstall()


def test_generate_without_a_cache_under_a_layout_is_refused():
    model = tiny_qwen2()
    engine = install(model, CONFIG)
    with engine.layout(LAYOUT), pytest.raises(ValueError, match=r"\[1, 27\] tokens arrived with no KV cache"):
        model.generate(input_ids(), max_new_tokens=3, do_sample=False, use_cache=False)
    engine.uninstall()


def test_keywords_a_caller_passes_through_are_refused_as_the_callers_and_unset_flags_pass():
    model = tiny_qwen2()
    ids = input_ids()
    stock = model(ids).logits
    engine = install(model, CONFIG)
    assert torch.equal(model(ids, output_attentions=False, output_hidden_states=None).logits, stock)
    with pytest.raises(ValueError, match=r"this forward passes \['cache_position'\] through to the decoder layers"):
        model(ids, cache_position=torch.arange(LAYOUT.length))
    model.config.output_hidden_states = True
    with pytest.raises(ValueError, match=r"output_hidden_states=True is not supported"):
        model(ids)
    model.config.output_hidden_states = False
    engine.uninstall()


def test_a_cache_filled_afresh_forgets_its_pruning():
    """A pruned cache, reset and refilled by a stock prefill, decodes like the stock model (no stale masks)."""
    model = tiny_qwen2()
    ids, other, step = input_ids(), input_ids()[:, :20].flip(1), input_ids()[:, :1]
    expected_cache = DynamicCache(config=model.config)
    model(other, **with_cache(expected_cache))
    expected = model(step, attention_mask=torch.ones(1, 21), **with_cache(expected_cache)).logits
    engine = install(model, CONFIG)
    cache = DynamicCache(config=model.config)
    with engine.layout(LAYOUT):
        model(ids, **with_cache(cache))
    cache.reset()
    model(other, attention_mask=torch.ones(1, 20), **with_cache(cache))
    ours = model(step, attention_mask=torch.ones(1, 21), **with_cache(cache)).logits
    engine.uninstall()
    assert torch.allclose(ours, expected, atol=1e-6)

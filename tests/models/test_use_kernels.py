"""``use_kernels``: every loader states it to ``from_pretrained`` itself (transformers 5.25 turns hub kernels on when
it is not given), off by default, and the testbed, which no ``from_pretrained`` loads, refuses it."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from transformers.modeling_utils import PreTrainedModel

from fastav_eval.models.base import ModelAdapter
from fastav_eval.models.qwen2_5_omni import Qwen25OmniAdapter
from fastav_eval.models.testbed import TestbedAdapter as AVSynthAdapter
from fastav_eval.models.videollama2 import VideoLLaMA2Adapter
from tests.models.omni_fixtures import save_checkpoint, tiny_processor
from tests.models.videollama2_fixtures import tiny_adapter

ABSENT = "<not given>"


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, Any]]:
    """Every ``from_pretrained`` of a model during the test: (class name, the ``use_kernels`` it was given)."""
    calls: list[tuple[str, Any]] = []
    original = PreTrainedModel.from_pretrained.__func__

    def spy(cls, *args: Any, **kwargs: Any) -> Any:
        calls.append((cls.__name__, kwargs.get("use_kernels", ABSENT)))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(spy))
    return calls


@pytest.mark.parametrize("adapter_class", [AVSynthAdapter, Qwen25OmniAdapter, VideoLLaMA2Adapter])
def test_every_adapter_declares_use_kernels_off_by_default(adapter_class: type[ModelAdapter]):
    assert adapter_class.model_args["use_kernels"] is ModelAdapter.model_args["use_kernels"]
    assert adapter_class.model_args["use_kernels"].default is False


@pytest.mark.parametrize("given", [None, False, True])
def test_videollama2_states_use_kernels_to_both_of_its_models(loads, given):
    options = {} if given is None else {"use_kernels": given}
    if given:
        # hub kernels are not reachable here: whatever happens after the call, the value must have been passed
        with contextlib.suppress(Exception):  # kernelize may fail offline or on CPU; only the call is checked
            tiny_adapter(**options)
    else:
        assert tiny_adapter(**options).use_kernels is False
    expected = bool(given)
    assert loads[:1] == [("Qwen2ForCausalLM", expected)], loads
    if not given:
        assert loads == [("Qwen2ForCausalLM", False), ("SiglipVisionModel", False)], loads


def test_qwen2_5_omni_states_use_kernels(loads, tmp_path, monkeypatch):
    monkeypatch.setattr(Qwen25OmniAdapter, "load_processor", staticmethod(lambda pretrained: tiny_processor()))
    checkpoint = save_checkpoint(tmp_path / "checkpoint")
    loads.clear()
    adapter = Qwen25OmniAdapter(str(checkpoint), "cpu", torch.float32, "sdpa")
    assert adapter.use_kernels is False
    assert loads == [("Qwen2_5OmniThinkerForConditionalGeneration", False)], loads


def test_the_testbed_refuses_hub_kernels():
    assert AVSynthAdapter().use_kernels is False
    with pytest.raises(ValueError, match=r"use_kernels=True: the testbed .*accepted: false"):
        AVSynthAdapter(use_kernels=True)
    with pytest.raises(ValueError, match=r"use_kernels='yes'; accepted: a bool"):
        AVSynthAdapter(use_kernels="yes")

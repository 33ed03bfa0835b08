"""The model registry reaches every consumer: each name is an lmms-eval model serving the registry's adapter, the RL
environments build each, the entry point stays import-light, and the generated classes behave as classes."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch

from fastav_eval.envs.samples import build_adapter as env_build_adapter
from fastav_eval.lmms.registry import WRAPPER_MODULE, WRAPPERS, manifests, wrapper_name
from fastav_eval.models import testbed
from fastav_eval.models.base import ModelAdapter
from fastav_eval.models.registry import MODELS, adapter_class, build_adapter

pytest.importorskip("lmms_eval")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_is_an_lmms_eval_model_with_the_registrys_adapter(name: str):
    from lmms_eval.models import get_model

    from fastav_eval.lmms.models import wrapper_class

    model_class = get_model(name)
    assert model_class.adapter_class is adapter_class(name)
    assert model_class.model_name == name
    assert model_class is wrapper_class(name)
    assert (model_class.__module__, model_class.__qualname__) == (WRAPPER_MODULE, wrapper_name(name))
    assert pickle.loads(pickle.dumps(model_class)) is model_class


def test_the_class_names_are_those_of_the_former_registrations():
    expected = {
        "FastAVTiny",
        "FastAVQwen25Omni",
        "FastAVQwen3Omni",
        "FastAVVideoLLaMA2",
        "FastAVVideoSALMONN2",
        "FastAVVideoSALMONN2Plus",
    }
    assert {wrapper_name(name) for name in MODELS} == expected
    assert len(WRAPPERS) == len(MODELS), "two models would share one class name"
    assert {manifest.model_id for manifest in manifests()} == set(MODELS)


def test_an_unknown_name_is_named_with_the_accepted_ones():
    from fastav_eval.lmms import models

    with pytest.raises(ValueError, match=r"model='fastav_huge'; accepted: \['fastav_qwen2_5_omni', "):
        adapter_class("fastav_huge")
    with pytest.raises(AttributeError, match="FastAVHuge"):
        models.FastAVHuge  # noqa: B018
    with pytest.raises(ValueError, match="model='fastav_huge'"):
        env_build_adapter("fastav_huge")


def test_the_entry_point_imports_no_torch():
    """lmms-eval imports the entry point on every ``import lmms_eval.models``; a failure there drops every plugin."""
    code = (
        "import sys; import fastav_eval.lmms.registry as r; r.manifests(); "
        "print(sorted(m for m in ('torch', 'transformers', 'fastav_eval.models.base') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_envs_build_the_testbed():
    adapter = env_build_adapter("fastav_tiny", "senses=audio")
    assert isinstance(adapter, testbed.TestbedAdapter) and adapter.options["senses"] == "audio"
    assert adapter.device == torch.device("cpu")


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"fastav_tiny"}))
def test_the_envs_build_every_registered_model(name: str, monkeypatch: pytest.MonkeyPatch):
    """The large models are not loaded: their adapter's ``__init__`` records what the registry passes it."""
    loaded: dict = {}

    def record(self, pretrained, device, dtype, attn_implementation, **model_args) -> None:
        loaded.update(pretrained=pretrained, device=device, dtype=dtype, attn=attn_implementation, args=model_args)

    cls = adapter_class(name)
    monkeypatch.setattr(cls, "__init__", record)
    assert isinstance(env_build_adapter(name, "use_kernels=false"), cls)
    default_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cls.default_dtype]
    assert loaded == {"pretrained": cls.default_pretrained, "device": "cpu", "dtype": default_dtype, "attn": "sdpa",
                      "args": {"use_kernels": False}}  # fmt: skip


def test_build_adapter_refuses_what_loading_does_not_read():
    with pytest.raises(ValueError, match=r"model_args \['prune'\] are not read when loading fastav_tiny"):
        build_adapter("fastav_tiny", {"prune": "none"})
    with pytest.raises(ValueError, match=r"dtype='float64'; accepted: \['float32', 'bfloat16', 'float16'\]"):
        build_adapter("fastav_tiny", {"dtype": "float64"})
    assert isinstance(build_adapter("fastav_tiny"), ModelAdapter)
    loaded = build_adapter(adapter_class("fastav_tiny"))  # the class an lmms-eval class carries, as the wrapper does
    assert type(loaded) is adapter_class("fastav_tiny")
    with pytest.raises(ValueError, match=r"model_args \['prune'\] are not read when loading TestbedAdapter"):
        build_adapter(adapter_class("fastav_tiny"), {"prune": "none"})

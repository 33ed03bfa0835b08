"""The model registry: every model FastAV-Eval evaluates, by its lmms-eval name, and the one way to build its adapter.

:data:`MODELS` is the one table (name -> adapter class path); everything else is read from the adapter class
itself (``default_pretrained``, ``default_dtype``, ``model_args``). The lmms-eval registrations
(:mod:`fastav_eval.lmms.models`), the RL environments, ``fastav-eval sweep`` and ``calibrate`` all read it. Adding
a model is one adapter file under ``fastav_eval/models/`` and one line here.

Import-light by design: lmms-eval's entry point (:mod:`fastav_eval.lmms.registry`) reads :data:`MODELS` on every
``import lmms_eval.models``, so nothing heavier than the standard library is imported at module level (adapters
and the ``--model_args`` parser are imported when first asked for).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastav_eval.models.base import ModelAdapter

MODELS: dict[str, str] = {
    "fastav_tiny": "fastav_eval.models.testbed.TestbedAdapter",
    "fastav_qwen2_5_omni": "fastav_eval.models.qwen2_5_omni.Qwen25OmniAdapter",
    "fastav_qwen3_omni": "fastav_eval.models.qwen3_omni.Qwen3OmniAdapter",
    "fastav_videollama2": "fastav_eval.models.videollama2.VideoLLaMA2Adapter",
    "fastav_video_salmonn2": "fastav_eval.models.video_salmonn2.VideoSALMONN2Adapter",
    "fastav_video_salmonn2_plus": "fastav_eval.models.video_salmonn2_plus.VideoSALMONN2PlusAdapter",
}
"""lmms-eval model name -> its adapter class (``module.Class``, imported on first use)."""

LOAD_ARGS = ("pretrained", "device", "dtype", "attn_implementation")
"""The ``--model_args`` keys every adapter is loaded with (beside its own ``model_args``)."""
DEFAULT_DEVICE = "cpu"
DEFAULT_ATTN_IMPLEMENTATION = "sdpa"


def adapter_class(name: str) -> type[ModelAdapter]:
    """The adapter class of the registered model ``name`` (its module imported now)."""
    if name not in MODELS:
        raise ValueError(f"model={name!r}; accepted: {sorted(MODELS)}")
    module_name, class_name = MODELS[name].rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)


def any_model_kinds() -> dict[str, str]:
    """Every ``--model_args`` key some registered model accepts -> its kind (for a caller that does not know the
    model yet); a key two adapters declare with different kinds is an error here, since one text could not serve
    both."""
    from fastav_eval.models.model_args import arg_kinds

    kinds = arg_kinds(None)
    for name in MODELS:
        for key, kind in arg_kinds(adapter_class(name)).items():
            if kinds.setdefault(key, kind) != kind:
                raise ValueError(f"--model_args key {key} is declared as {kinds[key]} and {kind} by two adapters")
    return kinds


def build_adapter(model: str | type[ModelAdapter], args: Mapping[str, Any] | None = None) -> ModelAdapter:
    """The adapter of ``model``, loaded: the one place an adapter is constructed.

    Args:
        model: a key of :data:`MODELS` (``fastav_tiny``, ...), or an adapter class (what an lmms-eval class
            carries as ``adapter_class``, so a subclass that names its own adapter loads that one).
        args: typed ``--model_args`` values (as :mod:`fastav_eval.models.model_args` reads them): any of
            :data:`LOAD_ARGS` and the adapter's own keys. Missing ones take the defaults: ``pretrained`` the
            adapter's ``default_pretrained``, ``device`` cpu, ``dtype`` the adapter's ``default_dtype``,
            ``attn_implementation`` sdpa. Any other key is a ValueError.
    """
    from fastav_eval.models.model_args import DTYPES

    adapter = model if isinstance(model, type) else adapter_class(model)
    label = adapter.__name__ if isinstance(model, type) else model
    given = dict(args or {})
    accepted = {*LOAD_ARGS, *adapter.model_args}
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise ValueError(f"model_args {unknown} are not read when loading {label}; accepted: {sorted(accepted)}")
    dtype = given.pop("dtype", None) or adapter.default_dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; accepted: {list(DTYPES)}")
    return adapter(
        given.pop("pretrained", None) or adapter.default_pretrained,
        given.pop("device", None) or DEFAULT_DEVICE,
        DTYPES[dtype],
        given.pop("attn_implementation", None) or DEFAULT_ATTN_IMPLEMENTATION,
        **given,
    )

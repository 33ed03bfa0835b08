"""The ``lmms_eval.models`` entry point. Imported by every ``import lmms_eval.models``: keep it import-light and
free of exceptions (a failure here silently drops every plugin model).

The names come from :data:`fastav_eval.models.registry.MODELS` (imported without torch); each names a class of
:mod:`fastav_eval.lmms.models`, made there on first use.
"""

from __future__ import annotations

from fastav_eval.models.registry import MODELS

WRAPPER_MODULE = "fastav_eval.lmms.models"


def wrapper_name(model: str) -> str:
    """The lmms-eval class name of the registered model ``model``: ``FastAV`` and the family as its adapter class
    spells it when the model name says the same (``fastav_videollama2`` -> ``FastAVVideoLLaMA2``,
    ``fastav_qwen2_5_omni`` -> ``FastAVQwen25Omni``), else the name's words capitalised (``fastav_tiny`` ->
    ``FastAVTiny``)."""
    words = model.removeprefix("fastav_").split("_")
    family = MODELS[model].rsplit(".", 1)[-1].removesuffix("Adapter")
    if family.lower() == "".join(words).lower():
        return f"FastAV{family}"
    return "FastAV" + "".join(word[:1].upper() + word[1:] for word in words)


WRAPPERS: dict[str, str] = {wrapper_name(model): model for model in MODELS}
"""Class name in :mod:`fastav_eval.lmms.models` -> the lmms-eval model name it serves."""


def manifests() -> list:
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=model, simple_class_path=f"{WRAPPER_MODULE}.{name}") for name, model in WRAPPERS.items()
    ]

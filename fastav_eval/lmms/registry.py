"""The ``lmms_eval.models`` entry point. Imported by every ``import lmms_eval.models``: keep it import-light and
free of exceptions (a failure here silently drops every plugin model)."""

from __future__ import annotations

MODELS = {
    "fastav_tiny": "fastav_eval.lmms.fastav_tiny.FastAVTiny",
    "fastav_qwen2_5_omni": "fastav_eval.lmms.fastav_qwen2_5_omni.FastAVQwen25Omni",
    "fastav_videollama2": "fastav_eval.lmms.fastav_videollama2.FastAVVideoLLaMA2",
}


def manifests() -> list:
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=path) for name, path in MODELS.items()]

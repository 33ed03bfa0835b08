"""Model adapters: each one only *describes* a model family to the wrapper and the engine.

The interface is :class:`ModelAdapter` (``base.py``); ``testbed.py``, ``qwen2_5_omni.py`` and ``videollama2.py``
implement it, ``media.py`` holds the video / audio decoding they share, ``registry.py`` names every model (one line
each) and builds its adapter, and ``model_args.py`` reads ``--model_args`` for every consumer. Adapters are imported
by their own module (loading one family's code never loads another's).

Importing this package imports nothing else: lmms-eval's entry point reads :mod:`fastav_eval.models.registry` on
every ``import lmms_eval.models``, so the interface's names below are loaded (with torch) on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastav_eval.models.base import AdapterArg, Answer, ModelAdapter, ModelInputs, Request, SampleError

__all__ = ["AdapterArg", "Answer", "ModelAdapter", "ModelInputs", "Request", "SampleError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("fastav_eval.models.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

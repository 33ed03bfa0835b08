"""Model adapters: each one only *describes* a model family to the wrapper and the engine.

The interface is :class:`ModelAdapter` (``base.py``); ``testbed.py`` and ``qwen2_5_omni.py`` implement it, and
``media.py`` holds the video / audio decoding they share. Adapters are imported by their own module (loading one
family's code never loads another's).
"""

from fastav_eval.models.base import AdapterArg, Answer, ModelAdapter, ModelInputs, Request, SampleError

__all__ = ["AdapterArg", "Answer", "ModelAdapter", "ModelInputs", "Request", "SampleError"]

"""The lmms-eval model classes, one per name of :data:`fastav_eval.models.registry.MODELS`, made on first use.

``lmms-eval --model fastav_tiny`` resolves (through the entry point :mod:`fastav_eval.lmms.registry`) to
``fastav_eval.lmms.models.FastAVTiny``; this module's ``__getattr__`` (PEP 562) makes that class, a
:class:`~fastav_eval.lmms.wrapper.FastAVLMM` with the model's name and adapter class, and keeps it as a module
attribute, so lmms-eval, ``from fastav_eval.lmms.models import FastAVTiny`` and pickle all find the same class.
Each model's own documentation is its adapter module's docstring.
"""

from __future__ import annotations

from fastav_eval.lmms.registry import WRAPPERS, wrapper_name
from fastav_eval.lmms.wrapper import FastAVLMM
from fastav_eval.models.registry import adapter_class

__all__ = sorted(WRAPPERS)


def wrapper_class(model: str) -> type[FastAVLMM]:
    """The lmms-eval class of the registered model ``model`` (``fastav_tiny``, ...)."""
    adapter_class(model)  # a name the registry does not hold: its ValueError naming the accepted ones
    name = wrapper_name(model)
    return globals().get(name) or __getattr__(name)


def __getattr__(name: str) -> type[FastAVLMM]:
    """The class ``name`` of :data:`WRAPPERS`, made now (PEP 562: asked only for a name the module lacks)."""
    if name not in WRAPPERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    model = WRAPPERS[name]
    adapter = adapter_class(model)
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"``lmms-eval --model {model}``: {adapter.__module__}.{adapter.__qualname__} under the FastAV "
        "engine.",
        "model_name": model,
        "adapter_class": adapter,
    }
    # Later lookups find the attribute, not this hook; setdefault keeps the first class if two threads race here.
    return globals().setdefault(name, type(name, (FastAVLMM,), namespace))


def __dir__() -> list[str]:
    return sorted({*globals(), *WRAPPERS})

"""Where a wrapper's run record goes: next to lmms-eval's results JSON, which the model is never told about.

lmms-eval 0.7.3 writes ``<output_path>/<model_name_sanitized>/<date>_results.json`` after ``lm.clean()``, from
two locals of ``simple_evaluate`` (its ``EvaluationTracker`` and ``datetime_str``); nothing the model exposes
is copied into that file except ``throughput``. :func:`find_evaluation` reads those two locals from the calling
frames, so the wrapper can (1) fill lmms-eval's own ``model_name``, which it derives from a ``pretrained=``
substring of ``--model_args`` and leaves empty otherwise, and (2) write ``<date>_fastav.json`` beside the results.
The frame layout is lmms-eval's internals: it is checked when this module is imported, and a version without
those locals is refused.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lmms_eval
from lmms_eval import evaluator

from fastav_eval.records import RUN_SUFFIX, RunRecord

_SIMPLE_EVALUATE = inspect.unwrap(evaluator.simple_evaluate).__code__
if not {"evaluation_tracker", "datetime_str"} <= set(_SIMPLE_EVALUATE.co_varnames):
    raise ImportError(
        f"lmms-eval {getattr(lmms_eval, '__version__', '?')}: simple_evaluate has no evaluation_tracker / "
        "datetime_str locals, which the FastAV wrappers read to write their run record beside the results JSON; "
        "FastAV-Eval is tested with lmms-eval==0.7.3"
    )


@dataclass(frozen=True)
class Evaluation:
    """The lmms-eval run this process is inside: its tracker (may be None) and the results file's date."""

    tracker: Any
    datetime_str: str

    def folder(self) -> Path | None:
        """The folder lmms-eval writes the results JSON to (None when it writes none: no ``--output_path``)."""
        if self.tracker is None or not getattr(self.tracker, "output_path", None):
            return None
        sanitized = self.tracker.general_config_tracker.model_name_sanitized or ""
        return Path(self.tracker.output_path) / sanitized

    def set_model_name(self, name: str) -> None:
        """Fill lmms-eval's ``model_name`` (and its sanitised folder name) when it derived none from the args."""
        from lmms_eval.utils import sanitize_model_name

        config = getattr(self.tracker, "general_config_tracker", None)
        if config is not None and not config.model_name:
            config.model_name, config.model_name_sanitized = name, sanitize_model_name(name)

    def write(self, record: RunRecord) -> Path | None:
        """Write ``<date>_fastav.json`` beside the results JSON; returns its path (None without an output path)."""
        folder = self.folder()
        if folder is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        return record.save(folder / f"{self.datetime_str.replace(':', '-')}{RUN_SUFFIX}")


def find_evaluation(frame: FrameType | None = None) -> Evaluation | None:
    """The enclosing ``simple_evaluate`` call's tracker and date, or None when not called from it."""
    frame = frame or inspect.currentframe()
    while frame is not None:
        if frame.f_code is _SIMPLE_EVALUATE:
            local = frame.f_locals
            return Evaluation(local.get("evaluation_tracker"), str(local.get("datetime_str")))
        frame = frame.f_back
    return None

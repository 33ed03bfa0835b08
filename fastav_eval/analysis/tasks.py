"""lmms-eval tasks and models outside an evaluation: the task objects behind names, and a wrapper built from args."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastav_eval.models.base import Request


@dataclass(frozen=True)
class TaskDocument:
    """One document of a task, as its model sees it: ``doc_to_visual``'s list and ``doc_to_text``'s prompt."""

    task: str
    doc_id: int
    visuals: list[Any]
    prompt: str

    @property
    def request(self) -> Request:
        return Request(list(self.visuals), self.prompt)


def quiet_lmms_eval() -> None:
    """lmms-eval's log (loguru) at WARNING: indexing its tasks otherwise prints hundreds of DEBUG lines."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def load_tasks(
    tasks: Sequence[str], model: str, include_paths: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Task name -> lmms-eval task object (groups expanded to their subtasks), and group name -> its config
    (``aggregate_metric_list`` says how lmms-eval combines the subtasks). FastAV-Eval's tasks are always included;
    ``model`` selects each task's ``lmms_eval_specific_kwargs`` prompts, as ``lmms-eval --model`` does."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    from fastav_eval.cli import tasks_path

    paths = [str(tasks_path()), *include_paths]
    quiet_lmms_eval()
    manager = TaskManager("WARNING", include_path=paths, model_name=model)
    missing = [name for name in tasks if name not in manager.all_tasks]
    if missing:
        raise ValueError(f"tasks {missing} are not lmms-eval tasks (include paths {paths}); see lmms-eval --tasks list")
    found: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}

    def flatten(entries: dict) -> None:
        for key, value in entries.items():
            if isinstance(value, dict):
                if hasattr(key, "config"):
                    groups[key.group_name] = dict(key.config)
                flatten(value)
            else:
                found[str(key)] = value

    flatten(get_task_dict(list(tasks), manager))
    return found, groups


def task_objects(tasks: Sequence[str], model: str, include_paths: Sequence[str] = ()) -> dict[str, Any]:
    """Task name -> lmms-eval task object, groups expanded to their subtasks (:func:`load_tasks`)."""
    return load_tasks(tasks, model, include_paths)[0]


def task_documents(tasks: dict[str, Any], limit: int | None) -> Iterator[TaskDocument]:
    """The first ``limit`` documents of each task (all with None), in task order."""
    for name, task in tasks.items():
        for doc_id, doc in enumerate(task.eval_docs):
            if limit is not None and doc_id >= limit:
                break
            yield TaskDocument(name, doc_id, list(task.doc_to_visual(doc) or []), task.doc_to_text(doc))


def model_class(model: str) -> Any:
    """The wrapper class of a FastAV lmms-eval model name (not instantiated)."""
    from lmms_eval.models import get_model

    from fastav_eval.lmms.registry import MODELS

    if model not in MODELS:
        raise ValueError(f"model={model!r} is not a FastAV wrapper; accepted: {sorted(MODELS)}")
    return get_model(model)


def build_model(model: str, model_args: str, device: str | None = None) -> Any:
    """The lmms-eval model ``model`` (a FastAV wrapper) from a ``--model_args`` string, as lmms-eval builds it."""
    return model_class(model).create_from_arg_string(model_args, {"batch_size": 1, "device": device})

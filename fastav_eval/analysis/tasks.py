"""lmms-eval tasks and models outside an evaluation: the task objects behind names, and a wrapper built from args."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastav_eval.models.base import Request
from fastav_eval.resources import tasks_path


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


FROM_LMMS_EVAL, FROM_PACKAGE, FROM_INCLUDE_PATH = "lmms-eval", "fastav-eval package", "--include_path"
TASK_ORIGINS = (FROM_LMMS_EVAL, FROM_PACKAGE, FROM_INCLUDE_PATH)
"""Where a task definition can come from; where two define one name, lmms-eval's index keeps the earlier one."""


@dataclass(frozen=True)
class TaskSource:
    """Where a task's definition (YAML, and the ``utils.py`` its ``!function`` tags name) was found.

    ``origin`` is one of :data:`TASK_ORIGINS` ("elsewhere" for a YAML outside their folders, e.g. reached through
    a symbolic link); ``path`` is the YAML (a subtask written inline in a group's YAML has its group's).
    """

    task: str
    path: str
    origin: str


def task_manager(model: str, include_paths: Sequence[str] = ()) -> Any:
    """lmms-eval's ``TaskManager`` over its own tasks, FastAV-Eval's ``tasks/`` and ``include_paths``, selecting
    ``model``'s ``lmms_eval_specific_kwargs`` prompts, as ``lmms-eval --model`` does. Indexing reads the YAMLs
    without resolving their ``!function`` tags (no task code is imported until a task is loaded)."""
    from lmms_eval.tasks import TaskManager

    quiet_lmms_eval()
    return TaskManager("WARNING", include_path=[str(tasks_path()), *map(str, include_paths)], model_name=model)


def task_source(manager: Any, task: str, include_paths: Sequence[str] = ()) -> TaskSource | None:
    """Where ``manager`` finds ``task`` (None when it does not know it, or knows it only as a tag)."""
    from lmms_eval import tasks as lmms_tasks

    entry = manager.task_index.get(task)
    if entry is None or not isinstance(entry.get("yaml_path"), str):
        return None
    path = Path(entry["yaml_path"]).resolve()
    roots = [(Path(lmms_tasks.__file__).parent, FROM_LMMS_EVAL), (tasks_path(), FROM_PACKAGE)]
    roots += [(Path(include), FROM_INCLUDE_PATH) for include in include_paths]
    for root, origin in roots:
        if path.is_relative_to(Path(root).resolve()):
            return TaskSource(task, str(path), origin)
    return TaskSource(task, str(path), "elsewhere")


RUNS_ITS_INPUT = {"eval", "exec", "compile", "__import__"}
"""Builtins that run a string as code: a task whose code calls them may run a submitted answer."""


def code_that_runs_strings(source: TaskSource) -> list[str]:
    """``file:line name(...)`` for each call of :data:`RUNS_ITS_INPUT` or ``pickle.load(s)`` in the Python files
    of the task's folder (for an lmms-eval task: its whole folder under ``lmms_eval/tasks/``). A static check of
    the files beside the YAML, not of everything they import: it catches the lmms-eval tasks that ``eval`` a
    model's answer or ``exec`` a generated program."""
    import ast

    from lmms_eval import tasks as lmms_tasks

    folder = Path(source.path).parent
    lmms_root = Path(lmms_tasks.__file__).resolve().parent
    if folder.is_relative_to(lmms_root) and folder != lmms_root:
        folder = lmms_root / folder.relative_to(lmms_root).parts[0]
    found = []
    for file in sorted(folder.rglob("*.py")):
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            found.append(f"{file}: not readable Python")
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            function = node.func
            if isinstance(function, ast.Name) and function.id in RUNS_ITS_INPUT:
                found.append(f"{file}:{node.lineno} {function.id}(...)")
            elif isinstance(function, ast.Attribute) and function.attr in {"load", "loads"}:
                owner = function.value
                if isinstance(owner, ast.Name) and owner.id in {"pickle", "dill", "cloudpickle", "joblib"}:
                    found.append(f"{file}:{node.lineno} {owner.id}.{function.attr}(...)")
    return found


def lmms_eval_folders_that_run_strings() -> list[str]:
    """The task folders of the installed lmms-eval that :func:`code_that_runs_strings` flags: their tasks are not
    run on a bundle's answers by ``verify`` (docs/analysis.md gives their number with the command that counts it)."""
    from lmms_eval import tasks as lmms_tasks

    root = Path(lmms_tasks.__file__).resolve().parent
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "__pycache__")
    return [f.name for f in folders if code_that_runs_strings(TaskSource(f.name, str(f / "task.yaml"), FROM_LMMS_EVAL))]


def load_tasks(
    tasks: Sequence[str], model: str, include_paths: Sequence[str] = (), manager: Any = None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Task name -> lmms-eval task object (groups expanded to their subtasks), and group name -> its config
    (``aggregate_metric_list`` says how lmms-eval combines the subtasks). FastAV-Eval's tasks are always included;
    ``model`` selects each task's ``lmms_eval_specific_kwargs`` prompts, as ``lmms-eval --model`` does.
    ``manager``: a :func:`task_manager` already built (then ``model`` and ``include_paths`` are its own)."""
    from lmms_eval.tasks import get_task_dict

    manager = manager if manager is not None else task_manager(model, include_paths)
    missing = [name for name in tasks if name not in manager.all_tasks]
    if missing:
        raise ValueError(
            f"tasks {missing} are not lmms-eval tasks (include paths {manager.include_path}); "
            "see lmms-eval --tasks list"
        )
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


def task_names(tasks: str, include_paths: Sequence[str] = ()) -> list[str]:
    """``--tasks a,b`` -> its names, and every ``--include_path`` a folder (``calibrate`` and ``sweep`` check their
    options with it before building anything)."""
    names = [name.strip() for name in tasks.split(",")]
    if not tasks.strip() or not all(names):
        raise ValueError(f"--tasks {tasks!r}; accepted: lmms-eval tasks or groups, comma-separated")
    for path in include_paths:
        if not Path(path).is_dir():
            raise ValueError(f"--include_path {path!r} is not a folder")
    return names


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

    from fastav_eval.models.registry import MODELS

    if model not in MODELS:
        raise ValueError(f"model={model!r} is not a FastAV wrapper; accepted: {sorted(MODELS)}")
    return get_model(model)


def build_model(model: str, model_args: str, device: str | None = None) -> Any:
    """The lmms-eval model ``model`` (a FastAV wrapper) from a ``--model_args`` string, as lmms-eval builds it."""
    return model_class(model).create_from_arg_string(model_args, {"batch_size": 1, "device": device})

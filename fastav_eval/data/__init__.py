"""The FastAV paper's benchmarks as local data: converters from each official release to the documents the
lmms-eval tasks in ``tasks/`` read, and the scoring those tasks use (:mod:`fastav_eval.data.scoring`).

``fastav-eval prepare-data <name> <download folder> [--annotations FILE] [--out DIR]`` calls :func:`prepare`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastav_eval.data import avhbench, avqa, music_avqa
from fastav_eval.data.common import DATA_ENV, Conversion, checked_video, data_root, read_prepared, write_prepared

CONVERTERS: dict[str, Callable[..., Conversion]] = {
    avhbench.NAME: avhbench.convert,
    music_avqa.NAME: music_avqa.convert,
    avqa.NAME: avqa.convert,
}
"""Dataset name -> converter ``(source, annotations=None, check_audio=True, allow_missing=False) -> Conversion``."""

__all__ = [
    "CONVERTERS",
    "DATA_ENV",
    "between_prompts",
    "checked_video",
    "data_root",
    "load_documents",
    "prepare",
    "task_documents",
]

PLACEHOLDER_FIELD = "fastav_eval_prepared"
"""The one field of a task folder's ``prepared.jsonl``: the dataset whose prepared documents replace it."""


def prepare(
    name: str,
    source: str | Path,
    out: str | Path | None = None,
    annotations: str | Path | None = None,
    check_audio: bool = True,
    allow_missing: bool = False,
) -> tuple[Path, Conversion]:
    """Convert the official release of ``name`` found in ``source`` and write it under ``out`` (default
    :func:`data_root`). Returns the written folder and the conversion. Every problem is a ``ValueError`` that names
    the file, the entry and the field. ``allow_missing`` drops the documents whose video is missing (counted in the
    manifest's notes) instead of refusing the release."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {sorted(CONVERTERS)}")
    source = Path(source).expanduser()
    if not source.is_dir():
        raise ValueError(f"{source} is not a folder (the unpacked official {name} download)")
    annotation_path = Path(annotations).expanduser() if annotations is not None else None
    if annotation_path is not None and not annotation_path.is_file():
        raise ValueError(f"--annotations {annotation_path}: no such file")
    conversion = CONVERTERS[name](source, annotation_path, check_audio, allow_missing=allow_missing)
    folder = write_prepared(conversion, Path(out).expanduser() if out is not None else data_root())
    return folder, conversion


def load_documents(name: str, subset: str | None = None) -> Any:
    """The prepared documents of ``name`` as a ``datasets.Dataset`` (only those of ``subset``, for AVHBench)."""
    import datasets

    documents = read_prepared(name)
    if subset is not None:
        documents = [document for document in documents if document.get("subset") == subset]
        if not documents:
            raise ValueError(
                f"the prepared {name} data has no {subset!r} documents: run `fastav-eval prepare-data {name}` "
                "on the full release"
            )
    return datasets.Dataset.from_list(documents)


def task_documents(placeholder: Any, name: str, subset: str | None = None) -> Any:
    """A task's ``process_docs``: lmms-eval loads the task folder's one-line ``prepared.jsonl`` (a YAML cannot
    name a path from the environment), and this returns the prepared documents in its place."""
    names = placeholder[PLACEHOLDER_FIELD] if PLACEHOLDER_FIELD in placeholder.column_names else None
    if names != [name]:
        raise ValueError(
            f"the {name} task YAML must load its folder's prepared.jsonl (one row {{{PLACEHOLDER_FIELD!r}: "
            f"{name!r}}}); got columns {placeholder.column_names}"
        )
    return load_documents(name, subset)


def between_prompts(text: str, lmms_eval_specific_kwargs: dict | None) -> str:
    """A task's ``doc_to_text``: ``text`` between the model's ``pre_prompt`` and ``post_prompt`` (either may be
    absent)."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{text}{kwargs.get('post_prompt', '')}"

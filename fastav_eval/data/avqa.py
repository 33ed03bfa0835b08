"""AVQA (Yang et al., ACM MM 2022; https://mn.cs.tsinghua.edu.cn/avqa, https://github.com/AlyssaYoung/AVQA): the
validation split (the public annotations are ``train_qa.json`` and ``val_qa.json``) to documents.

Each annotation is ``{"id", "video_name", "video_id", "question_text", "multi_choice", "answer",
"question_relation", "question_type"}``: four options, ``answer`` the index of the right one, ``video_name`` the
VGGSound clip (``<video_name>.mp4``, e.g. ``-HG3Omg_89c_000030``), ``question_type`` one of the eight categories of
the authors' preprocessing (``preprocess/preprocess_text/datautils/avqa.py``). As that preprocessing, the converter
needs only ``video_name``, ``question_text``, ``multi_choice``, ``answer`` (an int, or a string of digits:
``int(...)``) and ``question_type``; a ``multi_choice`` of fewer than four is padded with ``"null"`` (the
preprocessing's ``'NULL'``, counted as ``padded_options`` in the manifest). Each document keeps the entry's fields
and adds ``options`` (the choices as text; a null choice becomes ``"null"``, as that preprocessing reads it),
``answer`` as an int, ``answer_letter``, ``video_path`` and ``doc_key`` (the ``id``, else ``#<position>``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastav_eval.data.common import (
    Conversion,
    VideoIndex,
    find_annotation,
    read_json_list,
    require,
    resolve_videos,
)

NAME = "avqa"
ANNOTATION_FILES = ("val_qa.json",)
QUESTION_TYPES = ("Which", "Come From", "Happening", "Where", "Why", "Before Next", "When", "Used For")
OPTIONS = 4
LETTERS = "ABCD"
NULL_OPTION = "null"
_DIGITS = re.compile(r"\s*\d+\s*")


def type_metric(question_type: str) -> str:
    """The task's accuracy metric of one question type: ``"Come From"`` -> ``accuracy_come_from``."""
    return f"accuracy_{question_type.lower().replace(' ', '_')}"


def read_answer(entry: dict[str, Any], where: str) -> int:
    """``answer`` as an index 0-3: an int, or a string of digits (the preprocessing reads it with ``int()``)."""
    raw = require(entry, "answer", (int, str), where)
    answer = int(raw) if isinstance(raw, int) or _DIGITS.fullmatch(raw) else None
    if answer is None or not 0 <= answer < OPTIONS:
        raise ValueError(f"{where}: field 'answer' is {raw!r}; accepted: an index 0-{OPTIONS - 1} (int or digits)")
    return answer


def read_options(entry: dict[str, Any], where: str) -> tuple[list[str], int, int]:
    """``multi_choice`` as four texts, a null choice and each missing one ``"null"``; and how many of each."""
    choices = require(entry, "multi_choice", list, where)
    if not 0 < len(choices) <= OPTIONS or not all(c is None or isinstance(c, str) for c in choices):
        raise ValueError(
            f"{where}: field 'multi_choice' must list 1-{OPTIONS} strings (null allowed; fewer than {OPTIONS} are "
            f"padded with {NULL_OPTION!r}), got {choices!r}"
        )
    nulls, padded = sum(choice is None for choice in choices), OPTIONS - len(choices)
    options = [NULL_OPTION if choice is None else choice for choice in choices] + [NULL_OPTION] * padded
    return options, nulls, padded


def document_key(entry: dict[str, Any], position: int, where: str) -> str:
    """The ``id`` when the entry has one (an int), else ``#<position in the file>``."""
    if "id" not in entry:
        return f"#{position}"
    return str(require(entry, "id", int, where))


def convert(
    source: Path, annotations: Path | None = None, check_audio: bool = True, allow_missing: bool = False
) -> Conversion:
    annotations = annotations or find_annotation(source, ANNOTATION_FILES, NAME)
    entries = read_json_list(annotations)
    documents = []
    seen: set[str] = set()
    null_options = padded_options = 0
    for position, entry in enumerate(entries):
        where = f"{annotations.name} entry {position}"
        key = document_key(entry, position, where)
        if key in seen:
            raise ValueError(f"{where}: field 'id' {key} repeats an earlier entry")
        seen.add(key)
        require(entry, "video_name", str, where)
        question = require(entry, "question_text", str, where)
        if not question.strip():
            raise ValueError(f"{where}: field 'question_text' is empty")
        options, nulls, padded = read_options(entry, where)
        answer = read_answer(entry, where)
        if answer >= OPTIONS - padded:
            raise ValueError(
                f"{where}: field 'answer' is {answer}, but 'multi_choice' lists {OPTIONS - padded} option(s)"
            )
        kind = require(entry, "question_type", str, where)
        if kind not in QUESTION_TYPES:
            raise ValueError(f"{where}: field 'question_type' is {kind!r}; accepted: {list(QUESTION_TYPES)}")
        null_options, padded_options = null_options + nulls, padded_options + padded
        documents.append(
            {**entry, "options": options, "answer": answer, "answer_letter": LETTERS[answer], "doc_key": key}
        )
    documents, notes = resolve_videos(
        documents, VideoIndex(source), "video_name", annotations, check_audio, allow_missing
    )
    counts = {kind: sum(d["question_type"] == kind for d in documents) for kind in QUESTION_TYPES}
    notes = {"null_options": null_options, "padded_options": padded_options, **notes}
    return Conversion(NAME, documents, annotations, source, counts, notes)

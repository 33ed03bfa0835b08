"""MUSIC-AVQA (Li et al., CVPR 2022; https://github.com/GeWu-Lab/MUSIC-AVQA): the test split to documents.

The release is the video archive (``MUSIC-AVQA-videos-Real/<video_id>.mp4`` and the synthetic half, 9,288 clips)
and ``avqa-test.json`` (``data/json_update/`` holds the authors' corrected version, ``data/json/`` the original):
a list of ``{"video_id", "question_id", "type", "question_content", "templ_values", "question_deleted", "anser"}``.
``type`` is a JSON string ``'["Audio-Visual", "Counting"]'``; ``question_content`` has ``<Object>``, ``<LR>``, ...
placeholders that ``templ_values`` (a JSON string list) fills in order, as the authors' data loader does. Each
document keeps the official fields and adds ``question`` (filled in), ``modality`` and ``question_type`` (from
``type``), ``answer`` (= ``anser``), ``video_path`` and ``doc_key`` (the ``question_id``). Questions marked
``question_deleted`` are dropped and counted in the manifest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastav_eval.data.common import (
    Conversion,
    VideoIndex,
    find_annotation,
    listing,
    read_json_list,
    require,
    resolve_videos,
)

NAME = "music_avqa"
ANNOTATION_FILES = ("avqa-test.json",)

QUESTION_TYPES: dict[str, tuple[str, ...]] = {
    "Audio": ("Counting", "Comparative"),
    "Visual": ("Counting", "Location"),
    "Audio-Visual": ("Existential", "Counting", "Location", "Comparative", "Temporal"),
}
"""The paper's nine question types (Table 3 of the MUSIC-AVQA paper), by modality."""
MODALITY_KEYS = {"Audio": "audio", "Visual": "visual", "Audio-Visual": "av"}
"""Each modality's name in the task's metrics (``accuracy_av``, ``accuracy_av_temporal``, ...)."""


def type_metrics(modality: str, question_type: str) -> tuple[str, str]:
    """The task's accuracy metrics a question of ``modality`` / ``question_type`` counts in, besides ``accuracy``:
    ``("accuracy_av", "accuracy_av_temporal")``."""
    key = MODALITY_KEYS[modality]
    return f"accuracy_{key}", f"accuracy_{key}_{question_type.lower()}"


INSTRUMENTS = (
    "accordion", "acoustic_guitar", "bagpipe", "banjo", "bassoon", "cello", "clarinet", "congas", "drum",
    "electric_bass", "erhu", "flute", "guzheng", "piano", "pipa", "saxophone", "suona", "trumpet", "tuba",
    "ukulele", "violin", "xylophone",
)  # fmt: skip
COUNTS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "more than ten")
PLACES = ("left", "right", "middle", "indoor", "outdoor", "simultaneously")
ANSWERS = (*INSTRUMENTS, *COUNTS, *PLACES, "yes", "no")
"""The fixed answer vocabulary: the paper's 42 answers (the ``anser`` values of the train, val and test files):
22 instruments, 12 counts, 6 locations / times, yes and no."""

NO_COUNT_TYPES = ("Location", "Temporal")
"""Question types whose answers are never counts (none of the test file's Location or Temporal answers is one):
their replies are read without the counts, so that "The one on the left" is ``left``, not ``one``."""


def vocabulary(question_type: str) -> tuple[str, ...]:
    """The answers a reply to a question of ``question_type`` is read against (:data:`NO_COUNT_TYPES`)."""
    if question_type in NO_COUNT_TYPES:
        return tuple(answer for answer in ANSWERS if answer not in COUNTS)
    return ANSWERS


PLACEHOLDER = re.compile(r"<[A-Za-z]+>")


def fill_template(question: str, values: list[str]) -> str:
    """``question`` with its ``<...>`` placeholders replaced by ``values`` in order (the authors' loader does the
    same, word by word); the full-width question mark of some templates becomes ``?``."""
    slots = PLACEHOLDER.findall(question)
    if len(slots) != len(values):
        raise ValueError(f"{len(slots)} placeholder(s) {slots} but {len(values)} templ_values {values}")
    pieces = iter(values)
    return PLACEHOLDER.sub(lambda _: next(pieces), question).replace("？", "?").strip()


def _json_list(entry: dict[str, Any], key: str, where: str) -> list[Any]:
    raw = require(entry, key, (str, list), where)
    if isinstance(raw, list):
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"{where}: field {key!r} must be a JSON list in a string, got {raw!r}") from None
    if not isinstance(value, list):
        raise ValueError(f"{where}: field {key!r} must be a JSON list in a string, got {raw!r}")
    return value


def convert(
    source: Path, annotations: Path | None = None, check_audio: bool = True, allow_missing: bool = False
) -> Conversion:
    annotations = annotations or find_annotation(source, ANNOTATION_FILES, NAME)
    entries = read_json_list(annotations)
    documents = []
    deleted = 0
    seen: set[int] = set()
    for position, entry in enumerate(entries):
        where = f"{annotations.name} entry {position}"
        require(entry, "video_id", str, where)
        question_id = require(entry, "question_id", int, where)
        if question_id in seen:
            raise ValueError(f"{where}: field 'question_id' {question_id} repeats an earlier entry")
        seen.add(question_id)
        if require(entry, "question_deleted", int, where) not in (0, 1):
            raise ValueError(f"{where}: field 'question_deleted' is {entry['question_deleted']!r}; accepted: 0, 1")
        if entry["question_deleted"] == 1:
            deleted += 1
            continue
        kind = _json_list(entry, "type", where)
        if len(kind) != 2 or kind[0] not in QUESTION_TYPES or kind[1] not in QUESTION_TYPES[kind[0]]:
            accepted = "; ".join(f"[{m!r}, one of {list(t)}]" for m, t in QUESTION_TYPES.items())
            raise ValueError(f"{where}: field 'type' is {entry['type']!r}; accepted: {accepted}")
        values = _json_list(entry, "templ_values", where)
        if not all(isinstance(value, str) for value in values):
            raise ValueError(f"{where}: field 'templ_values' must list strings, got {values!r}")
        try:
            question = fill_template(require(entry, "question_content", str, where), values)
        except ValueError as error:
            raise ValueError(f"{where}: fields 'question_content' / 'templ_values': {error}") from None
        answer = require(entry, "anser", str, where)
        if answer not in ANSWERS:
            raise ValueError(f"{where}: field 'anser' is {answer!r}; accepted: the 42 answers {listing(ANSWERS)}")
        documents.append(
            {
                **entry,
                "question": question,
                "modality": kind[0],
                "question_type": kind[1],
                "answer": answer,
                "doc_key": str(question_id),
            }
        )
    if not documents:
        raise ValueError(f"{annotations.name}: every question is marked question_deleted")
    documents, notes = resolve_videos(
        documents, VideoIndex(source), "video_id", annotations, check_audio, allow_missing
    )
    counts = {
        f"{modality}/{kind}": sum(d["modality"] == modality and d["question_type"] == kind for d in documents)
        for modality, kinds in QUESTION_TYPES.items()
        for kind in kinds
    }
    return Conversion(NAME, documents, annotations, source, counts, {"question_deleted": deleted, **notes})

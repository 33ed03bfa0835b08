"""AVQA (Yang et al., ACM MM 2022; https://mn.cs.tsinghua.edu.cn/avqa, https://github.com/AlyssaYoung/AVQA): the
validation split (the public annotations are ``train_qa.json`` and ``val_qa.json``) to documents.

Each annotation is ``{"id", "video_name", "video_id", "question_text", "multi_choice", "answer",
"question_relation", "question_type"}``: four options, ``answer`` the index of the right one, ``video_name`` the
VGGSound clip (``<video_name>.mp4``, e.g. ``-HG3Omg_89c_000030``), ``question_type`` one of the eight categories of
the authors' preprocessing (``preprocess/preprocess_text/datautils/avqa.py``). Each document keeps those fields and
adds ``options`` (the choices as text; a null choice becomes ``"null"``, as that preprocessing reads it),
``answer_letter``, ``video_path`` and ``doc_key`` (the ``id``).
"""

from __future__ import annotations

from pathlib import Path

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


def convert(source: Path, annotations: Path | None = None, check_audio: bool = True) -> Conversion:
    annotations = annotations or find_annotation(source, ANNOTATION_FILES, NAME)
    entries = read_json_list(annotations)
    documents = []
    seen: set[int] = set()
    null_options = 0
    for position, entry in enumerate(entries):
        where = f"{annotations.name} entry {position}"
        question_id = require(entry, "id", int, where)
        if question_id in seen:
            raise ValueError(f"{where}: field 'id' {question_id} repeats an earlier entry")
        seen.add(question_id)
        require(entry, "video_name", str, where)
        question = require(entry, "question_text", str, where)
        if not question.strip():
            raise ValueError(f"{where}: field 'question_text' is empty")
        choices = require(entry, "multi_choice", list, where)
        if len(choices) != OPTIONS or not all(c is None or isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: field 'multi_choice' must list {OPTIONS} strings, got {choices!r}")
        answer = require(entry, "answer", int, where)
        if not 0 <= answer < OPTIONS:
            raise ValueError(f"{where}: field 'answer' is {answer}; accepted: an index 0-{OPTIONS - 1}")
        kind = require(entry, "question_type", str, where)
        if kind not in QUESTION_TYPES:
            raise ValueError(f"{where}: field 'question_type' is {kind!r}; accepted: {list(QUESTION_TYPES)}")
        require(entry, "question_relation", str, where)
        null_options += sum(choice is None for choice in choices)
        documents.append(
            {
                **entry,
                "options": ["null" if choice is None else choice for choice in choices],
                "answer_letter": LETTERS[answer],
                "doc_key": str(question_id),
            }
        )
    resolve_videos(documents, VideoIndex(source), "video_name", annotations, check_audio)
    counts = {kind: sum(d["question_type"] == kind for d in documents) for kind in QUESTION_TYPES}
    return Conversion(NAME, documents, annotations, source, counts, {"null_options": null_options})

"""lmms-eval hooks for MUSIC-AVQA: the prepared test documents (``fastav_eval.data``) and their scoring against
the 42-answer vocabulary, overall and per question type as in the paper's table."""

from __future__ import annotations

from typing import Any

from fastav_eval.data import between_prompts, checked_video, task_documents
from fastav_eval.data.music_avqa import NAME as DATASET
from fastav_eval.data.music_avqa import type_metrics, vocabulary
from fastav_eval.data.scoring import exact_match, match_answer


def docs(dataset: Any) -> Any:
    return task_documents(dataset, DATASET)


def doc_to_visual(doc: dict) -> list[str]:
    return [checked_video(doc, DATASET)]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question with its placeholders filled (``question``), between the model's pre/post prompts."""
    return between_prompts(doc["question"], lmms_eval_specific_kwargs)


def process_results(doc: dict, results: list[str]) -> dict:
    """``accuracy`` (the reply read against the vocabulary of the question's type), ``exact_match`` (VideoLLaMA2's
    string rule), ``invalid_rate``, and the accuracy under the document's modality and its question type."""
    said = match_answer(results[0], vocabulary(doc["question_type"]))
    correct = float(said == doc["answer"])
    by_type = dict.fromkeys(type_metrics(doc["modality"], doc["question_type"]), correct)
    return {
        "accuracy": correct,
        "exact_match": float(exact_match(results[0], doc["answer"])),
        "invalid_rate": float(said is None),
        **by_type,
    }

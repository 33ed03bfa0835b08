"""lmms-eval hooks for AVQA: the prepared validation documents (``fastav_eval.data``), four lettered options, and
accuracy overall and per question type."""

from __future__ import annotations

from typing import Any

from fastav_eval.data import between_prompts, checked_video, task_documents
from fastav_eval.data.avqa import LETTERS, type_metric
from fastav_eval.data.avqa import NAME as DATASET
from fastav_eval.data.scoring import parse_choice


def docs(dataset: Any) -> Any:
    return task_documents(dataset, DATASET)


def doc_to_visual(doc: dict) -> list[str]:
    return [checked_video(doc, DATASET)]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """``question_text``, then one ``A. <option>`` line per option, between the model's pre/post prompts."""
    options = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, doc["options"], strict=True))
    return between_prompts(f"{doc['question_text']}\n{options}", lmms_eval_specific_kwargs)


def process_results(doc: dict, results: list[str]) -> dict:
    """``accuracy`` (a letter, or an option's text, read from the reply), ``invalid_rate``, and the accuracy
    under the document's question type (``accuracy_come_from``, ...)."""
    picked = parse_choice(results[0], doc["options"])
    correct = float(picked == doc["answer"])
    return {"accuracy": correct, "invalid_rate": float(picked is None), type_metric(doc["question_type"]): correct}

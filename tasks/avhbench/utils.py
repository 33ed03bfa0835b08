"""lmms-eval hooks for the AVHBench tasks: the prepared documents (``fastav_eval.data``) and their scoring
(``fastav_eval.data.scoring``; captions: ``fastav_eval.captions``). ``doc_to_visual`` gives the clip's path; the
models read its soundtrack."""

from __future__ import annotations

from typing import Any

from fastav_eval.captions import corpus_bleu4, corpus_cider, corpus_rouge_l
from fastav_eval.data import between_prompts, checked_video, task_documents
from fastav_eval.data.avhbench import NAME as DATASET
from fastav_eval.data.scoring import judgment_metrics, parse_yes_no


def a2v_docs(dataset: Any) -> Any:
    return task_documents(dataset, DATASET, "a2v")


def v2a_docs(dataset: Any) -> Any:
    return task_documents(dataset, DATASET, "v2a")


def match_docs(dataset: Any) -> Any:
    return task_documents(dataset, DATASET, "match")


def caption_docs(dataset: Any) -> Any:
    return task_documents(dataset, DATASET, "caption")


def doc_to_visual(doc: dict) -> list[str]:
    return [checked_video(doc, DATASET)]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The official ``text`` (the question, or the captioning instruction), between the model's pre/post prompts."""
    return between_prompts(doc["text"], lmms_eval_specific_kwargs)


def process_judgment(doc: dict, results: list[str]) -> dict:
    prediction = parse_yes_no(results[0])
    pair = (prediction, doc["answer"])
    return {
        "accuracy": float(prediction == doc["answer"]),
        "precision": pair,
        "recall": pair,
        "f1": pair,
        "yes_rate": float(prediction == "yes"),
        "invalid_rate": float(prediction is None),
    }


def aggregate_precision(items: list[tuple[str | None, str]]) -> float:
    return judgment_metrics(items)["precision"]


def aggregate_recall(items: list[tuple[str | None, str]]) -> float:
    return judgment_metrics(items)["recall"]


def aggregate_f1(items: list[tuple[str | None, str]]) -> float:
    return judgment_metrics(items)["f1"]


def process_caption(doc: dict, results: list[str]) -> dict:
    pair = (doc["answer"], results[0])
    return {"cider": pair, "bleu4": pair, "rouge_l": pair}


def aggregate_cider(items: list[tuple[str, str]]) -> float:
    return corpus_cider(items)


def aggregate_bleu4(items: list[tuple[str, str]]) -> float:
    return corpus_bleu4(items)


def aggregate_rouge_l(items: list[tuple[str, str]]) -> float:
    return corpus_rouge_l(items)

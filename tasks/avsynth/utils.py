"""lmms-eval hooks for the AV-Synth tasks: thin calls into ``fastav_eval.avsynth`` (rendering and scoring)."""

from __future__ import annotations

from fastav_eval.avsynth.dataset import request_visuals
from fastav_eval.avsynth.scoring import corpus_bleu4, corpus_cider, score_choice


def doc_to_visual(doc: dict) -> list[dict]:
    """The clip as ``[video, audio]`` dicts, checked against the document (``fastav_eval.avsynth.request_visuals``)."""
    return request_visuals(doc)


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    post_prompt = kwargs.get("post_prompt", "")
    if "{choices}" in post_prompt:
        post_prompt = post_prompt.format(choices=", ".join(doc["choices"]))
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{post_prompt}"


def process_choice(doc: dict, results: list[str]) -> dict:
    """Accuracy against the valid answer set, and the same score split by the senses the question needs."""
    scores = score_choice(results[0], doc["answer"], doc["choices"])
    return {
        "accuracy": scores["accuracy"],
        "invalid_rate": scores["invalid"],
        f"accuracy_needs_{doc['needs']}": scores["accuracy"],
    }


def process_caption(doc: dict, results: list[str]) -> dict:
    pair = (doc["answer"], results[0])
    return {"cider": pair, "bleu4": pair}


def aggregate_cider(items: list[tuple[str, str]]) -> float:
    return corpus_cider(items)


def aggregate_bleu4(items: list[tuple[str, str]]) -> float:
    return corpus_bleu4(items)

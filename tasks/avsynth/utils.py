"""lmms-eval hooks for the AV-Synth tasks: thin calls into ``fastav_eval.avsynth`` (rendering and scoring)."""

from __future__ import annotations

from fastav_eval.avsynth.dataset import load_media
from fastav_eval.avsynth.scoring import corpus_bleu4, corpus_cider, score_choice
from fastav_eval.avsynth.world import CLIP_SECONDS, NUM_FRAMES, SAMPLE_RATE


def doc_to_visual(doc: dict) -> list[dict]:
    """The clip as ``[video, audio]``: frames ``[8, 32, 32, 3]`` uint8 and a 16 kHz float32 waveform.

    Both are dicts with an explicit ``type`` (a bare ``{"array", "sampling_rate"}`` dict would reach chat models as
    a video item). The document is checked first (``check_document``: media_sha1, question and answer against its
    scene) and its rendered media against ``media_sha1``; an edited or stale document is a ValueError naming its id.
    """
    frames, waveform = load_media(doc, strict=True)
    return [
        {"type": "video", "frames": frames, "fps": NUM_FRAMES / CLIP_SECONDS},
        {"type": "audio", "array": waveform, "sampling_rate": SAMPLE_RATE},
    ]


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

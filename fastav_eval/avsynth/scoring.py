"""Scoring AV-Synth answers: against the valid answer set (invalid answers are counted, never guessed), and
captions by corpus CIDEr-D and BLEU-4 (:mod:`fastav_eval.captions`, whitespace-separated words: AV-Synth captions
are already tokenised) and, per sample, :class:`~fastav_eval.captions.SampleCider`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastav_eval.captions import SampleCider, corpus_bleu4, corpus_cider, words

__all__ = ["SampleCider", "corpus_bleu4", "corpus_cider", "normalise", "score_choice"]


def normalise(text: str) -> str:
    """Lower-case words without punctuation: ``" Yes."`` -> ``"yes"``."""
    return " ".join(words(text))


def score_choice(response: str, answer: str, choices: Sequence[str]) -> dict[str, float]:
    """``accuracy`` 1/0 and ``invalid`` 1 when the normalised response is not one of ``choices``."""
    if not choices:
        raise ValueError("score_choice needs the document's choices (the valid answer set); got none")
    said = normalise(response)
    valid = said in choices
    return {"accuracy": float(valid and said == answer), "invalid": float(not valid)}

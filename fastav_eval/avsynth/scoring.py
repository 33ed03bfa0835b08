"""Scoring AV-Synth answers: against the valid answer set (invalid answers are counted, never guessed), and
captions by corpus CIDEr-D and BLEU-4 (pycocoevalcap, whitespace tokens: AV-Synth captions are already tokenised).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence

_PUNCTUATION = re.compile(r"[^a-z0-9 ]+")


def normalise(text: str) -> str:
    """Lower-case words without punctuation: ``" Yes."`` -> ``"yes"``."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def score_choice(response: str, answer: str, choices: Sequence[str]) -> dict[str, float]:
    """``accuracy`` 1/0 and ``invalid`` 1 when the normalised response is not one of ``choices``."""
    if not choices:
        raise ValueError("score_choice needs the document's choices (the valid answer set); got none")
    said = normalise(response)
    valid = said in choices
    return {"accuracy": float(valid and said == answer), "invalid": float(not valid)}


def _pycoco_inputs(items: Sequence[tuple[str, str]]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    references = {i: [normalise(reference)] for i, (reference, _) in enumerate(items)}
    predictions = {i: [normalise(prediction)] for i, (_, prediction) in enumerate(items)}
    return references, predictions


def corpus_cider(items: Sequence[tuple[str, str]]) -> float:
    """CIDEr-D (x100 is *not* applied: 1.0 = the usual "100") over ``(reference, prediction)`` pairs."""
    from pycocoevalcap.cider.cider import Cider

    if not items:
        raise ValueError("corpus_cider needs at least one (reference, prediction) pair")
    score, _ = Cider().compute_score(*_pycoco_inputs(items))
    return float(score)


def corpus_bleu4(items: Sequence[tuple[str, str]]) -> float:
    """Corpus BLEU-4 over ``(reference, prediction)`` pairs."""
    from pycocoevalcap.bleu.bleu import Bleu

    if not items:
        raise ValueError("corpus_bleu4 needs at least one (reference, prediction) pair")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its n-gram counts
        scores, _ = Bleu(4).compute_score(*_pycoco_inputs(items), verbose=0)
    return float(scores[3])

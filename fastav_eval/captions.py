"""Caption metrics, one implementation for every task that scores captions (AV-Synth, AVHBench): corpus CIDEr-D,
BLEU-4 and ROUGE-L through pycocoevalcap, and :class:`SampleCider`, one sample's share of the corpus CIDEr-D.

Captions are compared as :func:`words` tokens (pycocoevalcap's PTB tokenizer needs Java, which these machines need
not have). Every figure is over ``(reference, prediction)`` pairs.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words: ``"No, it's  the_piano."`` -> ``["no", "it", "s", "the", "piano"]``."""
    return _WORD.findall(text.lower().replace("_", " "))


def pycoco_inputs(items: Sequence[tuple[str, str]]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """``(references, predictions)`` as pycocoevalcap's scorers take them: index -> ``[caption as words]``."""
    if not items:
        raise ValueError("caption metrics need at least one (reference, prediction) pair")
    references = {i: [" ".join(words(reference))] for i, (reference, _) in enumerate(items)}
    predictions = {i: [" ".join(words(prediction))] for i, (_, prediction) in enumerate(items)}
    return references, predictions


def corpus_cider(items: Sequence[tuple[str, str]]) -> float:
    """Corpus CIDEr-D (x100 is *not* applied: 1.0 is the usual "100")."""
    from pycocoevalcap.cider.cider import Cider

    score, _ = Cider().compute_score(*pycoco_inputs(items))
    return float(score)


def corpus_bleu4(items: Sequence[tuple[str, str]]) -> float:
    """Corpus BLEU-4."""
    from pycocoevalcap.bleu.bleu import Bleu

    inputs = pycoco_inputs(items)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its n-gram counts
        scores, _ = Bleu(4).compute_score(*inputs, verbose=0)
    return float(scores[3])


def corpus_rouge_l(items: Sequence[tuple[str, str]]) -> float:
    """Mean ROUGE-L F (beta 1.2)."""
    from pycocoevalcap.rouge.rouge import Rouge

    score, _ = Rouge().compute_score(*pycoco_inputs(items))
    return float(score)


def _ngrams(text: str, n: int = 4) -> Counter[tuple[str, ...]]:
    tokens = words(text)
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


class SampleCider:
    """CIDEr-D of one caption against its reference, with n-gram document frequencies fitted once on a corpus of
    references: what pycocoevalcap gives that sample when it scores the whole corpus (the RL environments' per-sample
    caption quality; :func:`corpus_cider` is the figure reports use). Same weighting as pycocoevalcap: tf-idf per
    n-gram order 1..4, clipped matches, a Gaussian length penalty (sigma 6, on bigram counts), x10."""

    def __init__(self, references: Sequence[str], n: int = 4, sigma: float = 6.0) -> None:
        if not references:
            raise ValueError("SampleCider needs a corpus of at least one reference")
        self.n, self.sigma = n, sigma
        self.document_frequency: Counter[tuple[str, ...]] = Counter()
        for reference in references:
            self.document_frequency.update(_ngrams(reference, n).keys())
        self.log_corpus = math.log(float(len(references)))

    def _vector(self, text: str) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vector: list[dict[tuple[str, ...], float]] = [{} for _ in range(self.n)]
        bigrams = 0
        for ngram, count in _ngrams(text, self.n).items():
            idf = self.log_corpus - math.log(max(1.0, self.document_frequency[ngram]))
            vector[len(ngram) - 1][ngram] = count * idf
            bigrams += count if len(ngram) == 2 else 0
        norms = [math.sqrt(sum(v * v for v in order.values())) for order in vector]
        return vector, norms, bigrams

    def __call__(self, candidate: str, reference: str) -> float:
        hyp, hyp_norms, hyp_length = self._vector(candidate)
        ref, ref_norms, ref_length = self._vector(reference)
        penalty = math.exp(-(float(hyp_length - ref_length) ** 2) / (2 * self.sigma**2))
        total = 0.0
        for order in range(self.n):
            overlap = sum(
                min(value, ref[order].get(g, 0.0)) * ref[order].get(g, 0.0) for g, value in hyp[order].items()
            )
            if hyp_norms[order] != 0 and ref_norms[order] != 0:
                overlap /= hyp_norms[order] * ref_norms[order]
            total += overlap * penalty
        return 10.0 * total / self.n

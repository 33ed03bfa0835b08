from __future__ import annotations

import pytest

from fastav_eval.avsynth.scoring import corpus_bleu4, corpus_cider, normalise, score_choice


def test_choice_scoring_counts_invalid_answers():
    assert normalise(" Yes.") == "yes"
    assert score_choice(" Yes.", "yes", ["yes", "no"]) == {"accuracy": 1.0, "invalid": 0.0}
    assert score_choice("no", "yes", ["yes", "no"]) == {"accuracy": 0.0, "invalid": 0.0}
    assert score_choice("yes it is", "yes", ["yes", "no"]) == {"accuracy": 0.0, "invalid": 1.0}
    with pytest.raises(ValueError, match="choices"):
        score_choice("yes", "yes", [])


def test_caption_metrics_rank_exact_above_partial_above_wrong():
    references = [
        "a red circle . the red circle is silent .",
        "a blue square . the blue square makes two sounds .",
        "a green triangle and a yellow circle .",
        "a red square . a blue sound comes from off screen .",
    ]
    exact = list(zip(references, references, strict=True))
    partial = [(r, " ".join(r.split()[:4])) for r in references]
    wrong = [(r, "the the the") for r in references]
    assert corpus_cider(exact) > corpus_cider(partial) > corpus_cider(wrong)
    assert corpus_bleu4(exact) == pytest.approx(1.0)
    assert corpus_bleu4(partial) < 1.0


def test_sample_cider_equals_pycocoevalcaps_per_sample_scores():
    """The environments' per-sample CIDEr-D, fitted on the corpus's references, is the score pycocoevalcap gives
    each sample when it scores the corpus."""
    from pycocoevalcap.cider.cider import Cider

    from fastav_eval.avsynth import build_documents
    from fastav_eval.avsynth.scoring import SampleCider
    from fastav_eval.captions import pycoco_inputs

    documents = build_documents("val", "avsynth_caption", 30)
    pairs = []
    for i, doc in enumerate(documents):
        words = doc["answer"].split()
        pairs.append((doc["answer"], " ".join(words[i % 3 :] if i % 4 else words[::-1])))
    _, per_sample = Cider().compute_score(*pycoco_inputs(pairs))
    scorer = SampleCider([reference for reference, _ in pairs])
    mine = [scorer(prediction, reference) for reference, prediction in pairs]
    assert max(abs(a - b) for a, b in zip(mine, per_sample, strict=True)) < 1e-9
    assert scorer(pairs[0][0], pairs[0][0]) > scorer(pairs[1][1], pairs[0][0])

"""The hand-written AV-Synth rule reads every template's question, and refuses what it cannot read."""

from __future__ import annotations

import numpy as np
import pytest

from fastav_eval.avsynth.questions import KINDS, make_example
from fastav_eval.avsynth.rule import SETTINGS, question_kind


def test_every_kind_is_read_from_its_question():
    rng = np.random.default_rng(0)
    assert set(SETTINGS) == set(KINDS)
    for kind in KINDS:
        for _ in range(20):
            assert question_kind(make_example(kind, rng)["question"]) == kind


def test_a_question_of_no_template_is_refused():
    with pytest.raises(ValueError, match=r"question 'why \?' matches no AV-Synth template"):
        question_kind("why ?")

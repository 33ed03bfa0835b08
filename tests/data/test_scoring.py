"""The paper benchmarks' scoring against hand-computed cases."""

from __future__ import annotations

import pytest

from fastav_eval.captions import corpus_bleu4, corpus_cider, corpus_rouge_l
from fastav_eval.data.music_avqa import ANSWERS, vocabulary
from fastav_eval.data.scoring import (
    exact_match,
    judgment_metrics,
    match_answer,
    parse_choice,
    parse_yes_no,
)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Yes.", "yes"),
        ("yes", "yes"),
        ("YES!", "yes"),
        ("no, the couch makes no sound", "no"),
        ("No. There is a dog, yes.", "no"),  # the leading word decides
        ("Answer: No", "no"),
        ("I think yes", "yes"),
        ("There is no man walking.", "no"),
        ("It's not yes or no", None),  # both, none leading
        ("The man is sleeping.", None),
        ("Nope", None),
        ("nothing", None),
        ("", None),
    ],
)
def test_yes_no(reply, expected):
    assert parse_yes_no(reply) == expected


def test_judgment_metrics_by_hand():
    # labels    yes  yes  yes  no   no   no
    # predicted yes  no   None yes  no   no
    pairs = [("yes", "yes"), ("no", "yes"), (None, "yes"), ("yes", "no"), ("no", "no"), ("no", "no")]
    metrics = judgment_metrics(pairs)
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["precision"] == pytest.approx(1 / 2)  # TP 1 of 2 predicted yes
    assert metrics["recall"] == pytest.approx(1 / 3)  # TP 1 of 3 labelled yes
    assert metrics["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # 0.4
    assert metrics["yes_rate"] == pytest.approx(2 / 6)
    assert metrics["invalid_rate"] == pytest.approx(1 / 6)


def test_judgment_metrics_without_a_yes_prediction_is_zero_not_an_error():
    metrics = judgment_metrics([("no", "yes"), (None, "no")])
    assert metrics["precision"] == metrics["recall"] == metrics["f1"] == 0.0
    with pytest.raises(ValueError, match="a label 'yes' or 'no'"):
        judgment_metrics([("yes", "Yes")])
    with pytest.raises(ValueError, match="at least one"):
        judgment_metrics([])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("piano", "piano"),
        ("  Piano. ", "piano"),
        ("acoustic guitar", "acoustic_guitar"),
        ("Acoustic_Guitar", "acoustic_guitar"),
        ("The answer is acoustic guitar.", "acoustic_guitar"),
        ("2", "two"),
        ("Answer: two", "two"),
        ("more than 10", "more than ten"),
        ("More than ten.", "more than ten"),
        ("ten", "ten"),
        ("No, the flute is not playing.", "no"),  # the earliest entry, not the instrument after it
        ("Yes, the violin and the piano both sound.", "yes"),
        ("The left one.", "left"),
        ("someone", None),  # no "one" inside a word
        ("nothing", None),
        ("eleven", None),
        ("", None),
    ],
)
def test_music_avqa_answers(reply, expected):
    assert match_answer(reply, ANSWERS) == expected


@pytest.mark.parametrize(
    ("reply", "question_type", "expected"),
    [
        ("The one on the left", "Location", "left"),  # no counts for a Location or Temporal question
        ("The one on the left", "Temporal", "left"),
        ("The first one", "Temporal", None),
        ("one", "Location", None),
        ("The one on the left", "Counting", "one"),  # a count question still reads the count first
        ("Drums", "Location", "drum"),  # the plural of a vocabulary word
        ("Two violins.", "Comparative", "two"),
        ("Violins", "Comparative", "violin"),
        ("acoustic guitars", "Location", "acoustic_guitar"),
        ("Congas", "Location", "congas"),  # a vocabulary word ending in s stays
        ("Indoors.", "Location", "indoor"),
        ("outdoors", "Location", "outdoor"),
        ("At the same time.", "Temporal", "simultaneously"),
        ("They play at the same time", "Temporal", "simultaneously"),
        ("12", "Counting", "more than ten"),
        ("There are 11 instruments", "Counting", "more than ten"),
        ("10+", "Counting", "more than ten"),
        ("over ten", "Counting", "more than ten"),
        ("over 10", "Counting", "more than ten"),
        ("10", "Counting", "ten"),
        ("100", "Counting", "more than ten"),
    ],
)
def test_music_avqa_answers_by_question_type(reply, question_type, expected):
    assert match_answer(reply, vocabulary(question_type)) == expected


def test_music_avqa_vocabularies():
    assert len(ANSWERS) == 42 and len(set(ANSWERS)) == 42
    assert len(vocabulary("Location")) == len(vocabulary("Temporal")) == 30  # 42 less the 12 counts
    assert vocabulary("Counting") == vocabulary("Existential") == vocabulary("Comparative") == ANSWERS


def test_videollama2_exact_match():
    assert exact_match("Acoustic_guitar.", "acoustic_guitar")
    assert exact_match("yes .", "yes")
    assert not exact_match("acoustic guitar", "acoustic_guitar")
    assert not exact_match("Yes, it is.", "yes")


OPTIONS = ["dog", "dog barking", "cat", "Playing drums"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B", 1),
        ("b", 1),
        ("(C) cat", 2),
        ("d.", 3),
        ("C: cat", 2),
        ("The answer is B", 1),
        ("answer: (D)", 3),
        ("Option A.", 0),
        ("Playing drums.", 3),
        ("It is a cat.", 2),
        ("A dog is barking", 0),  # "A " is an article here; "dog" is the only whole option in the reply
        ("dog barking loudly", 1),  # "dog" inside "dog barking" does not count twice
        ("a cat and a dog", None),  # two options
        ("answer: b", 1),
        ("the answer is b", 1),
        ("The answer is c.", 2),
        ("the answer is (d) playing drums", 3),
        ("the answer is a dog", 0),  # "a" is an article: the option's text decides
        ("Answer: A dog", 0),  # the letter and its option's text agree
        ("Answer: B cat", None),  # the letter says "dog barking", the text "cat": neither is guessed
        ("C. dog", None),
        ("B. dog barking", 1),
        ("E", None),  # not one of the four letters
        ("I don't know", None),
        ("", None),
    ],
)
def test_avqa_choices(reply, expected):
    assert parse_choice(reply, OPTIONS) == expected


def test_a_letter_contradicted_by_another_options_text_is_invalid():
    options = ["cat", "dog", "cow", "horse"]
    assert parse_choice("Answer: A dog", options) is None  # A is cat; "dog" is B's text
    assert parse_choice("Answer: B dog", options) == 1
    assert parse_choice("Answer: A", options) == 0


def test_bleu4_by_hand():
    # reference "the cat sat on the mat", candidate "the cat sat on a mat" (equal lengths: no brevity penalty)
    # clipped n-gram precisions: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25  # 0.53728
    assert corpus_bleu4([("The cat sat on the mat.", "the cat sat on a mat")]) == pytest.approx(expected, abs=1e-6)


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat on mat") = 4: precision 4/4, recall 4/6; F with beta 1.2
    precision, recall, beta = 1.0, 4 / 6, 1.2
    expected = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)  # 0.77215
    assert corpus_rouge_l([("the cat sat on the mat", "The cat, on mat!")]) == pytest.approx(expected, abs=1e-9)


def test_cider_by_hand():
    # Two captions of 4+ words sharing no n-gram: each candidate equals its reference, so for every n = 1..4 the
    # tf-idf vectors are parallel (cosine 1) and the lengths equal (no Gaussian penalty): 10 * mean(1, 1, 1, 1).
    pairs = [
        ("a dog barks loudly outside", "A dog barks loudly outside."),
        ("rain falls on the roof", "rain falls on the roof"),
    ]
    assert corpus_cider(pairs) == pytest.approx(10.0)
    # ... and a candidate sharing no word with its reference scores 0
    assert corpus_cider([pairs[0], ("rain falls on the roof", "music plays in a hall")]) == pytest.approx(5.0)


def test_caption_metrics_need_pairs():
    for metric in (corpus_cider, corpus_bleu4, corpus_rouge_l):
        with pytest.raises(ValueError, match="at least one"):
            metric([])

"""Scoring the paper benchmarks' answers: yes/no judgments (AVHBench), answers from a fixed vocabulary
(MUSIC-AVQA) and lettered multiple choice (AVQA); captions (AVHBench AV captioning) are scored by
:mod:`fastav_eval.captions`.

Every reader returns the answer it found or None: an answer that cannot be read is counted as invalid (and
wrong), never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fastav_eval.captions import words

_NUMBERS = dict(enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")))
_NUMERALS = {str(number): word for number, word in _NUMBERS.items()}


# --------------------------------------------------------------------------------------------------------------------
# Yes / no (AVHBench's judgment tasks)

_ANSWER_PREFIX = ("answer",)


def parse_yes_no(response: str) -> str | None:
    """``"yes"`` / ``"no"`` from a reply, or None.

    The first word decides when it is yes or no (``"Yes."``, ``"no, the dog is silent"``, ``"Answer: No"``);
    otherwise the reply must contain exactly one of the two words (``"I think yes"``, ``"There is no dog."``). A
    reply with neither, or with both and no leading one (``"It's not yes or no"``), is None.
    """
    tokens = words(response)
    while tokens and tokens[0] in _ANSWER_PREFIX:
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] in ("yes", "no"):
        return tokens[0]
    found = {token for token in tokens if token in ("yes", "no")}
    return found.pop() if len(found) == 1 else None


def judgment_metrics(pairs: Sequence[tuple[str | None, str]]) -> dict[str, float]:
    """AVHBench's judgment metrics over ``(prediction, label)`` pairs, "yes" being the positive class.

    ``accuracy`` counts an unreadable prediction as wrong; ``precision`` / ``recall`` / ``f1`` are of "yes";
    ``yes_rate`` is the share of all replies read as yes (the leaderboard's "Yes (%)", its bias measure);
    ``invalid_rate`` the share that could not be read. Fractions in [0, 1]; 0 where a ratio's denominator is 0.
    """
    if not pairs:
        raise ValueError("judgment_metrics needs at least one (prediction, label) pair")
    for prediction, label in pairs:
        if label not in ("yes", "no") or prediction not in ("yes", "no", None):
            raise ValueError(
                f"judgment pair {(prediction, label)!r}: a prediction is 'yes', 'no' or None, a label 'yes' or 'no'"
            )
    total = len(pairs)
    true_positive = sum(p == "yes" and y == "yes" for p, y in pairs)
    predicted_yes = sum(p == "yes" for p, _ in pairs)
    actual_yes = sum(y == "yes" for _, y in pairs)
    precision = true_positive / predicted_yes if predicted_yes else 0.0
    recall = true_positive / actual_yes if actual_yes else 0.0
    return {
        "accuracy": sum(p == y for p, y in pairs) / total,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_rate": predicted_yes / total,
        "invalid_rate": sum(p is None for p, _ in pairs) / total,
    }


# --------------------------------------------------------------------------------------------------------------------
# A fixed answer vocabulary (MUSIC-AVQA)


_MORE_THAN_TEN = ("more", "than", "ten")
_TEN_PLUS = re.compile(r"\b(?:10|ten)\s*\+")
_PHRASE_ALIASES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("at", "the", "same", "time"): ("simultaneously",),
    ("over", "ten"): _MORE_THAN_TEN,
}
"""Phrases read as another (MUSIC-AVQA's answer for "at the same time" is ``simultaneously``)."""


def _phrase(text: str) -> list[str]:
    """:func:`words`, a numeral as its word (0-10) or ``more than ten`` (11 and up, ``10+``), and
    :data:`_PHRASE_ALIASES` replaced."""
    said: list[str] = []
    for word in words(_TEN_PLUS.sub(" more than ten ", text.lower())):
        if word.isdigit():
            said.extend(_MORE_THAN_TEN if int(word) > 10 else (_NUMERALS[str(int(word))],))
        else:
            said.append(word)
    return _replace_phrases(said, _PHRASE_ALIASES)


def _replace_phrases(said: list[str], aliases: dict[tuple[str, ...], tuple[str, ...]]) -> list[str]:
    out: list[str] = []
    position = 0
    while position < len(said):
        for phrase, replacement in aliases.items():
            if tuple(said[position : position + len(phrase)]) == phrase:
                out.extend(replacement)
                position += len(phrase)
                break
        else:
            out.append(said[position])
            position += 1
    return out


def _singular(said: list[str], known: set[str]) -> list[str]:
    """Each word that is not a vocabulary word but is one plus ``s`` as that word (``drums`` -> ``drum``,
    ``indoors`` -> ``indoor``; ``congas`` and ``yes`` stay)."""
    return [word[:-1] if word not in known and word.endswith("s") and word[:-1] in known else word for word in said]


def match_answer(response: str, vocabulary: Sequence[str]) -> str | None:
    """The vocabulary entry a reply gives, or None.

    Words are compared lower-case, without punctuation, ``_`` read as a space, the numerals 0-10 as words and
    larger ones, ``10+`` and "over ten" as ``more than ten``, "at the same time" as ``simultaneously``, and the
    plural of a vocabulary word as the word (``"Acoustic guitars."`` -> ``acoustic_guitar``, ``"2"`` -> ``two``,
    ``"Indoors"`` -> ``indoor``). A reply that is exactly an entry gives it; otherwise the entry that starts
    earliest in the reply, the longer one on a tie (``"No, the flute is not playing"`` -> ``no``). Only the
    vocabulary's entries are read: without the counts (:func:`fastav_eval.data.music_avqa.vocabulary` for Location
    and Temporal questions) "The one on the left" is ``left``.
    """
    entries = {tuple(_phrase(entry)): entry for entry in vocabulary}
    said = _singular(_phrase(response), {word for phrase in entries for word in phrase})
    if not said:
        return None
    if tuple(said) in entries:
        return entries[tuple(said)]
    best: tuple[int, int, str] | None = None
    for phrase, entry in entries.items():
        size = len(phrase)
        for start in range(len(said) - size + 1):
            if tuple(said[start : start + size]) == phrase:
                if best is None or (start, -size) < (best[0], -best[1]):
                    best = (start, size, entry)
                break
    return best[2] if best is not None else None


def exact_match(response: str, answer: str) -> bool:
    """VideoLLaMA2's own rule (``eval_audio_video_AVQA.py``): the reply, trailing spaces and dots stripped,
    upper-cased, equals the answer upper-cased."""
    return response.rstrip(" .").upper() == answer.upper()


# --------------------------------------------------------------------------------------------------------------------
# Lettered multiple choice (AVQA)

_LEADING_LETTER = re.compile(r"^\s*[(\[]?([A-Za-z])(?:[)\].:,]|\s*$)")
_STATED_LETTER = re.compile(
    r"\b(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*[(\[]?"
    r"(?:([A-Z])(?![A-Za-z'-])|([a-z])(?=[)\]]|\s*[.!,;]?\s*$))"
)
"""A letter after "answer", "option" or "choice": a capital one anywhere (``"The answer is B, ..."``), a small one
only bracketed or ending the reply (``"the answer is b"``; in ``"the answer is a dog"`` "a" is an article)."""


def parse_choice(response: str, options: Sequence[str]) -> int | None:
    """The index of the option a reply picks, or None.

    A letter first: leading (``"B"``, ``"(C) a dog"``, ``"d."``) or stated (``"The answer is B"``,
    ``"answer: b"``); then the option's text: the reply is an option (``"Playing drums."``), or exactly one
    option's words appear in it (an option inside a longer one, ``"dog"`` in ``"dog barking"``, does not count
    twice). A letter followed by another option's text (``"Answer: A dog"`` where dog is B) contradicts itself and
    is None: neither reading is preferred.
    """
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(options)]
    for pattern in (_LEADING_LETTER, _STATED_LETTER):
        match = pattern.search(response)
        letter = next((group for group in match.groups() if group), "") if match else ""
        if letter and letter.upper() in letters:
            index = letters.index(letter.upper())
            named = _named_option(response[match.end() :], options)
            return index if named in (None, index) else None
    return _named_option(response, options)


def _named_option(response: str, options: Sequence[str]) -> int | None:
    """The option whose text the reply is, or the one option whose words appear in it (not inside a longer one)."""
    said = words(response)
    phrases = [words(option) for option in options]
    for index, phrase in enumerate(phrases):
        if phrase and phrase == said:
            return index
    spans: list[tuple[int, int, int]] = []  # (start, end, option index)
    for index, phrase in enumerate(phrases):
        size = len(phrase)
        for start in range(len(said) - size + 1) if size else ():
            if said[start : start + size] == phrase:
                spans.append((start, start + size, index))
    kept = {
        index
        for start, end, index in spans
        if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in spans)
    }
    return kept.pop() if len(kept) == 1 else None

"""A word-level tokenizer for AV-Synth's closed vocabulary, saved next to the model weights as JSON."""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<video>", "<audio>")


class WordTokenizer:
    """Splits on whitespace; every word must be in the vocabulary (an unknown word is an error, never ``<unk>``)."""

    def __init__(self, words: list[str]):
        if list(words[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
            raise ValueError(f"the vocabulary must start with {SPECIAL_TOKENS}")
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary has duplicate words")
        self.words = list(words)
        self.ids = {word: index for index, word in enumerate(self.words)}
        self.pad_id, self.bos_id, self.eos_id, self.video_id, self.audio_id = (self.ids[t] for t in SPECIAL_TOKENS)

    @classmethod
    def from_texts(cls, texts: list[str]) -> WordTokenizer:
        vocabulary = sorted({word for text in texts for word in text.split()} - set(SPECIAL_TOKENS))
        return cls([*SPECIAL_TOKENS, *vocabulary])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        unknown = [word for word in text.split() if word not in self.ids]
        if unknown:
            raise ValueError(
                f"text {text!r} has words outside the model's vocabulary: {unknown}; "
                f"the vocabulary is {self.words[len(SPECIAL_TOKENS) :]}"
            )
        return [self.ids[word] for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        """Words up to the first ``<eos>``; special tokens are dropped."""
        words = []
        for index in ids:
            if index == self.eos_id:
                break
            if index >= len(SPECIAL_TOKENS):
                words.append(self.words[index])
        return " ".join(words)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": "fastav-word-tokenizer/1", "words": self.words}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        raw = json.loads(Path(path).read_text())
        if raw.get("format") != "fastav-word-tokenizer/1":
            raise ValueError(f"{path}: not a fastav word tokenizer (format {raw.get('format')!r})")
        return cls(raw["words"])

"""Pruning profiles: the per-modality prefix that FastAV's global stage keeps.

A profile says, for each audio-visual modality, how much of its sequence prefix survives the global cut:
the first N tokens, the first fraction f of the modality's tokens, or the first N chunks (frames / time
steps of an interleaved layout). A modality the profile does not name is kept whole. Profiles are written
by hand (``PruningProfile.prefix(audio=10)``: the paper's VideoLLaMA2 setting) or by
``fastav-eval calibrate`` (:mod:`fastav_eval.analysis.calibrate`), which also stores the rollout curves it read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastav_eval.pruning.layout import AV_MODALITIES

PROFILE_FORMAT = "fastav-profile/1"
PROFILE_FIELDS: tuple[str, ...] = ("format", "keep", "num_layers", "global_layer", "source", "rollout")
KEEP_FIELDS: tuple[str, ...] = ("first_tokens", "first_fraction", "first_chunks")
KEEP_RULE_ACCEPTED = (
    "an object with exactly one of first_tokens (an int >= 0), first_fraction (a number in [0, 1]) "
    "or first_chunks (an int >= 0)"
)


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: error messages quote what they got, not a whole file."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_modality(name: Any) -> None:
    if name not in AV_MODALITIES:
        raise ValueError(f"profile keep key {name!r} is not prunable; accepted: {list(AV_MODALITIES)}")


def _keep_rule_from_json(name: str, rule: Any) -> PrefixKeep:
    """One ``keep`` entry of a profile JSON (``{"first_fraction": 0.25}``) as a :class:`PrefixKeep`."""
    where = f"profile keep.{name}"
    if not isinstance(rule, dict):
        raise ValueError(f"{where}={_short(rule)}; accepted: {KEEP_RULE_ACCEPTED}")
    unknown = sorted(key for key in rule if key not in KEEP_FIELDS)
    if unknown:
        raise ValueError(f"{where}={_short(rule)} has unknown key(s) {unknown}; accepted: {KEEP_RULE_ACCEPTED}")
    if len(rule) != 1:
        raise ValueError(f"{where}={_short(rule)} sets {len(rule)} keys; accepted: {KEEP_RULE_ACCEPTED}")
    ((key, value),) = rule.items()
    if key == "first_fraction":
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{where}.first_fraction={_short(value)}; accepted: a number in [0, 1]")
    elif not _is_int(value) or value < 0:
        raise ValueError(f"{where}.{key}={_short(value)}; accepted: an int >= 0")
    return PrefixKeep(**{key: value})


@dataclass(frozen=True)
class PrefixKeep:
    """How much of one modality's prefix to keep. Exactly one field is set.

    Attributes:
        first_tokens: keep the first N tokens of the modality.
        first_fraction: keep the first ``ceil(f * count)`` tokens, f in [0, 1].
        first_chunks: keep every token of the first N chunks of the modality.
    """

    first_tokens: int | None = None
    first_fraction: float | None = None
    first_chunks: int | None = None

    def __post_init__(self) -> None:
        set_fields = [name for name, value in asdict(self).items() if value is not None]
        if len(set_fields) != 1:
            raise ValueError(
                f"PrefixKeep needs exactly one of first_tokens, first_fraction, first_chunks; got {set_fields}"
            )
        if self.first_tokens is not None and (not _is_int(self.first_tokens) or self.first_tokens < 0):
            raise ValueError(f"first_tokens={self.first_tokens!r} must be an int >= 0")
        if self.first_chunks is not None and (not _is_int(self.first_chunks) or self.first_chunks < 0):
            raise ValueError(f"first_chunks={self.first_chunks!r} must be an int >= 0")
        if self.first_fraction is not None and not _is_number(self.first_fraction):
            raise ValueError(f"first_fraction={self.first_fraction!r} must be a number in [0, 1]")
        if self.first_fraction is not None and not 0.0 <= self.first_fraction <= 1.0:
            raise ValueError(f"first_fraction={self.first_fraction!r} must be in [0, 1]")

    def keep_mask(self, rank: torch.Tensor, chunk: torch.Tensor, is_modality: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` bool: the modality's tokens inside the kept prefix.

        Args:
            rank, chunk: ``[B, L]`` from :class:`~fastav_eval.pruning.layout.ModalityLayout`.
            is_modality: ``[B, L]`` bool, True on this modality's tokens.
        """
        if self.first_chunks is not None:
            return is_modality & (chunk < self.first_chunks)
        if self.first_tokens is not None:
            return is_modality & (rank < self.first_tokens)
        count = is_modality.sum(1, keepdim=True).double()
        keep = torch.ceil(count * float(self.first_fraction) - 1e-9).long()
        return is_modality & (rank < keep)

    def describe(self) -> str:
        if self.first_tokens is not None:
            return f"first {self.first_tokens} tokens"
        if self.first_chunks is not None:
            return f"first {self.first_chunks} chunks"
        return f"first {100 * float(self.first_fraction):.1f}% of tokens"


@dataclass(frozen=True)
class PruningProfile:
    """The global stage's positional rule, and where it came from.

    Attributes:
        keep: modality name ("video" / "audio") -> :class:`PrefixKeep`. Unnamed modalities are kept whole.
        num_layers: decoder depth of the model the profile was calibrated on (None: not model-specific).
        global_layer: the layer the profile was calibrated for (None: not model-specific).
        source: "manual" or "rollout".
        rollout: calibration record (alpha, sample count, relative-position bins, per-modality mass curves).
    """

    keep: dict[str, PrefixKeep]
    num_layers: int | None = None
    global_layer: int | None = None
    source: str = "manual"
    rollout: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.keep, dict):
            raise ValueError(f"profile keep={_short(self.keep)}; accepted: a dict of modality name -> PrefixKeep")
        for name, rule in self.keep.items():
            _check_modality(name)
            if not isinstance(rule, PrefixKeep):
                raise ValueError(f"profile keep.{name}={_short(rule)}; accepted: a PrefixKeep")
        for name in ("num_layers", "global_layer"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"profile {name}={_short(value)}; accepted: an int >= 1 or null")
        if self.num_layers is not None and self.global_layer is not None and self.global_layer >= self.num_layers:
            raise ValueError(
                f"profile global_layer={self.global_layer}; accepted: an int in [1, num_layers - 1] = "
                f"[1, {self.num_layers - 1}] (num_layers={self.num_layers}) or null"
            )
        if not isinstance(self.source, str):
            raise ValueError(f"profile source={_short(self.source)}; accepted: a string ('manual' or 'rollout')")
        if self.rollout is not None and not isinstance(self.rollout, dict):
            raise ValueError(f"profile rollout={_short(self.rollout)}; accepted: an object or null")

    @classmethod
    def prefix(
        cls,
        *,
        video: int | None = None,
        audio: int | None = None,
        video_fraction: float | None = None,
        audio_fraction: float | None = None,
    ) -> PruningProfile:
        """A hand-written profile: keep the first N tokens (or fraction) of each named modality."""
        keep: dict[str, PrefixKeep] = {}
        for name, tokens, fraction in (("video", video, video_fraction), ("audio", audio, audio_fraction)):
            if tokens is not None and fraction is not None:
                raise ValueError(f"give {name} or {name}_fraction, not both")
            if tokens is not None:
                keep[name] = PrefixKeep(first_tokens=tokens)
            elif fraction is not None:
                keep[name] = PrefixKeep(first_fraction=fraction)
        return cls(keep=keep)

    def check(self, num_layers: int, global_layer: int) -> None:
        """Raise a ValueError if the profile was calibrated for another model depth or global layer."""
        if self.num_layers is not None and self.num_layers != num_layers:
            raise ValueError(
                f"profile.num_layers={self.num_layers} does not match the model's {num_layers} decoder layers"
            )
        if self.global_layer is not None and self.global_layer != global_layer:
            raise ValueError(
                f"profile.global_layer={self.global_layer} does not match config global_layer={global_layer}"
            )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "keep": {
                name: {k: v for k, v in asdict(rule).items() if v is not None} for name, rule in self.keep.items()
            },
            "num_layers": self.num_layers,
            "global_layer": self.global_layer,
            "source": self.source,
            "rollout": self.rollout,
        }

    @classmethod
    def from_dict(cls, data: Any) -> PruningProfile:
        """The profile a :meth:`to_dict` object describes; any other shape is a ValueError naming the field."""
        if not isinstance(data, dict):
            raise ValueError(
                f"profile={_short(data)}; accepted: a JSON object with format {PROFILE_FORMAT!r} and keep "
                f"(keys {list(PROFILE_FIELDS)})"
            )
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"profile format={_short(data.get('format'))}; accepted: {PROFILE_FORMAT!r}")
        unknown = sorted(key for key in data if key not in PROFILE_FIELDS)
        if unknown:
            raise ValueError(f"profile has unknown key(s) {unknown}; accepted: {list(PROFILE_FIELDS)}")
        keep_accepted = f"an object mapping {' / '.join(map(repr, AV_MODALITIES))} to {KEEP_RULE_ACCEPTED}"
        if "keep" not in data:
            raise ValueError(f"profile keep is missing; accepted: {keep_accepted}")
        if not isinstance(data["keep"], dict):
            raise ValueError(f"profile keep={_short(data['keep'])}; accepted: {keep_accepted}")
        keep = {}
        for name, rule in data["keep"].items():
            _check_modality(name)
            keep[name] = _keep_rule_from_json(name, rule)
        return cls(
            keep=keep,
            num_layers=data.get("num_layers"),
            global_layer=data.get("global_layer"),
            source=data.get("source", "manual"),
            rollout=data.get("rollout"),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PruningProfile:
        """Read a profile JSON file; a missing file, invalid JSON or a bad field is a ValueError naming the path."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"profile={str(path)!r} is not a file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(
                f"profile={str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}); "
                f"accepted: a {PROFILE_FORMAT} JSON object"
            ) from error
        except json.JSONDecodeError as error:
            raise ValueError(
                f"profile={str(path)!r} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                f"accepted: a {PROFILE_FORMAT} JSON object"
            ) from error
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"profile={str(path)!r}: {error}") from error

    def describe(self) -> str:
        if not self.keep:
            return "keep every audio-visual token"
        return ", ".join(f"{name}: {rule.describe()}" for name, rule in sorted(self.keep.items()))

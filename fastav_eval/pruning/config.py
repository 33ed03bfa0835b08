"""Every knob of the pruning engine, validated in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastav_eval.pruning.profile import PruningProfile
from fastav_eval.pruning.rules import FINE_RULES as FINE_RULES  # re-exported: the CLI and the sweep read them here
from fastav_eval.pruning.rules import GLOBAL_RULES as GLOBAL_RULES
from fastav_eval.pruning.rules import check_rule

if TYPE_CHECKING:
    from fastav_eval.pruning.rules import Chooser


@dataclass(frozen=True)
class PruningConfig:
    """FastAV's two stages and the tokens they may never drop.

    Layer indices are 0-based: with ``global_layer=14`` layers 0..13 see every token and layer 14 is the first
    to see the globally pruned sequence (the paper's "14 of 28"). The fine stage then drops ``fine_ratio`` of
    the remaining audio-visual tokens before every later layer, using the last-query scores of the layer before.

    Attributes:
        global_rule: one of :data:`GLOBAL_RULES` (the global-stage rules of
            :data:`fastav_eval.pruning.rules.RULES`), or None for no global stage.
        global_layer: first layer that sees the globally pruned sequence; None means half the depth.
        profile: the per-modality prefix the global stage keeps (a :class:`PruningProfile` or a JSON path).
            ``positional`` keeps exactly that prefix; the other global rules keep the same number of
            audio-visual tokens, chosen their way.
        fine_rule: one of :data:`FINE_RULES`.
        fine_ratio: share P of the remaining audio-visual tokens dropped before each layer after
            ``global_layer``, in [0, 1); 0 disables the fine stage.
        sink_tokens: the first N tokens of each sample are never dropped (attention sinks).
        seed: seed of the ``random`` rules.
        chooser: an outside chooser (e.g. a learned policy) consulted at every prune point before the
            built-in rule; see :class:`fastav_eval.pruning.rules.Chooser`.
    """

    global_rule: str | None = "positional"
    global_layer: int | None = None
    profile: PruningProfile | str | Path | None = None
    fine_rule: str = "low_attentive"
    fine_ratio: float = 0.2
    sink_tokens: int = 4
    seed: int = 0
    chooser: Chooser | Callable | None = None

    def __post_init__(self) -> None:
        check_rule("global_rule", self.global_rule, "global", off=(None,))
        check_rule("fine_rule", self.fine_rule, "fine")
        if not isinstance(self.fine_ratio, int | float) or not 0.0 <= self.fine_ratio < 1.0:
            raise ValueError(f"fine_ratio={self.fine_ratio!r}; accepted: a number in [0, 1)")
        if (
            self.global_layer is not None
            and self.global_layer != LAST_LAYER
            and (not isinstance(self.global_layer, int) or self.global_layer < 1)
        ):
            raise ValueError(f"global_layer={self.global_layer!r}; accepted: an int in [1, num_layers - 1]")
        if not isinstance(self.sink_tokens, int) or self.sink_tokens < 0:
            raise ValueError(f"sink_tokens={self.sink_tokens!r}; accepted: an int >= 0")
        if self.chooser is not None and not callable(self.chooser):
            raise ValueError(f"chooser={self.chooser!r}; accepted: a callable or None")
        if self.profile is not None and not isinstance(self.profile, PruningProfile | str | Path):
            raise ValueError(f"profile={self.profile!r}; accepted: a PruningProfile, a JSON path, or None")

    @classmethod
    def chosen_by(cls, chooser: Chooser | Callable, **fields: Any) -> PruningConfig:
        """Every sample's cut decided by ``chooser`` alone: no global rule and no profile, cuts allowed up to the last
        layer (``LAST_LAYER``), no fine stage unless a decision sets one; ``fields`` override any of these."""
        return cls(**{"global_rule": None, "global_layer": LAST_LAYER, "fine_ratio": 0.0, **fields}, chooser=chooser)

    @classmethod
    def off(cls) -> PruningConfig:
        """No pruning: the engine's forward then computes exactly what the stock decoder does."""
        return cls(global_rule=None, fine_ratio=0.0)

    def resolve(self, num_layers: int) -> PruningConfig:
        """Check the config against a decoder of ``num_layers`` layers; return it with defaults filled in.

        ``global_layer`` becomes concrete and ``profile`` a loaded :class:`PruningProfile`.
        """
        global_layer = resolve_global_layer(self.global_layer, num_layers)
        profile = self.profile
        if isinstance(profile, str | Path):
            profile = PruningProfile.load(profile)
        if self.global_rule is not None:
            if profile is None:
                raise ValueError(
                    f"global_rule={self.global_rule!r} needs a profile: the positional rule keeps its prefix and "
                    "the other rules keep as many tokens (e.g. profile=PruningProfile.prefix(audio=10))"
                )
            profile.check(num_layers, global_layer)
        return dataclasses.replace(self, global_layer=global_layer, profile=profile)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (the profile in full; a chooser by its ``describe()`` where it has one, e.g. a learned
        policy's path and hash, else by name): what a run record stores and hashes."""
        profile = self.profile.to_dict() if isinstance(self.profile, PruningProfile) else self.profile
        chooser = None if self.chooser is None else getattr(self.chooser, "__name__", type(self.chooser).__name__)
        if callable(getattr(self.chooser, "describe", None)):
            chooser = self.chooser.describe()  # type: ignore[union-attr]
        return {
            "global_rule": self.global_rule,
            "global_layer": self.global_layer,
            "profile": str(profile) if isinstance(profile, Path) else profile,
            "fine_rule": self.fine_rule,
            "fine_ratio": float(self.fine_ratio),
            "sink_tokens": self.sink_tokens,
            "seed": self.seed,
            "chooser": chooser,
        }

    def describe(self) -> str:
        parts = []
        if self.global_rule is not None:
            profile = self.profile.describe() if isinstance(self.profile, PruningProfile) else self.profile
            parts.append(f"global {self.global_rule} at layer {self.global_layer} ({profile})")
        if self.fine_ratio > 0:
            parts.append(f"fine {self.fine_rule} P={self.fine_ratio:g} after it")
        if self.chooser is not None:
            parts.append(f"chooser {getattr(self.chooser, '__name__', type(self.chooser).__name__)}")
        return "; ".join(parts) or "no pruning"


LAST_LAYER = -1
"""``global_layer=LAST_LAYER`` resolves to the decoder's last layer: a chooser may then cut a sample anywhere."""


def resolve_global_layer(global_layer: int | None, num_layers: int) -> int:
    """``global_layer`` checked against a ``num_layers``-deep decoder; None means half the depth, ``LAST_LAYER``
    the last layer."""
    resolved = num_layers // 2 if global_layer is None else global_layer
    if resolved == LAST_LAYER:
        resolved = num_layers - 1
    if not 1 <= resolved < num_layers:
        raise ValueError(
            f"global_layer={resolved}; accepted: an int in [1, {num_layers - 1}] for a "
            f"{num_layers}-layer decoder (layer 0's KV cache is never pruned)"
        )
    return resolved

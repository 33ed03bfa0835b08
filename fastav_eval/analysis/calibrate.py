"""``fastav-eval calibrate``: attention rollout on a model's own task documents -> the global stage's profile.

The unpruned model (any FastAV wrapper) answers N documents of each task one at a time with eager attention up to
the global layer K; rollout (:mod:`fastav_eval.pruning.rollout`) gives, after each layer, how much every prompt
token feeds the last one. Per modality and relative position that mass is averaged over the documents, and the
profile keeps, per modality, the shortest prefix holding ``mass`` of it (or the largest mass whose mean FLOPs meet
``target_flops``). The heatmap (layer x position, per modality) and the importance curves show what the profile
was read from; flat curves are flagged, because a positional prefix then cuts information evenly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fastav_eval.analysis.tasks import TaskDocument
from fastav_eval.models.base import SampleError
from fastav_eval.pruning import DecoderShape, ModalityLayout, PruningConfig, PruningProfile, simulate_prefill
from fastav_eval.pruning.config import GLOBAL_RULES, resolve_global_layer
from fastav_eval.pruning.decoder import find_text_model
from fastav_eval.pruning.layout import modality_code
from fastav_eval.pruning.rollout import RolloutCurves, binned_mass, modality_mass_curves, rollout_last_rows

log = logging.getLogger(__name__)

FLAT_PREFIX = 0.8
"""A modality is flat when the shortest prefix holding 90% of its rollout mass covers at least this share of its
tokens (a uniform curve needs 90%; VideoLLaMA2's audio, where the paper keeps 10 of 1,496 tokens, needs ~1%)."""

HEATMAP_ORDER = ("text", "video", "audio")


def token_density(influence: torch.Tensor, layout: ModalityLayout, bins: int) -> dict[str, np.ndarray]:
    """Rollout mass per token relative to a uniform share, per modality and relative-position bin.

    Args:
        influence: ``[L]`` one rollout row of a sample (batch 1, unpadded ``layout``).

    Returns:
        modality -> ``[bins]``: mean influence of the bin's tokens times ``L`` (1 = every token alike).
    """
    density = {}
    for name in HEATMAP_ORDER:
        binned = binned_mass(influence, layout, name, bins)
        if binned is not None:
            mass, tokens = binned
            density[name] = (mass / tokens.clamp_min(1) * influence.shape[-1]).numpy()
    return density


@dataclass(frozen=True)
class Calibration:
    """What rollout measured on the calibration documents.

    Attributes:
        curves: per-modality mean rollout mass along relative position at ``global_layer`` (the profile's input).
        density: modality -> ``[global_layer, bins]`` mean :func:`token_density` after each layer (the heatmap).
        modality_share: modality -> ``[global_layer]`` mean share of the last token's rollout mass on it.
        layouts: each document's layout (for FLOPs targets).
        shape: the decoder's sizes.
        documents: ``task/doc_id`` of every document used.
    """

    curves: RolloutCurves
    density: dict[str, np.ndarray]
    modality_share: dict[str, np.ndarray]
    layouts: list[ModalityLayout]
    shape: DecoderShape
    documents: list[str]

    def prefix_for_mass(self, mass: float = 0.9) -> dict[str, float]:
        """Per AV modality, the share of its tokens the shortest prefix holding ``mass`` of its rollout covers."""
        bins = {name: len(values) for name, values in self.curves.curves.items()}
        return {name: kept / bins[name] for name, kept in self.curves.kept_bins(mass).items()}

    def flat_modalities(self) -> dict[str, float]:
        """The AV modalities whose 90%-mass prefix covers at least :data:`FLAT_PREFIX` of their tokens."""
        return {name: share for name, share in self.prefix_for_mass(0.9).items() if share >= FLAT_PREFIX}

    def flatness_warning(self) -> str | None:
        flat = self.flat_modalities()
        if not flat:
            return None
        shares = ", ".join(f"{name} {100 * share:.0f}%" for name, share in sorted(flat.items()))
        return (
            f"flat rollout at layer {self.curves.global_layer}: the shortest prefix holding 90% of the rollout mass "
            f"covers {shares} of the tokens (a uniform curve: 90%). The model spreads what it reads from these "
            "tokens evenly over their positions, so a positional profile cuts information evenly too: whatever lies "
            "past the kept prefix is lost, not only what matters least. Before trusting the profile, compare it with "
            "global_rule=random and global_rule=low_attentive at the same budget (fastav-eval sweep --vary "
            f"global_rule={','.join(GLOBAL_RULES)})."
        )


SPLIT_WORDS = ("test", "val", "validation", "dev", "train")
"""Split names a task's data file path may carry (``data/val/avsynth_qa.parquet`` read as lmms-eval's ``test``)."""


def evaluated_split(task: Any) -> str:
    """The split an lmms-eval task evaluates: its ``test_split`` (else ``validation_split``), or the split word a
    local data file for it is filed under (``data/val/...``: AV-Synth's val tasks read val files as ``test``)."""
    config = task.config
    split = config.test_split or config.validation_split or ""
    files = (config.dataset_kwargs or {}).get("data_files")
    source = files.get(split) if isinstance(files, dict) else None
    if isinstance(source, str):
        words = [part.lower() for part in (*Path(source).parent.parts, Path(source).stem.split("_")[-1])]
        filed = [word for word in words if word in SPLIT_WORDS]
        if filed:
            return filed[-1]
    return str(split)


def test_split_warning(tasks: dict[str, Any]) -> str | None:
    """A warning naming the tasks (name -> lmms-eval task object) that evaluate a test split, or None."""
    on_test = sorted(name for name, task in tasks.items() if evaluated_split(task) == "test")
    if not on_test:
        return None
    return (
        f"calibrating on the test split of {on_test}: a profile read off the split you report flatters it; "
        "calibrate on a val split (AV-Synth: --tasks avsynth_val) and report on test"
    )


def calibration_inputs(
    model: Any, documents: Iterable[TaskDocument]
) -> Iterable[tuple[TaskDocument, dict[str, Any], ModalityLayout]]:
    """Each document through the wrapper's adapter, one at a time: ``(document, forward kwargs, layout)``.

    A document the adapter cannot answer (missing media) is skipped with a warning, as ``on_error=record`` would.
    """
    adapter = model.adapter
    for index, document in enumerate(documents):
        try:
            loaded = adapter.load_request(document.request, index)
        except SampleError as error:
            log.warning("calibration skips %s doc %d: %s", document.task, document.doc_id, error.reason)
            continue
        with torch.no_grad():
            inputs = adapter.prepare([loaded])
        yield document, inputs.generate_kwargs, inputs.layout


def calibrate(
    model: Any, documents: Iterable[TaskDocument], global_layer: int | None = None, alpha: float = 0.5, bins: int = 20
) -> Calibration:
    """Rollout of the unpruned ``model`` (a FastAV wrapper built with ``prune=none``) over ``documents``.

    The wrapper's engine and timer are removed first (rollout needs the stock decoder); the model is not usable
    for evaluation afterwards.
    """
    if model.prune != "none":
        raise ValueError(f"calibration needs the unpruned model; got prune={model.prune!r} (build it with prune=none)")
    if not isinstance(alpha, int | float) or not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}; accepted: a number in (0, 1] (the attention's weight against the residual)")
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins={bins!r}; accepted: an int >= 1")
    model.runner.close()
    decoder = model.adapter.decoder
    text_model = find_text_model(decoder)
    global_layer = resolve_global_layer(global_layer, len(text_model.layers))
    measured = []
    for document, inputs, layout in tqdm(calibration_inputs(model, documents), desc="rollout calibration", unit="doc"):
        if layout.batch_size != 1 or not bool(layout.valid.all()):
            raise ValueError("calibration samples must be batch 1 without padding")
        measured.append(
            (f"{document.task}/{document.doc_id}", rollout_last_rows(decoder, inputs, global_layer, alpha), layout)
        )
    return aggregate(measured, DecoderShape.from_config(text_model.config), alpha, bins)


def aggregate(
    measured: list[tuple[str, torch.Tensor, ModalityLayout]], shape: DecoderShape, alpha: float, bins: int
) -> Calibration:
    """Average per-document rollout rows into a :class:`Calibration`.

    Args:
        measured: ``(name, rows [K, L], layout)`` per document: row ``l`` is the last token's rollout after
            layer ``l`` (:func:`~fastav_eval.pruning.rollout.rollout_last_rows`), ``layout`` batch 1 unpadded.
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins={bins!r}; accepted: an int >= 1")
    if not measured:
        raise ValueError("no calibration document could be run (see the warnings above)")
    global_layer = measured[0][1].shape[0]
    curve_totals: dict[str, np.ndarray] = {}
    density_totals: dict[str, np.ndarray] = {}
    share_totals: dict[str, np.ndarray] = {}
    having: dict[str, int] = {}  # documents holding each modality: the means are over those only
    for _, rows, layout in measured:
        for name in HEATMAP_ORDER:
            having[name] = having.get(name, 0) + int(bool((layout.modality[0] == modality_code(name)).any()))
        for layer, row in enumerate(rows):
            for name, values in token_density(row, layout, bins).items():
                density_totals.setdefault(name, np.zeros((global_layer, bins)))[layer] += values
            for name in HEATMAP_ORDER:
                share = float(row[layout.modality[0] == modality_code(name)].sum() / row.sum())
                share_totals.setdefault(name, np.zeros(global_layer))[layer] += share
        for name, curve in modality_mass_curves(rows[-1], layout, bins).items():
            curve_totals[name] = curve_totals.get(name, np.zeros(bins)) + curve.numpy()
    count = len(measured)
    curves = {name: (total / having[name]).tolist() for name, total in curve_totals.items()}
    return Calibration(
        curves=RolloutCurves(curves, shape.num_layers, global_layer, alpha, count),
        density={name: total / having[name] for name, total in density_totals.items()},
        modality_share={name: total / max(having[name], 1) for name, total in share_totals.items()},
        layouts=[layout for _, _, layout in measured],
        shape=shape,
        documents=[name for name, _, _ in measured],
    )


def mean_relative_flops(layouts: list[ModalityLayout], config: PruningConfig, shape: DecoderShape) -> float:
    """Mean relative prefill FLOPs of ``config`` over ``layouts`` (the engine's schedule, simulated)."""
    values = [float(simulate_prefill(lay, config, shape.num_layers).relative_flops(shape)[0]) for lay in layouts]
    return float(np.mean(values))


def profile_for_target(
    curves: RolloutCurves,
    layouts: list[ModalityLayout],
    shape: DecoderShape,
    target_flops: float,
    fine_ratio: float,
) -> PruningProfile:
    """The profile of the largest mass (in steps of 0.01) whose mean relative FLOPs stay <= ``target_flops``."""
    for mass in np.arange(1.0, 0.0, -0.01):
        profile = curves.profile(round(float(mass), 2), quiet=True)
        flops = mean_relative_flops(layouts, PruningConfig(profile=profile, fine_ratio=fine_ratio), shape)
        if flops <= target_flops:
            log.info("target %.1f%% FLOPs at fine ratio %g: mass %.2f -> %.1f%% (%s)",
                     target_flops, fine_ratio, mass, flops, profile.describe())  # fmt: skip
            rollout = {**(profile.rollout or {}), "target_flops": target_flops, "fine_ratio": fine_ratio,
                       "calibration_flops": flops}  # fmt: skip
            return PruningProfile(profile.keep, profile.num_layers, profile.global_layer, profile.source, rollout)
    raise ValueError(f"target_flops={target_flops}: no rollout prefix reaches it (the text alone costs more)")


def choose_profile(
    calibration: Calibration, mass: float | None = None, target_flops: float | None = None, fine_ratio: float = 0.2
) -> PruningProfile:
    """The profile from ``mass`` (default 0.9) or from ``target_flops``, never both."""
    if mass is not None and target_flops is not None:
        raise ValueError("give mass or target_flops, not both")
    if mass is not None and not 0.0 < mass <= 1.0:
        raise ValueError(f"mass={mass!r}; accepted: a number in (0, 1] (the share of rollout mass the prefix holds)")
    if target_flops is not None and not 0.0 < target_flops <= 100.0:
        raise ValueError(f"target_flops={target_flops!r}; accepted: a number in (0, 100] (% of the unpruned FLOPs)")
    if not 0.0 <= fine_ratio < 1.0:
        raise ValueError(f"fine_ratio={fine_ratio!r}; accepted: a number in [0, 1)")
    if target_flops is not None:
        return profile_for_target(calibration.curves, calibration.layouts, calibration.shape, target_flops, fine_ratio)
    return calibration.curves.profile(0.9 if mass is None else mass)


def write_outputs(calibration: Calibration, profile: PruningProfile, out: str | Path) -> dict[str, Path]:
    """The profile JSON at ``out``, and beside it ``<stem>_rollout.png`` (heatmap) and ``<stem>_importance.png``."""
    from fastav_eval.plots import plot_importance_curves, plot_rollout_heatmap

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    profile.save(out)
    title = f"{calibration.curves.num_samples} documents, rollout alpha {calibration.curves.alpha:g}"
    heatmap = plot_rollout_heatmap(
        calibration.density, calibration.modality_share, title, out.with_name(f"{out.stem}_rollout.png")
    )
    curves = plot_importance_curves(
        calibration.curves.curves,
        {name: rule.first_fraction for name, rule in profile.keep.items() if rule.first_fraction is not None},
        f"rollout at layer {calibration.curves.global_layer} of {calibration.curves.num_layers}, {title}",
        out.with_name(f"{out.stem}_importance.png"),
    )
    return {"profile": out, "heatmap": heatmap, "importance": curves}

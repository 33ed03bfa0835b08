"""Attention rollout (Abnar & Zuidema, 2020) for offline calibration of the global stage's profile.

For layers ``0 .. K-1`` with head-averaged attention ``A_l``::

    Â_l = α·A_l + (1 − α)·I      (rows renormalised)
    R_K = Â_{K-1} · … · Â_1 · Â_0

Row ``L-1`` of ``R_K`` says how much each input token feeds the last token at layer K. Calibration averages,
over samples, how that mass spreads along each modality's relative position, and keeps for each modality the
shortest prefix that holds ``mass`` of it. This needs eager attention weights (``[L, L]`` per layer), so it runs
offline on a handful of samples; inference never computes rollout, it only reads the saved profile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fastav_eval.pruning.config import resolve_global_layer
from fastav_eval.pruning.decoder import ENGINE_ATTRIBUTE, find_text_model
from fastav_eval.pruning.layout import AV_MODALITIES, ModalityLayout, modality_code
from fastav_eval.pruning.profile import PrefixKeep, PruningProfile
from fastav_eval.pruning.scoring import base_attention, register_wrapper

logger = logging.getLogger(__name__)

ROLLOUT_ATTENTION = "fastav_rollout"
RECORDER_ATTRIBUTE = "_fastav_rollout"


def residual_attention(attention: torch.Tensor, alpha: float) -> torch.Tensor:
    """``Â = α·A + (1 − α)·I`` with rows renormalised; ``attention`` ``[..., L, L]`` (head-averaged)."""
    eye = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
    mixed = alpha * attention + (1.0 - alpha) * eye
    return mixed / mixed.sum(-1, keepdim=True)


def attention_rollout(attentions: Sequence[torch.Tensor], alpha: float = 0.5) -> torch.Tensor:
    """Rollout over layers in order: ``R = Â_{n-1} ··· Â_0``.

    Args:
        attentions: per layer ``[B, H, L, L]`` attention weights (or ``[B, L, L]`` already head-averaged).
        alpha: weight of attention against the residual identity, in (0, 1].

    Returns:
        ``[B, L, L]`` fp32 rollout matrix (row-stochastic).
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}; accepted: a number in (0, 1]")
    result: torch.Tensor | None = None
    for attention in attentions:
        averaged = attention.float().mean(1) if attention.ndim == 4 else attention.float()
        mixed = residual_attention(averaged, alpha)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ValueError("attentions must hold at least one layer")
    return result


class _RolloutRecorder:
    """Accumulates the rollout product of layers ``< num_layers`` inside the attention function."""

    def __init__(self, num_layers: int, alpha: float) -> None:
        self.num_layers = num_layers
        self.alpha = alpha
        self.product: torch.Tensor | None = None

    def update(self, layer_idx: int, weights: torch.Tensor) -> None:
        if layer_idx >= self.num_layers:
            return
        mixed = residual_attention(weights.float().mean(1), self.alpha)
        self.product = mixed if self.product is None else mixed @ self.product


def _rollout_attention(module, query, key, value, attention_mask, **kwargs):
    output, weights = base_attention("eager", module)(module, query, key, value, attention_mask, **kwargs)
    recorder: _RolloutRecorder | None = getattr(module, RECORDER_ATTRIBUTE, None)
    if recorder is not None:
        recorder.update(module.layer_idx, weights)
    return output, None


@torch.no_grad()
def rollout_last_row(model: nn.Module, inputs: dict[str, Any], num_layers: int, alpha: float = 0.5) -> torch.Tensor:
    """Run ``model(**inputs)`` (batch 1, no padding) and return row L-1 of the rollout of layers ``< num_layers``.

    Returns:
        ``[L]`` fp32, the influence of each prompt token on the last token at layer ``num_layers``.
    """
    text_model = find_text_model(model)
    if getattr(text_model, ENGINE_ATTRIBUTE, None) is not None:
        raise ValueError("uninstall FastAV before calibrating: rollout needs the unpruned model")
    register_wrapper(ROLLOUT_ATTENTION, _rollout_attention, masks_of="eager")
    recorder = _RolloutRecorder(num_layers, alpha)
    original = text_model.config._attn_implementation
    text_model.config._attn_implementation = ROLLOUT_ATTENTION
    for layer in text_model.layers:
        setattr(layer.self_attn, RECORDER_ATTRIBUTE, recorder)
    try:
        model(**inputs, use_cache=False)
    finally:
        text_model.config._attn_implementation = original
        for layer in text_model.layers:
            delattr(layer.self_attn, RECORDER_ATTRIBUTE)
    if recorder.product is None:
        raise RuntimeError("no attention weights were recorded: does the model route attention through its config?")
    if recorder.product.shape[0] != 1:
        raise ValueError(f"calibration runs one sample at a time; got batch {recorder.product.shape[0]}")
    return recorder.product[0, -1]


def modality_mass_curves(influence: torch.Tensor, layout: ModalityLayout, bins: int) -> dict[str, torch.Tensor]:
    """Per modality, the share of its rollout mass in each of ``bins`` equal relative-position bins.

    Args:
        influence: ``[L]`` rollout row of one sample.
        layout: that sample's layout (batch 1, no padding).

    Returns:
        modality name -> ``[bins]`` fp32 summing to 1 (absent modalities are left out).
    """
    curves = {}
    for name in AV_MODALITIES:
        is_modality = layout.modality[0] == modality_code(name)
        count = int(is_modality.sum())
        if count == 0:
            continue
        relative = layout.rank[0][is_modality].float() / count
        which = torch.clamp((relative * bins).long(), max=bins - 1)
        mass = torch.zeros(bins).index_add_(0, which.cpu(), influence[is_modality].float().cpu())
        curves[name] = mass / mass.sum().clamp_min(1e-12)
    return curves


@dataclass(frozen=True)
class RolloutCurves:
    """Mean per-modality rollout mass over relative-position bins, measured once on calibration samples.

    Attributes:
        curves: modality name -> ``bins`` floats summing to 1 (the mean over samples of each sample's curve).
        num_layers, global_layer: the model's depth and the layer the rollout ran up to (exclusive).
        alpha, num_samples: rollout's attention weight and how many samples were averaged.
    """

    curves: dict[str, list[float]]
    num_layers: int
    global_layer: int
    alpha: float
    num_samples: int

    def kept_bins(self, mass: float) -> dict[str, int]:
        """Per modality, the fewest leading bins holding ``mass`` of its mean rollout mass."""
        if not 0.0 < mass <= 1.0:
            raise ValueError(f"mass={mass!r}; accepted: a number in (0, 1]")
        kept = {}
        for name, values in self.curves.items():
            reached = torch.nonzero(torch.tensor(values).cumsum(0) >= mass - 1e-6)
            kept[name] = int(reached[0]) + 1 if len(reached) else len(values)
        return kept

    def profile(self, mass: float = 0.9, quiet: bool = False) -> PruningProfile:
        """Keep, per modality, the shortest prefix of whole bins holding ``mass`` of its mean rollout mass."""
        keep: dict[str, PrefixKeep] = {}
        for name, kept_bins in self.kept_bins(mass).items():
            bins = len(self.curves[name])
            keep[name] = PrefixKeep(first_fraction=kept_bins / bins)
            if not quiet:
                logger.info(
                    "%s: %.0f%% of rollout mass at layer %d lies in the first %d/%d of its positions -> keep %.1f%%",
                    name, 100 * mass, self.global_layer, kept_bins, bins, 100 * kept_bins / bins,
                )  # fmt: skip
        return PruningProfile(
            keep=keep,
            num_layers=self.num_layers,
            global_layer=self.global_layer,
            source="rollout",
            rollout={
                "alpha": self.alpha,
                "mass": mass,
                "bins": len(next(iter(self.curves.values()))),
                "num_samples": self.num_samples,
                "curves": self.curves,
            },
        )


def rollout_curves(
    model: nn.Module,
    samples: Iterable[tuple[dict[str, Any], ModalityLayout]],
    global_layer: int | None = None,
    alpha: float = 0.5,
    bins: int = 20,
) -> RolloutCurves:
    """Run rollout on every sample (batch 1, unpadded, eager attention) and average the per-modality curves.

    Args:
        model: the unpruned model (a causal LM or a thinker).
        samples: ``(model inputs, layout)`` pairs, one sample each (``model(**inputs)`` must run it).
        global_layer: the layer the profile is for (rollout over layers ``< global_layer``); None = half depth.
        alpha: rollout's attention weight against the residual identity.
        bins: relative-position resolution of the curves and of the kept prefix.
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins={bins!r}; accepted: an int >= 1")
    num_layers = len(find_text_model(model).layers)
    global_layer = resolve_global_layer(global_layer, num_layers)
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for inputs, layout in tqdm(samples, desc="rollout calibration", unit="sample"):
        if layout.batch_size != 1 or not bool(layout.valid.all()):
            raise ValueError("calibration samples must be batch 1 without padding")
        influence = rollout_last_row(model, inputs, global_layer, alpha)
        for name, curve in modality_mass_curves(influence, layout, bins).items():
            totals[name] = totals.get(name, torch.zeros(bins)) + curve
        count += 1
    if count == 0:
        raise ValueError("samples is empty: calibration needs at least one sample")
    curves = {name: (total / count).tolist() for name, total in totals.items()}
    return RolloutCurves(curves, num_layers, global_layer, alpha, count)


def calibrate_profile(
    model: nn.Module,
    samples: Iterable[tuple[dict[str, Any], ModalityLayout]],
    global_layer: int | None = None,
    alpha: float = 0.5,
    mass: float = 0.9,
    bins: int = 20,
) -> PruningProfile:
    """Calibrate a positional profile from rollout on ``samples``: ``rollout_curves(...).profile(mass)``.

    Returns:
        a profile keeping, per modality, the first ``k / bins`` of its tokens, the smallest such prefix
        holding ``mass`` of the modality's mean rollout mass; its ``rollout`` field records the curves.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass={mass!r}; accepted: a number in (0, 1]")
    return rollout_curves(model, samples, global_layer, alpha, bins).profile(mass)

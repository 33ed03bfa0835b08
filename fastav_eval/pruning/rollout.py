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


def calibrate_profile(
    model: nn.Module,
    samples: Iterable[tuple[dict[str, Any], ModalityLayout]],
    global_layer: int | None = None,
    alpha: float = 0.5,
    mass: float = 0.9,
    bins: int = 20,
) -> PruningProfile:
    """Calibrate a positional profile from rollout on ``samples``.

    Args:
        model: the unpruned model (a causal LM or a thinker).
        samples: ``(model inputs, layout)`` pairs, one sample each (``model(**inputs)`` must run it).
        global_layer: the layer the profile is for (rollout over layers ``< global_layer``); None = half depth.
        alpha: rollout's attention weight against the residual identity.
        mass: share of each modality's rollout mass the kept prefix must hold, in (0, 1].
        bins: relative-position resolution of the curves and of the kept prefix.

    Returns:
        a profile keeping, per modality, the first ``k / bins`` of its tokens, the smallest such prefix
        holding ``mass`` of the modality's mean rollout mass; its ``rollout`` field records the curves.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass={mass!r}; accepted: a number in (0, 1]")
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
    keep: dict[str, PrefixKeep] = {}
    curves: dict[str, list[float]] = {}
    for name, total in totals.items():
        curve = total / count
        curves[name] = curve.tolist()
        reached = torch.nonzero(curve.cumsum(0) >= mass - 1e-6)
        kept_bins = int(reached[0]) + 1 if len(reached) else bins
        keep[name] = PrefixKeep(first_fraction=kept_bins / bins)
        logger.info(
            "%s: %.0f%% of rollout mass at layer %d lies in the first %d/%d of its positions -> keep %.1f%%",
            name,
            100 * mass,
            global_layer,
            kept_bins,
            bins,
            100 * kept_bins / bins,
        )
    return PruningProfile(
        keep=keep,
        num_layers=num_layers,
        global_layer=global_layer,
        source="rollout",
        rollout={"alpha": alpha, "mass": mass, "bins": bins, "num_samples": count, "curves": curves},
    )

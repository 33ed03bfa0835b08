"""Attention rollout (Abnar & Zuidema, 2020) for offline calibration of the global stage's profile.

For layers ``0 .. K-1`` with head-averaged attention ``A_l``::

    Â_l = α·A_l + (1 − α)·I      (rows renormalised)
    R_K = Â_{K-1} · … · Â_1 · Â_0

Row ``L-1`` of ``R_K`` says how much each input token feeds the last token at layer K. Calibration
(:mod:`fastav_eval.analysis.calibrate`) averages, over samples, how that mass spreads along each modality's
relative position (:class:`RolloutCurves`), and keeps for each modality the shortest prefix that holds ``mass``
of it. This needs eager attention weights (``[L, L]`` per layer), so it runs
offline on a handful of samples; inference never computes rollout, it only reads the saved profile.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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
    """Accumulates the rollout product of layers ``< num_layers`` inside the attention function, keeping the
    last row after each layer."""

    def __init__(self, num_layers: int, alpha: float) -> None:
        self.num_layers = num_layers
        self.alpha = alpha
        self.product: torch.Tensor | None = None
        self.last_rows: list[torch.Tensor] = []

    def update(self, layer_idx: int, weights: torch.Tensor) -> None:
        if layer_idx >= self.num_layers:
            return
        mixed = residual_attention(weights.float().mean(1), self.alpha)
        self.product = mixed if self.product is None else mixed @ self.product
        self.last_rows.append(self.product[:, -1].clone())


class _StopForward(Exception):
    """Raised before the first layer rollout does not need: the rest of the forward is never computed."""


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
    return rollout_last_rows(model, inputs, num_layers, alpha)[-1]


@torch.no_grad()
def rollout_last_rows(model: nn.Module, inputs: dict[str, Any], num_layers: int, alpha: float = 0.5) -> torch.Tensor:
    """Row L-1 of the rollout after each of layers ``0 .. num_layers-1``; the forward stops before layer
    ``num_layers`` (later layers are never run).

    Returns:
        ``[num_layers, L]`` fp32: row ``l`` is each prompt token's influence on the last token at layer ``l + 1``.
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
    stop = None
    if num_layers < len(text_model.layers):

        def _stop(*_: Any) -> None:
            raise _StopForward

        stop = text_model.layers[num_layers].register_forward_pre_hook(_stop)
    try:
        model(**inputs, use_cache=False)
    except _StopForward:
        pass
    finally:
        text_model.config._attn_implementation = original
        for layer in text_model.layers:
            delattr(layer.self_attn, RECORDER_ATTRIBUTE)
        if stop is not None:
            stop.remove()
    if len(recorder.last_rows) != num_layers:
        raise RuntimeError(
            f"attention weights of {len(recorder.last_rows)} of {num_layers} layers were recorded: does the model "
            "route attention through its config?"
        )
    if recorder.product.shape[0] != 1:
        raise ValueError(f"calibration runs one sample at a time; got batch {recorder.product.shape[0]}")
    return torch.stack([row[0] for row in recorder.last_rows])


def binned_mass(
    influence: torch.Tensor, layout: ModalityLayout, name: str, bins: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One modality's rollout mass and token count in each of ``bins`` equal relative-position bins.

    Args:
        influence: ``[L]`` rollout row of one sample.
        layout: that sample's layout (batch 1, no padding).

    Returns:
        ``(mass [bins], tokens [bins])`` fp32 on the CPU, or None when the sample has no ``name`` token.
    """
    is_modality = layout.modality[0] == modality_code(name)
    count = int(is_modality.sum())
    if count == 0:
        return None
    which = torch.clamp((layout.rank[0][is_modality].float() / count * bins).long(), max=bins - 1).cpu()
    mass = torch.zeros(bins).index_add_(0, which, influence[is_modality].float().cpu())
    return mass, torch.zeros(bins).index_add_(0, which, torch.ones(count))


def modality_mass_curves(influence: torch.Tensor, layout: ModalityLayout, bins: int) -> dict[str, torch.Tensor]:
    """Per audio-visual modality, the share of its rollout mass in each of ``bins`` relative-position bins.

    Returns:
        modality name -> ``[bins]`` fp32 summing to 1 (absent modalities are left out).
    """
    curves = {}
    for name in AV_MODALITIES:
        binned = binned_mass(influence, layout, name, bins)
        if binned is not None:
            curves[name] = binned[0] / binned[0].sum().clamp_min(1e-12)
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

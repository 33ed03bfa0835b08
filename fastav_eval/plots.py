"""Matplotlib figures for reports (PNG, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

MODALITY_COLOURS = {"text": "#4c72b0", "video": "#55a868", "audio": "#dd8452"}


def plot_tokens_per_layer(kept_per_layer: Mapping[str, Sequence[int]], title: str, path: str | Path) -> Path:
    """Stacked bars of the tokens of each modality that every decoder layer processed; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3.6), dpi=120)
    bottom = [0] * len(next(iter(kept_per_layer.values())))
    for name, counts in kept_per_layer.items():
        axes.bar(range(len(counts)), counts, bottom=bottom, label=name, color=MODALITY_COLOURS.get(name))
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    axes.set_xlabel("decoder layer")
    axes.set_ylabel("tokens processed")
    axes.set_title(title)
    axes.legend(loc="upper right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path

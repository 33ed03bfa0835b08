"""Matplotlib figures for reports (PNG, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

MODALITY_COLOURS = {"text": "#4c72b0", "video": "#55a868", "audio": "#dd8452"}


def _save(figure, path: str | Path) -> Path:
    """Lay out, write and close a figure; returns the PNG's path."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


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
    return _save(figure, path)


def plot_training_log(log_path: str | Path, path: str | Path) -> Path:
    """Answer loss (smoothed) and val first-word accuracy per kind from a testbed ``train_log.jsonl``."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses, evals, phase_starts = [], [], [], {}
    for line in Path(log_path).read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "step":
            steps.append(record["step"])
            losses.append(record["loss"])
            phase_starts.setdefault(record["phase"], record["step"])
        elif record["event"] == "eval":
            evals.append(record)
    window = 50
    smoothed = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                for i in range(len(losses))]  # fmt: skip
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=120)
    left.plot(steps, smoothed)
    left.set_xlabel("step")
    left.set_ylabel(f"answer loss (mean of {window} steps)")
    left.set_yscale("log")
    for kind in evals[-1]["val_first_word_accuracy"] if evals else []:
        right.plot([e["step"] for e in evals], [100 * e["val_first_word_accuracy"][kind] for e in evals], label=kind)
    right.set_xlabel("step")
    right.set_ylabel("val accuracy, first answer word (%)")
    right.legend(fontsize=7, ncol=2)
    for phase, start in phase_starts.items():
        if start > 0:
            for axes in (left, right):
                axes.axvline(start, color="grey", linestyle=":", linewidth=1)
            left.annotate(f"{phase} →", (start, 1.0), xycoords=("data", "axes fraction"), fontsize=7, va="top")
    return _save(figure, path)

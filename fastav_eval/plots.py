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


def plot_rollout_heatmap(
    density: Mapping[str, Sequence[Sequence[float]]],
    modality_share: Mapping[str, Sequence[float]],
    title: str,
    path: str | Path,
) -> Path:
    """Rollout by layer (rows) x relative position per modality (column blocks, boundaries drawn), as mass per
    token against a uniform share (log colour scale, 1 = every token alike); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    names = list(density)
    blocks = [np.asarray(density[name], dtype=float) for name in names]
    grid = np.concatenate(blocks, axis=1)
    positive = grid[grid > 0]
    high = float(positive.max()) if positive.size else 1.0
    low = max(float(positive.min()) if positive.size else 1e-3, 1e-3)
    shown = np.ma.masked_where(grid <= 0, np.clip(grid, low, None))  # a bin without tokens (short text) is blank
    figure, axes = plt.subplots(figsize=(9, 1.6 + 0.35 * grid.shape[0]), dpi=120)
    image = axes.imshow(shown, aspect="auto", origin="lower", cmap="magma", norm=LogNorm(low, max(high, low * 1.01)))
    start = 0
    for name, block in zip(names, blocks, strict=True):
        width = block.shape[1]
        if start:
            axes.axvline(start - 0.5, color="white", linewidth=2)
        share = 100 * float(np.asarray(modality_share[name])[-1])
        axes.text(start + width / 2 - 0.5, grid.shape[0] - 0.5 + 0.15, f"{name} ({share:.0f}% of mass)",
                  ha="center", va="bottom", fontsize=9)  # fmt: skip
        start += width
    ticks = range(grid.shape[0])
    axes.set_yticks(list(ticks), [str(layer + 1) for layer in ticks])
    axes.set_ylabel("rollout through layer")
    axes.set_xticks([])
    axes.set_xlabel("relative position within each modality (start -> end)")
    axes.set_title(title, pad=22)
    figure.colorbar(image, ax=axes, label="mass per token / uniform")
    return _save(figure, path)


def plot_importance_curves(
    curves: Mapping[str, Sequence[float]], kept_fraction: Mapping[str, float], title: str, path: str | Path
) -> Path:
    """Per modality: rollout mass density along relative position (1 = flat) and its cumulative share against the
    prefix kept (the diagonal is a flat curve; the profile's cut is marked); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (density_axes, cumulative_axes) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for name, values in curves.items():
        values = np.asarray(values, dtype=float)
        bins = len(values)
        centres = (np.arange(bins) + 0.5) / bins
        colour = MODALITY_COLOURS.get(name)
        density_axes.plot(centres, values * bins, marker="o", markersize=3, label=name, color=colour)
        edges = np.arange(bins + 1) / bins
        cumulative_axes.plot(edges, np.concatenate([[0.0], np.cumsum(values)]), label=name, color=colour)
        if name in kept_fraction:
            cumulative_axes.axvline(kept_fraction[name], color=colour, linestyle=":", linewidth=1.5)
    density_axes.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="flat")
    density_axes.set_xlabel("relative position within the modality")
    density_axes.set_ylabel("rollout mass density (1 = flat)")
    density_axes.legend()
    cumulative_axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="flat")
    cumulative_axes.set_xlabel("prefix kept (share of its tokens); dotted: the profile's cut")
    cumulative_axes.set_ylabel("share of rollout mass in the prefix")
    cumulative_axes.legend()
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def plot_pareto(
    points: Sequence[tuple[float, float]],
    labels: Sequence[str],
    front: Sequence[int],
    is_baseline: Sequence[bool],
    ylabel: str,
    path: str | Path,
) -> Path:
    """One point per run (relative FLOPs, score), labelled; the Pareto front drawn; the unpruned run a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    order = sorted(range(len(points)), key=lambda i: points[i][1])  # labels of close points alternate sides
    for rank, index in enumerate(order):
        (cost, value), label, baseline = points[index], labels[index], is_baseline[index]
        marker, colour = ("*", "#c44e52") if baseline else ("o", "#4c72b0")
        axes.scatter([cost], [value], marker=marker, s=160 if baseline else 40, color=colour, zorder=3)
        offset = (6, -3) if rank % 2 == 0 or baseline else (-6, -3)
        axes.annotate(label, (cost, value), textcoords="offset points", xytext=offset, fontsize=7,
                      ha="left" if offset[0] > 0 else "right")  # fmt: skip
    if front:
        axes.plot([points[i][0] for i in front], [points[i][1] for i in front], color="grey", linewidth=1,
                  linestyle="--", zorder=2, label="Pareto front")  # fmt: skip
        axes.legend(loc="lower right")
    axes.set_xlabel("relative prefill FLOPs (%; unpruned = 100)")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_against_setting(
    values: Sequence[float],
    points: Sequence[tuple[float, float]],
    reference: tuple[float, float] | None,
    setting: str,
    ylabel: str,
    path: str | Path,
) -> Path:
    """Score (left axis) and relative FLOPs (right axis) against one pruning setting (e.g. the global layer);
    the unpruned run's score as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    axes.plot(values, [score for _, score in points], marker="o", color="#4c72b0", label=ylabel)
    if reference is not None:
        axes.axhline(reference[1], color="#c44e52", linestyle="--", linewidth=1, label="unpruned")
    axes.set_xlabel(setting)
    axes.set_ylabel(ylabel)
    flops = axes.twinx()
    flops.plot(values, [cost for cost, _ in points], marker="s", color="#55a868", label="relative FLOPs")
    flops.set_ylabel("relative prefill FLOPs (%)")
    lines = axes.get_legend_handles_labels()
    more = flops.get_legend_handles_labels()
    axes.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    return _save(figure, path)

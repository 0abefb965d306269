"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no global state).

Every function takes plain data (numbers, arrays, dicts) and returns a
:class:`matplotlib.figure.Figure`; :func:`figure_png` renders one to PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pixcon.analysis import effective_rank

DPI = 100
METHOD_COLORS = {"ce": "tab:blue", "contrast": "tab:orange", "joint": "tab:green", "pretrain": "tab:red"}
TAB10 = (
    "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
    "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan",
)  # fmt: skip


def method_color(label: str) -> str | None:
    """The colour of a method named at the start of ``label`` (``ce``, ``CE only``, ``contrastive ...``)."""
    word = label.lower().split(" ")[0].rstrip(":")
    return METHOD_COLORS.get({"contrastive": "contrast"}.get(word, word))


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path) -> None:
    Path(path).write_bytes(figure_png(fig))


def _unit(colors: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 -> (K, 3) float in [0, 1]."""
    return np.asarray(colors, dtype=np.float64) / 255.0


def iou_bars_figure(
    values: Mapping[str, Mapping[str, tuple[float, float]]], class_names: Sequence[str], title: str
) -> Figure:
    """Grouped bars of IoU per class.

    Args:
        values: {series label: {class name: (mean IoU, std)}}; missing classes are left blank.
        class_names: Order of the bars.
        title: Axes title.
    """
    n = max(1, len(values))
    fig = new_figure(max(6.0, 0.45 * len(class_names) * (0.6 + 0.4 * n)), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(class_names))
    width = 0.8 / n
    for k, (label, per_class) in enumerate(values.items()):
        mean = [100 * per_class.get(c, (math.nan, 0.0))[0] for c in class_names]
        std = [100 * per_class.get(c, (math.nan, 0.0))[1] for c in class_names]
        offset = (k - (n - 1) / 2) * width
        ax.bar(x + offset, mean, width, yerr=std, capsize=2, label=label, color=method_color(label))
    ax.set_xticks(x, list(class_names), rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def confusion_figure(matrices: Mapping[str, np.ndarray], class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrices (rows = target, cols = prediction), one panel each.

    Args:
        matrices: {label: (C, C) counts}.
        class_names: C names.
    """
    n = len(matrices)
    c = len(class_names)
    side = min(7.0, max(3.5, 0.35 * c + 1.5))
    fig = new_figure(side * n + 0.8, side)
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for ax, (label, cm) in zip(axes, matrices.items(), strict=True):
        cm = np.asarray(cm, dtype=np.float64)  # (C, C)
        rows = cm.sum(axis=1, keepdims=True)  # (C, 1)
        norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)  # (C, C) recall per row
        image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(c), list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(range(c), list(class_names), fontsize=7)
        ax.set_xlabel("prediction")
        ax.set_ylabel("ground truth")
        ax.set_title(label)
        if c <= 12:
            for i in range(c):
                for j in range(c):
                    if norm[i, j] >= 0.005:
                        color = "white" if norm[i, j] > 0.6 else "black"
                        ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color)
    if image is not None:
        fig.colorbar(image, ax=list(axes), fraction=0.03, label="fraction of the row's pixels")
    return fig


def training_curves_figure(
    curves: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    keys: Sequence[str],
    groups: Mapping[str, str] | None = None,
) -> Figure:
    """One panel per logged key, one line per run.

    Args:
        curves: {run label: {key: (steps, values)}}.
        keys: Keys to plot (panels), e.g. ``train/ce``, ``train/contrast``, ``val/miou``.
        groups: {run label: group}; runs of one group share a colour and one legend entry
            (e.g. the demo's method). Default: every run its own colour.
    """
    n = len(keys)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = new_figure(4.2 * cols, 3.0 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    group_of = groups or {label: label for label in curves}
    distinct = list(dict.fromkeys(group_of[label] for label in curves))
    fixed = {g: c for g in distinct if (c := method_color(g)) is not None}
    palette = [c for c in TAB10 if c not in fixed.values()] or list(TAB10)
    color, style = dict(fixed), dict.fromkeys(fixed, "-")
    for i, g in enumerate(g for g in distinct if g not in fixed):  # beyond the palette: dashed, dotted
        color[g], style[g] = palette[i % len(palette)], ("-", "--", ":")[min(2, i // len(palette))]
    for ax, key in zip(axes, keys, strict=False):
        seen: set[str] = set()
        for label, logged in curves.items():
            if key not in logged:
                continue
            steps, values = logged[key]
            group = group_of[label]
            ax.plot(
                steps,
                values,
                color=color[group],
                linestyle=style[group],
                alpha=0.8,
                marker="." if len(steps) < 20 else None,
                label=group if group not in seen else None,
            )
            seen.add(group)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize=7 if len(seen) <= 6 else 6, ncols=1 if len(seen) <= 8 else 2)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def image_grid_figure(
    rows: Sequence[Sequence[np.ndarray]],
    col_titles: Sequence[str],
    row_titles: Sequence[str],
    legend: Sequence[tuple[str, np.ndarray]] = (),
) -> Figure:
    """A grid of RGB images, (H, W, 3) uint8 each, with column and row titles and a class legend."""
    n_rows, n_cols = len(rows), len(col_titles)
    fig = new_figure(2.2 * n_cols + (1.6 if legend else 0.0), 2.2 * n_rows + 0.3)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, images in enumerate(rows):
        for c, img in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=8)
    if legend:
        handles = [
            Patch(facecolor=_unit(np.asarray(rgb)[None])[0], edgecolor="0.4", linewidth=0.5, label=name)
            for name, rgb in legend
        ]  # edged: a white class stays visible
        fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
        fig.subplots_adjust(right=1 - 1.6 / (2.2 * n_cols + 1.6))
    return fig


def tsne_figure(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str], colors: np.ndarray
) -> Figure:
    """Scatter plots of 2-D embeddings coloured by class.

    Args:
        panels: {title: (points (N, 2), labels (N,))}.
        class_names: K names.
        colors: (K, 3) uint8 class colours.
    """
    n = len(panels)
    fig = new_figure(4.6 * n + 1.6, 4.4)
    axes = fig.subplots(1, n, squeeze=False)[0]
    unit = _unit(colors)  # (K, 3)
    present: set[int] = set()
    for ax, (title, (xy, y)) in zip(axes, panels.items(), strict=True):
        ax.scatter(xy[:, 0], xy[:, 1], c=unit[y], s=5, edgecolors="0.5", linewidths=0.1, alpha=0.85)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        present |= {int(v) for v in np.unique(y)}
    handles = [
        Line2D([], [], marker="o", linestyle="", color=unit[k], markeredgecolor="0.4", label=class_names[k])
        for k in sorted(present)
    ]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.subplots_adjust(right=1 - 1.6 / (4.6 * n + 1.6))
    return fig


def spectrum_figure(series: Mapping[str, Sequence[float]]) -> Figure:
    """Singular values of embedding covariances on a log scale, effective rank in the legend.

    Args:
        series: {label: singular values, largest first}.
    """
    fig = new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    for label, values in series.items():
        s = np.asarray(values, dtype=np.float64)  # (D,)
        floor = max(s.max() * 1e-12, np.finfo(np.float64).tiny) if s.size and s.max() > 0 else 1e-12
        ax.semilogy(
            np.arange(1, len(s) + 1),
            np.maximum(s, floor),
            marker="." if len(s) <= 64 else None,
            label=f"{label}: effective rank {effective_rank(s):.1f} of {len(s)}",
        )
    ax.set_xlabel("index (largest first)")
    ax.set_ylabel("singular value of the covariance")
    ax.set_title("Embedding spectrum")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig

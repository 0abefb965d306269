"""Result tables and plots of a label-efficiency experiment (``pixcon demo``, a study).

A *run* is one (method, label fraction, seed) with its test scores; :func:`summarize` turns the
runs into one row per fraction (mean ± std of test mIoU over seeds per method, and each method's
gain over CE-only paired by seed), :func:`format_table` into the printed markdown table, and
:func:`plot_curves` into the mIoU-vs-fraction figure. Method labels come from the recipe records
(:data:`pixcon.recipes.RECIPES`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from pixcon.recipes import method_label


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarize(
    runs: list[dict[str, Any]], fractions: tuple[float, ...], methods: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Per fraction: mean and std of test mIoU over seeds for each method and, for every method
    other than CE, its gain over CE-only paired by seed (``row["gains"][method]``); ``row["gain"]``
    is the gain of ``contrast`` (Zhao et al.) when both ran."""
    rows = []
    for f in fractions:
        row: dict[str, Any] = {
            "fraction": f,
            "num_labeled": next((r["num_labeled"] for r in runs if r["fraction"] == f), None),
            "gains": {},
        }
        ce = {r["seed"]: r["test_miou"] for r in runs if r["fraction"] == f and r["method"] == "ce"}
        for m in methods:
            mine = [r for r in runs if r["fraction"] == f and r["method"] == m]
            row[m] = _mean_std([r["test_miou"] for r in mine])
            paired = [r["test_miou"] - ce[r["seed"]] for r in mine if r["seed"] in ce]
            if m != "ce" and paired:
                row["gains"][m] = _mean_std(paired)
        if "contrast" in row["gains"]:
            row["gain"] = row["gains"]["contrast"]
        rows.append(row)
    return rows


def table_rows(summary: list[dict[str, Any]], methods: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: a row per method, a column per label fraction; each
    cell is test mIoU x100 (mean ± std over seeds) and, but for CE, the gain over CE paired by seed."""
    header = ["method", *[f"{row['fraction'] * 100:g}% ({row['num_labeled']} img)" for row in summary]]
    rows = []
    for m in methods:
        cells = [method_label(m)]
        for row in summary:
            cell = f"{100 * row[m]['mean']:.1f} ± {100 * row[m]['std']:.1f}" if m in row else "n/a"
            gain = row.get("gains", {}).get(m)
            if gain is not None:
                cell += f" ({100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f})"
            cells.append(cell)
        rows.append(cells)
    return header, rows


def format_table(summary: list[dict[str, Any]], methods: tuple[str, ...]) -> str:
    """Markdown table of :func:`table_rows`."""
    header, rows = table_rows(summary, methods)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def plot_curves(summary: list[dict[str, Any]], methods: tuple[str, ...], path: Path) -> None:
    many = len(methods) > 4  # legend beside the axes, in a smaller font, so no curve is hidden
    fig = Figure(figsize=(8.5 if many else 6, 4), dpi=120)  # no pyplot: no global figure state
    ax = fig.add_subplot()
    xs = [row["fraction"] * 100 for row in summary]
    markers = "osD^v<>ph*XP"
    for i, m in enumerate(methods):
        mean = [100 * row[m]["mean"] for row in summary]
        std = [100 * row[m]["std"] for row in summary]
        marker = markers[i % len(markers)] if many else "o"
        ax.errorbar(xs, mean, yerr=std, marker=marker, capsize=3, label=method_label(m))
    if len(xs) > 1:
        ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(xs, [f"{x:g}%" for x in xs])
    ax.set_xlabel("labeled fraction of the training images")
    ax.set_ylabel("test mIoU (%)")
    ax.set_title("Label efficiency (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, borderaxespad=0.0)
    else:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")

"""The report's sections; each returns a :class:`~pixcon.report.html.Section`, skipped with its
reason when its data is missing."""

from __future__ import annotations

import csv
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from pixcon.analysis import Source, effective_rank, embedding_spectrum
from pixcon.predict import colorize, overlay, to_rgb
from pixcon.report import figures
from pixcon.report.collect import Collection, RunInfo
from pixcon.report.embeddings import before_after, tsne_2d
from pixcon.report.evaluation import ModelEval, Samples
from pixcon.report.html import FigureItem, Section, table_html
from pixcon.report.tables import plot_curves, table_rows

log = logging.getLogger(__name__)

CURVE_KEYS = ("train/contrast", "train/ce", "val/miou")


def _fig(fig: Any, caption: str) -> FigureItem:
    return FigureItem(figures.figure_png(fig), caption)


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _methods(results: dict[str, Any]) -> list[str]:
    methods = (results.get("options") or {}).get("methods")
    if methods:
        return list(methods)
    return list(dict.fromkeys(r["method"] for r in results.get("runs", [])))


# -- 1. label efficiency ------------------------------------------------------------------------


def label_efficiency_section(col: Collection) -> Section:
    s = Section("label-efficiency", "Label efficiency")
    if not col.demos:
        s.skipped = "no results.json among the inputs (label-efficiency results come from `pixcon demo`)."
        return s
    for demo_dir, results in col.demos:
        summary, methods = results.get("summary") or [], _methods(results)
        if not summary:
            s.notes.append(f"{demo_dir}/results.json has no summary.")
            continue
        header, rows = table_rows(summary, tuple(m for m in methods if m in summary[0]))
        seeds = sorted({r["seed"] for r in results.get("runs", [])})
        s.notes.append(
            f"{demo_dir}: test mIoU (%), mean ± std over seeds {seeds}; in brackets the gain over CE-only, paired by seed."
        )
        s.tables.append(table_html(header, rows))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "curve.png"
            plot_curves(summary, tuple(methods), path)
            s.figures.append(FigureItem(path.read_bytes(), f"Test mIoU against label fraction ({demo_dir})."))
    if not s.figures:
        s.skipped = "the results.json files hold no summary."
    return s


# -- 2. IoU per class ---------------------------------------------------------------------------


def _demo_iou(results: dict[str, Any]) -> dict[float, dict[str, dict[str, tuple[float, float]]]]:
    """{fraction: {method: {class: (mean, std over seeds)}}} from the demo's per-run scores."""
    out: dict[float, dict[str, dict[str, tuple[float, float]]]] = {}
    runs = [r for r in results.get("runs", []) if r.get("iou_per_class")]
    for f in sorted({r["fraction"] for r in runs}):
        out[f] = {}
        for m in _methods(results):
            per_run = [r["iou_per_class"] for r in runs if r["fraction"] == f and r["method"] == m]
            if not per_run:
                continue
            stats = {}
            for name in per_run[0]:
                vals = [v[name] for v in per_run if v.get(name) is not None]
                if vals:
                    stats[name] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
            out[f][m] = stats
    return out


def iou_section(col: Collection, evals: list[ModelEval], class_names: list[str], split: str) -> Section:
    s = Section("iou-per-class", "IoU per class")
    for demo_dir, results in col.demos:
        for fraction, per_method in _demo_iou(results).items():
            names = class_names or list(next(iter(per_method.values()), {}))
            if not per_method or not names:
                continue
            title = f"{fraction * 100:g}% labels, test split, mean ± std over seeds"
            s.figures.append(
                _fig(
                    figures.iou_bars_figure(per_method, names, title), f"IoU per class, {title} ({demo_dir})."
                )
            )
    if not s.figures and evals:
        values = {
            e.label: {k: (v, 0.0) for k, v in e.scores["iou_per_class"].items() if v is not None}
            for e in evals
        }
        title = f"{split} split, one checkpoint per method"
        s.figures.append(
            _fig(figures.iou_bars_figure(values, class_names, title), f"IoU per class, {title}.")
        )
    if not s.figures:
        s.skipped = "no demo results with per-class IoU and no checkpoint that segments could be scored."
    return s


# -- 3. confusion matrices ----------------------------------------------------------------------


def confusion_section(evals: list[ModelEval], class_names: list[str], split: str, reason: str) -> Section:
    s = Section("confusion", "Confusion matrices")
    if not evals:
        s.skipped = reason
        return s
    s.notes.append(
        "Rows are ground truth, columns predictions; each row is normalised to 1 (the diagonal is "
        "per-class recall). Scores: "
        + "; ".join(
            f"{e.label}: mIoU {100 * (e.scores['miou'] or 0):.1f}%, pixel accuracy {100 * (e.scores['pixel_acc'] or 0):.1f}%"
            for e in evals
        )
    )
    matrices = {e.label: e.cm for e in evals}
    s.figures.append(
        _fig(figures.confusion_figure(matrices, class_names), f"Confusion matrices on the {split} split.")
    )
    return s


# -- 4. training curves -------------------------------------------------------------------------


def read_metrics_csv(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """``metrics.csv`` (``step,key,value``) -> {key: (steps, values)}; non-numeric rows are skipped."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                step, value = float(row["step"]), float(row["value"])
            except (KeyError, TypeError, ValueError):
                continue
            steps, values = out.setdefault(row["key"], ([], []))
            steps.append(step)
            values.append(value)
    return out


def curves_section(runs: list[RunInfo]) -> Section:
    s = Section("training-curves", "Training curves")
    curves, groups = {}, {}
    for r in runs:
        path = r.dir / "metrics.csv"
        if path.is_file():
            curves[r.name] = read_metrics_csv(path)
            # a demo method's stages share a colour (a demo run has a method: is_demo)
            groups[r.name] = cast(str, r.method) if r.is_demo else r.name
    keys = [k for k in CURVE_KEYS if any(k in c for c in curves.values())]
    if not keys:
        s.skipped = "no run has a metrics.csv with train/contrast, train/ce or val/miou."
        return s
    s.notes.append(f"{len(curves)} run(s): " + ", ".join(curves) + ".")
    s.figures.append(
        _fig(
            figures.training_curves_figure(curves, keys, groups),
            "Losses and validation mIoU against the optimisation step (metrics.csv of each run).",
        )
    )
    return s


# -- 5. predictions -----------------------------------------------------------------------------


def predictions_section(
    evals: list[ModelEval], samples: Samples | None, colors: np.ndarray, class_names: list[str], reason: str
) -> Section:
    s = Section("predictions", "Predictions")
    if not evals or samples is None or not samples.ids:
        s.skipped = reason
        return s
    rows = []
    for i, image in enumerate(samples.images):
        row = [to_rgb(image), colorize(samples.masks[i], colors)]
        row += [overlay(image, e.preds[i], colors, alpha=0.6) for e in evals]
        rows.append(row)
    legend = [(name, colors[k]) for k, name in enumerate(class_names)]
    titles = ["image", "ground truth", *[e.label for e in evals]]
    s.notes.append("Predictions are drawn over the image; the ground truth alone (ignored pixels black).")
    s.figures.append(
        _fig(
            figures.image_grid_figure(rows, titles, samples.ids, legend),
            f"The first {len(rows)} images of the split: image, ground truth and predictions.",
        )
    )
    return s


# -- 6, 7. embeddings ---------------------------------------------------------------------------


def embedding_sections(
    run: RunInfo | None,
    dataset: Any,
    colors: np.ndarray,
    class_names: list[str],
    split: str,
    num_pixels: int,
    seed: int,
    device: torch.device,
    reason: str,
    progress: bool = False,
) -> tuple[Section, Section]:
    """t-SNE and spectrum of ``run``'s pixel embeddings against a fresh network's (same pixels)."""
    tsne_s = Section("tsne", "t-SNE of pixel embeddings")
    spec_s = Section("spectrum", "Embedding spectrum")
    if run is None or dataset is None:
        tsne_s.skipped = spec_s.skipped = reason
        return tsne_s, spec_s
    source: Source = "projection" if run.trains_projection else "decoder"
    sets = before_after(run.checkpoint, dataset, source, num_pixels, seed, device, progress=progress)
    what = "projection-head embeddings" if source == "projection" else "decoder features"
    n, dim = sets[0].z.shape
    about = (
        f"{n} class-balanced pixels of the {split} split (seed {seed}), {what} (D = {dim}) of "
        f"{run.name} ({run.objective}) and of a freshly initialised network of the same config and seed."
    )
    if source == "decoder":
        about += (
            f" Objective {run.objective!r} does not train the projection head, so decoder features are shown."
        )
    if n < 5:
        tsne_s.skipped = spec_s.skipped = f"only {n} labelled pixels could be sampled."
        return tsne_s, spec_s
    tic = time.perf_counter()
    panels = {f"{e.label}: {run.name}" if e.label == "after" else e.label: e for e in sets}
    maps = {title: (tsne_2d(e.z, seed), e.labels.numpy()) for title, e in panels.items()}
    log.info("t-SNE of %d pixels x %d: %.1f s", n, len(sets), time.perf_counter() - tic)
    tsne_s.notes.append(about)
    tsne_s.figures.append(
        _fig(figures.tsne_figure(maps, class_names, colors), "t-SNE of pixel embeddings, coloured by class.")
    )
    spectra = {e.label: embedding_spectrum(e.z) for e in sets}
    spec_s.notes.append(
        about + " Effective rank (Roy & Vetterli 2007) = exp(entropy of the normalised singular values)."
    )
    spec_s.tables.append(
        table_html(
            ["embeddings", "D", "effective rank", "largest / smallest singular value"],
            [
                [
                    label,
                    str(len(sv)),
                    f"{effective_rank(sv):.2f}",
                    f"{sv[0] / sv[-1]:.3g}" if sv[-1] > 0 else "inf",
                ]
                for label, sv in spectra.items()
            ],
        )
    )
    spec_s.figures.append(
        _fig(
            figures.spectrum_figure({k: v.tolist() for k, v in spectra.items()}),
            "Singular values of the pixel-embedding covariance (log scale).",
        )
    )
    return tsne_s, spec_s

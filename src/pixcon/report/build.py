"""``pixcon report``: gather the data, draw the figures, write one HTML page.

Sections, each skipped with its reason when its data is missing:

1. label efficiency: table and curve of test mIoU (mean ± std over seeds), from a demo's ``results.json``;
2. IoU per class: from ``results.json`` (mean ± std over seeds), else from scoring the runs;
3. confusion matrices: the CE-only and contrastive checkpoints scored on the test split;
4. training curves: every run's ``metrics.csv``;
5. predictions: image, ground truth and each checkpoint's prediction on the first test images;
6. t-SNE of class-balanced pixel embeddings before (fresh init) and after pretraining;
7. the embedding spectrum (covariance singular values, effective rank) of the same embeddings.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixcon.checkpoint import load_checkpoint
from pixcon.inference import (
    checkpoint_data,
    checkpoint_palette,
    class_colors,
    domain_state,
    open_split,
    resolve_device,
)
from pixcon.report.collect import Collection, collect, pick_predictors, pick_pretrained
from pixcon.report.evaluation import ModelEval, Samples, evaluate_models
from pixcon.report.html import render_html
from pixcon.report.sections import (
    confusion_section,
    curves_section,
    embedding_sections,
    iou_section,
    label_efficiency_section,
    predictions_section,
)

log = logging.getLogger(__name__)


@dataclass
class ReportOptions:
    """What ``pixcon report`` computes.

    Attributes:
        split: Split to score checkpoints and sample embeddings on.
        num_images: Sample images in the prediction grid (the split's first ones).
        tsne_pixels: Class-balanced pixels sampled for t-SNE and the spectrum.
        seed: Seeds the pixel sample and t-SNE.
        data_root: Dataset folder, if not where the checkpoints' configs say.
        device: ``auto``, ``cpu``, ``cuda``, ...
        progress: Progress bars.
    """

    split: str = "test"
    num_images: int = 4
    tsne_pixels: int = 2000
    seed: int = 0
    data_root: str | None = None
    device: str | None = None
    progress: bool = False


def _data_root(state: dict[str, Any], col: Collection, explicit: str | None) -> str | None:
    """``explicit``; else None if the config's data.root exists; else a demo's ``data`` folder."""
    if explicit:
        return explicit
    root = (state.get("config") or {}).get("data", {}).get("root")
    if root and Path(root).exists():
        return None
    for d in col.inputs:
        if (d / "data").is_dir():
            return str(d / "data")
    return None


def build_report(
    inputs: Sequence[str | Path], out: str | Path | None = None, options: ReportOptions | None = None
) -> Path:
    """Writes the report of demo or run directories to ``out`` (default ``INPUT0/report.html``).

    Raises:
        FileNotFoundError: An input directory does not exist.
        ValueError: An input holds no run and no results.json.
    """
    opts = options or ReportOptions()
    tic = time.perf_counter()
    col = collect(inputs)
    out_path = Path(out) if out is not None else col.inputs[0] / "report.html"
    device = resolve_device(opts.device)
    predictors = pick_predictors(col.runs)
    pretrained = pick_pretrained(col.runs, predictors)
    anchor = predictors[0][1] if predictors else pretrained

    dataset, class_names, colors, reason = None, [], np.zeros((0, 3), np.uint8), ""
    if anchor is None:
        reason = "no run (a directory with last.pt) among the inputs."
    else:
        state = domain_state(load_checkpoint(anchor.checkpoint), 0)  # the primary domain
        try:
            root = _data_root(state, col, opts.data_root)
            dataset = open_split(
                state, checkpoint_data(state, root), opts.split, checkpoint=anchor.checkpoint
            )
        except (FileNotFoundError, ValueError, KeyError) as err:
            reason = f"cannot open the {opts.split!r} split of {anchor.checkpoint}'s dataset: {err}"
            log.warning("report: %s", reason)
        class_names = list(state.get("class_names") or [])
        palette = getattr(dataset, "palette", None) or checkpoint_palette(state)
        colors = class_colors(palette, int(state["num_classes"]))

    evals: list[ModelEval] = []
    samples: Samples | None = None
    pred_reason = reason
    if dataset is not None:
        if predictors:
            evals, samples = evaluate_models(
                [(label, r.checkpoint) for label, r in predictors],
                dataset,
                opts.num_images,
                device,
                progress=opts.progress,
            )
        else:
            pred_reason = "no run with a trained segmentation head (only contrastive pretraining runs)."

    sections = [
        label_efficiency_section(col),
        iou_section(col, evals, class_names, opts.split),
        confusion_section(evals, class_names, opts.split, pred_reason),
        curves_section(col.runs),
        predictions_section(evals, samples, colors, class_names, pred_reason),
        *embedding_sections(
            pretrained,
            dataset,
            colors,
            class_names,
            opts.split,
            opts.tsne_pixels,
            opts.seed,
            device,
            reason,
            progress=opts.progress,
        ),
    ]
    intro = [
        "Inputs: " + ", ".join(str(p) for p in col.inputs) + f" ({len(col.runs)} run(s) found).",
        "Checkpoints compared: "
        + (", ".join(f"{label} = {r.name}" for label, r in predictors) or "none")
        + f"; embeddings from: {pretrained.name if pretrained else 'none'}.",
        f"Generated by pixcon report in {math.ceil(time.perf_counter() - tic)} s on {device.type}.",
    ]
    page = render_html("pixcon report", sections, intro)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    log.info("report: %s (%d KiB)", out_path, out_path.stat().st_size // 1024)
    return out_path

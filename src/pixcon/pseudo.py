"""A pseudo-label round: a fine-tuned model labels the unlabeled images, confident pixels only.

``pixcon pseudo-label CHECKPOINT --out DIR`` reads the run's dataset and label split from the
checkpoint, predicts every unlabeled image of the training split (the split minus the labeled
ids) at its native size, and writes::

    DIR/masks/<id>.png     index masks; pixels with max softmax < threshold are ignore_index
    DIR/labeled.txt        the labeled ids followed by the pseudo-labeled ones
    DIR/pseudo.json        threshold, checkpoint, pseudo-labeled ids, per-class pixel counts, kept fraction

The next round of supervised pixel contrast then trains on both with
``--set data.labeled_split=DIR/labeled.txt --set data.pseudo_masks=DIR/masks`` (true masks for
the labeled ids, pseudo masks for the rest), and CE fine-tuning goes back to the true labels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from pixcon.data.folder import read_ids, write_ids
from pixcon.data.pseudo import pseudo_mask_path
from pixcon.data.registry import open_dataset, split_ids
from pixcon.data.transforms import eval_transform
from pixcon.inference import check_matches, checkpoint_data, load_model
from pixcon.inference.outputs import check_output_dir
from pixcon.predict import check_window, predict_image

log = logging.getLogger(__name__)


@torch.inference_mode()
def confident_labels(probs: torch.Tensor, threshold: float, ignore_index: int) -> torch.Tensor:
    """probs (C, H, W) softmax -> (H, W) int64 argmax, ``ignore_index`` where max prob < threshold."""
    conf, pred = probs.max(dim=0)  # (H, W), (H, W)
    return torch.where(conf >= threshold, pred, torch.full_like(pred, ignore_index))


@torch.inference_mode()
def pseudo_label(
    checkpoint: str | Path,
    out_dir: str | Path,
    threshold: float = 0.9,
    data_root: str | Path | None = None,
    progress: bool = True,
    window: int | None = None,
    overlap: float = 0.25,
) -> dict[str, Any]:
    """Writes pseudo masks of the checkpoint's unlabeled training images; returns the summary.

    ``window``: images larger than this are predicted with :func:`pixcon.predict.sliding_window`
    (Gaussian-blended tiles of ``window`` px sharing ``overlap`` of their side), as ``pixcon
    predict`` does for large tiles such as ISPRS Potsdam; None predicts every image in one pass.

    Raises:
        ValueError: ``threshold`` outside (0, 1], a window that is not a multiple of the model's
            stride or an overlap outside [0, 1), the run had no label split (every training image
            was labeled), or the model's classes do not fit an 8-bit mask.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    check_output_dir(out_dir, "pseudo-label output folder")
    model, state = load_model(checkpoint)
    if window is not None:
        check_window(model, window, overlap)  # before anything is written
    d = checkpoint_data(state, data_root)
    if not d.labeled_split:
        raise ValueError(
            f"{checkpoint} was trained on the whole {d.train_split!r} split (data.labeled_split is null): "
            "there are no unlabeled images to pseudo-label"
        )
    labeled = read_ids(d.labeled_split)
    known = set(labeled)
    unlabeled = [i for i in split_ids(d, d.train_split) if i not in known]
    if not unlabeled:
        raise ValueError(
            f"{checkpoint}: its label split {d.labeled_split} covers the whole {d.train_split!r} split "
            "(was it trained on an earlier round's labeled.txt?); there are no unlabeled images to pseudo-label. "
            "Pseudo-label with a checkpoint trained on the original label split"
        )
    num_classes, ignore = int(state["num_classes"]), int(state.get("ignore_index", 255))
    if num_classes > 255 or not 0 <= ignore <= 255:
        raise ValueError(f"pseudo masks are 8-bit PNGs: {num_classes} classes / ignore {ignore} do not fit")
    out = Path(out_dir)
    masks_dir = out / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    dataset = open_dataset(d, ids=unlabeled, transform=eval_transform(None))
    check_matches(state, dataset, d.root, checkpoint)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    kept = total = 0
    for index in tqdm(range(len(dataset)), desc="pseudo-label", disable=not progress, leave=False):
        image, _ = dataset[index]  # (C, H, W); the true mask is not used
        probs = predict_image(model, image, window=window, overlap=overlap)  # (K, H, W), native size
        labels = confident_labels(probs, threshold, ignore)  # (H, W)
        valid = labels != ignore
        kept, total = kept + int(valid.sum()), total + labels.numel()
        counts += torch.bincount(labels[valid], minlength=num_classes)
        path = pseudo_mask_path(masks_dir, dataset.ids[index])
        tmp = path.with_suffix(".tmp.png")
        Image.fromarray(labels.numpy().astype(np.uint8)).save(tmp)
        tmp.replace(path)
    write_ids(out / "labeled.txt", [*labeled, *unlabeled])
    names = list(state.get("class_names") or range(num_classes))
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "threshold": threshold,
        "window": window,
        "overlap": overlap if window is not None else None,
        "labeled": len(labeled),
        "pseudo_labeled": len(unlabeled),
        "pseudo_ids": unlabeled,
        "kept_fraction": kept / total if total else 0.0,
        "class_pixels": {str(n): int(c) for n, c in zip(names, counts.tolist(), strict=True)},
    }
    (out / "pseudo.json").write_text(json.dumps(summary, indent=2))
    log.info(
        "pseudo-labeled %d images (%.1f%% of pixels above %.2f) into %s",
        len(unlabeled),
        100 * summary["kept_fraction"],
        threshold,
        masks_dir,
    )
    return summary

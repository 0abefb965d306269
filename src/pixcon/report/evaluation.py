"""Score checkpoints on a split for the report: confusion matrix, scores, and sample predictions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pixcon.data.base import SegmentationDataset
from pixcon.inference import confusion, load_model

log = logging.getLogger(__name__)


@dataclass
class ModelEval:
    """One checkpoint scored on a split.

    Attributes:
        label: Display name (e.g. ``CE only``).
        cm: (C, C) int64 counts, rows = target, cols = prediction.
        scores: :func:`pixcon.metrics.scores_from_confusion` of ``cm``.
        preds: Predicted class ids (H, W) of the sample images, in order.
    """

    label: str
    cm: np.ndarray
    scores: dict[str, Any]
    preds: list[np.ndarray] = field(default_factory=list)


@dataclass
class Samples:
    """The fixed sample images: the first ones of the split, in dataset order."""

    ids: list[str]
    images: list[torch.Tensor]  # (C, H, W) float in [0, 1] each
    masks: list[np.ndarray]  # (H, W) int64 each


@torch.inference_mode()
def evaluate_models(
    models: Sequence[tuple[str, Path]],
    dataset: SegmentationDataset,
    num_samples: int = 4,
    device: torch.device | None = None,
    progress: bool = False,
) -> tuple[list[ModelEval], Samples]:
    """Scores every checkpoint on ``dataset`` (one image per forward pass: sizes may differ).

    Args:
        models: (label, checkpoint path) pairs; the checkpoints must match the dataset's classes.
        dataset: The split, with the evaluation transform.
        num_samples: Keep the predictions of the first ``num_samples`` images.
        device: Where to run the models (default CPU).
        progress: Show a progress bar per model.

    Returns:
        One :class:`ModelEval` per checkpoint, and the sample images with their masks.
    """
    n = min(num_samples, len(dataset))
    samples = Samples(ids=list(dataset.ids[:n]), images=[], masks=[])
    for i in range(n):
        image, mask = dataset[i]
        samples.images.append(image)
        samples.masks.append(mask.numpy())
    names = list(dataset.class_names)
    dev = device or torch.device("cpu")
    results = []
    for label, path in models:
        model, _ = load_model(path)
        model.to(dev)
        preds: list[np.ndarray] = []

        def keep(images: torch.Tensor, masks: torch.Tensor, pred: torch.Tensor, preds: list = preds) -> None:
            if len(preds) < n:
                preds.append(pred[0].cpu().numpy())  # (H, W) of a batch of one image

        # torch's annotation asks for a Dataset subclass; a map-style dataset is all it uses
        loader = DataLoader(
            cast("Dataset[tuple[torch.Tensor, torch.Tensor]]", dataset), batch_size=1, shuffle=False
        )
        meter = confusion(
            model,
            loader,
            dataset.num_classes,
            dataset.ignore_index,
            device=dev,
            on_batch=keep,
            progress=progress,
            desc=f"evaluate {label}",
        )
        scores = meter.compute(class_names=names)
        log.info("%s (%s): test mIoU %s", label, path, scores["miou"])
        results.append(ModelEval(label, meter.cm.cpu().numpy(), scores, preds))
    return results, samples

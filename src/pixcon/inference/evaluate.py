"""Score a network on a dataset: one confusion-matrix loop for training, ``pixcon evaluate`` and the report.

Every score is dataset-level, from one confusion matrix (:mod:`pixcon.metrics`). Training passes
its precision's autocast and a reduction over processes; the report a callback that keeps sample
predictions; ``pixcon evaluate`` scores a checkpoint (:func:`evaluate_checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pixcon.config import from_dict
from pixcon.data.folder import read_ids
from pixcon.data.registry import check_dataset, split_ids
from pixcon.inference.loading import checkpoint_data, load_model, open_split
from pixcon.inference.prototype import imprint_head
from pixcon.metrics import ConfusionMeter

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


@torch.no_grad()
def confusion(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    ignore_index: int,
    *,
    device: torch.device | None = None,
    autocast: Autocast | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    on_batch: Callable[[Tensor, Tensor, Tensor], None] | None = None,
    progress: bool = False,
    desc: str = "evaluate",
) -> ConfusionMeter:
    """The confusion matrix of ``model`` over ``batches`` of (images (B, C, H, W), masks (B, H, W)).

    Args:
        model: The network, put in eval mode for the loop and restored after it.
        batches: The data; moved to ``device`` where it is elsewhere.
        num_classes, ignore_index: Of the dataset.
        device: Where to count (default: the model's device).
        autocast: A context factory entered per batch (training's mixed precision); a fresh
            context per batch, since a precision plugin may return a single-use one.
        reduce: Applied to the summed matrix, e.g. a sum over processes under DDP.
        on_batch: Called with (images, masks, predicted class ids (B, H, W)) of every batch.
        progress: Show a progress bar.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    meter = ConfusionMeter(num_classes, ignore_index=ignore_index, device=device)
    for images, masks in tqdm(batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        images, masks = images.to(device), masks.to(device)
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = model(images)  # (B, C, H, W)
        pred = logits.float().argmax(dim=1)  # (B, H, W)
        meter.update(pred, masks)
        if on_batch is not None:
            on_batch(images, masks, pred)
    if reduce is not None:
        meter.cm = reduce(meter.cm)
    model.train(was_training)
    return meter


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    ignore_index: int,
    class_names: list[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Dataset-level scores of ``model`` over ``batches`` (see :func:`confusion` for ``kwargs``)."""
    return confusion(model, batches, num_classes, ignore_index, **kwargs).compute(class_names=class_names)


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
    image_size: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    domain: str | None = None,
    prototype_head: bool = False,
    labeled_split: str | Path | None = None,
) -> dict[str, Any]:
    """Dataset-level scores (see :mod:`pixcon.metrics`) of ``checkpoint`` on ``split``.

    Args:
        checkpoint: A pixcon checkpoint (``last.pt`` of a run).
        split: Split name in the dataset's format (e.g. ``splits/<split>.txt`` of a folder).
        data_root: Dataset folder; defaults to the checkpoint's ``data.root`` (same format).
        image_size: Optional resize for evaluation; native size by default.
        batch_size: Images per forward pass (1 where native sizes differ).
        progress: Show a progress bar over the batches.
        domain: A multi-domain checkpoint's domain, by name: its head, its batch norm and its
            dataset (``data_root`` then replaces that dataset's folder). Default: the primary.
        prototype_head: Score the nearest-class-mean classifier of the checkpoint's features
            instead of its segmentation head (the head ``train.head_init: prototypes`` starts
            fine-tuning from; for a pretraining checkpoint, what its embedding already classifies).
            The class means come from the labeled images of the checkpoint's run, with the masks
            it trained on (pseudo masks for a pseudo-labeled run).
        labeled_split: With ``prototype_head``: another file of labeled ids instead of the run's
            ``data.labeled_split``.

    Raises:
        DatasetError: The split's files are broken (every problem is listed).
        ValueError: The dataset's classes or bands do not match the checkpoint, ``domain`` is
            not one of the checkpoint's (the message lists them), or ``labeled_split`` is given
            without ``prototype_head``.
    """
    if labeled_split is not None and not prototype_head:
        raise ValueError("--labeled-split (labeled_split) is used only with --prototype-head")
    model, state = load_model(checkpoint, domain=domain)
    data = checkpoint_data(state, data_root)
    head = None
    if prototype_head:
        head = _prototype_head(model, state, data, labeled_split)
    report = check_dataset(data, splits=[split])
    report.raise_if_errors()
    if image_size is None and not report.same_size:
        batch_size = 1  # native sizes differ: one image per batch
    dataset = open_split(state, data, split, image_size, checkpoint)
    loader = DataLoader(cast("Dataset[tuple[Tensor, Tensor]]", dataset), batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        scores = evaluate(
            model, loader, dataset.num_classes, dataset.ignore_index, dataset.class_names, progress=progress
        )
    scores["split"], scores["checkpoint"] = split, str(checkpoint)
    if head is not None:
        scores["head"] = {
            "kind": "prototypes",
            "space": head.space,
            "scale": head.scale,
            "labeled_pixels": head.counts.tolist(),
        }
    if "domain" in state:
        scores["domain"] = state["domain"]
    return scores


def _prototype_head(model: Any, state: dict[str, Any], data: Any, labeled_split: str | Path | None) -> Any:
    """Writes the prototype head of ``state``'s run (its labeled images) into ``model``."""
    cfg = from_dict(state["config"])
    # the run's own masks: pseudo-labeled images keep their pseudo masks (their true masks are
    # what the run was not given)
    data = dataclasses.replace(data, pseudo_masks=cfg.data.pseudo_masks)
    if labeled_split is not None:
        data = dataclasses.replace(data, labeled_split=str(labeled_split), pseudo_masks=None)
    ids = read_ids(data.labeled_split) if data.labeled_split else split_ids(data, data.train_split)
    report = check_dataset(data, ids=ids)
    report.raise_if_errors()
    return imprint_head(
        model,
        data,
        ids,
        batch_size=data.eval_batch_size if data.eval_size is not None or report.same_size else 1,
        device=torch.device("cpu"),
        pretrained_by=str(state.get("kind", "")),
        space=cfg.train.prototype_space,
        seed=cfg.train.seed,
    )

"""Score a checkpoint on a dataset split."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pixcon.config import from_dict
from pixcon.data.registry import check_dataset, open_dataset
from pixcon.data.transforms import eval_transform
from pixcon.train.loop import evaluate, load_model


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
            not one of the checkpoint's (the message lists them), or ``prototype_head`` is asked of
            a multi-domain checkpoint.
    """
    if labeled_split is not None and not prototype_head:
        raise ValueError("--labeled-split (labeled_split) is used only with --prototype-head")
    model, state = load_model(checkpoint, domain=domain)
    cfg = from_dict(state["config"])
    data = dataclasses.replace(cfg.data, pseudo_masks=None)  # score true masks
    if data_root is not None:
        data = dataclasses.replace(data, root=str(data_root))
    head = None
    if prototype_head:
        if "domain" in state:
            raise ValueError(f"{checkpoint}: --prototype-head does not support multi-domain checkpoints")
        head = _prototype_head(model, state, cfg, data, labeled_split)
    report = check_dataset(data, splits=[split])
    report.raise_if_errors()
    if image_size is None and not report.same_size:
        batch_size = 1  # native sizes differ: one image per batch
    dataset = open_dataset(data, split=split, transform=eval_transform(image_size))
    if dataset.num_classes != state["num_classes"]:
        raise ValueError(
            f"{data.root} has {dataset.num_classes} classes but checkpoint {checkpoint} was trained with {state['num_classes']}"
        )
    if dataset.in_channels != model.in_channels:
        raise ValueError(
            f"{data.root} has {dataset.in_channels}-band images but checkpoint {checkpoint} takes {model.in_channels}"
        )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
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


def _prototype_head(
    model: Any, state: dict[str, Any], cfg: Any, data: Any, labeled_split: str | Path | None
) -> Any:
    """Writes the prototype head of ``state``'s run (``cfg``, its labeled images) into ``model``."""
    from pixcon.train.loop import build_datasets, imprint_head

    # the run's own masks: pseudo-labeled images keep their pseudo masks (their true masks are
    # what the run was not given)
    data = dataclasses.replace(data, pseudo_masks=cfg.data.pseudo_masks)
    if labeled_split is not None:
        data = dataclasses.replace(data, labeled_split=str(labeled_split), pseudo_masks=None)
    cfg = dataclasses.replace(cfg, data=data)
    return imprint_head(model, cfg, build_datasets(cfg), torch.device("cpu"), str(state.get("kind", "")))

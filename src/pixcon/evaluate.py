"""Score a checkpoint on a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pixcon.data.folder import SegmentationFolder
from pixcon.data.transforms import eval_transform
from pixcon.train.loop import evaluate, load_model


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
    image_size: int | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Dataset-level scores (see :mod:`pixcon.metrics`) of ``checkpoint`` on ``split``.

    Args:
        checkpoint: A pixcon checkpoint (``last.pt`` of a run).
        split: Split name (``splits/<split>.txt`` under the dataset folder).
        data_root: Dataset folder; defaults to the checkpoint's ``data.root``.
        image_size: Optional resize for evaluation; native size by default.
    """
    model, state = load_model(checkpoint)
    root = Path(data_root) if data_root is not None else Path(state["config"]["data"]["root"])
    dataset = SegmentationFolder(root, split=split, transform=eval_transform(image_size))
    if dataset.num_classes != state["num_classes"]:
        raise ValueError(
            f"{root} has {dataset.num_classes} classes but checkpoint {checkpoint} was trained with {state['num_classes']}"
        )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        scores = evaluate(model, loader, dataset.num_classes, dataset.ignore_index, dataset.class_names)
    scores["split"], scores["checkpoint"] = split, str(checkpoint)
    return scores

"""The prototype head of a network on its run's labeled images (the glue around
:mod:`pixcon.models.prototype_head`).

``train.head_init: prototypes`` starts fine-tuning from it, and ``pixcon evaluate --prototype-head``
scores it: the nearest-class-mean classifier of the network's features over the labeled images
(no augmentation), written exactly into the segmentation head.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pixcon.config import DataConfig
from pixcon.data.registry import open_dataset
from pixcon.data.transforms import eval_transform
from pixcon.models import Segmenter
from pixcon.models.prototype_head import PrototypeHead, Space, load_head, prototype_head
from pixcon.objectives import OBJECTIVES, objective_heads

log = logging.getLogger(__name__)


def imprint_head(
    model: Segmenter,
    data: DataConfig,
    ids: Sequence[str],
    *,
    batch_size: int,
    device: torch.device,
    pretrained_by: str,
    space: Space = "auto",
    seed: int = 0,
) -> PrototypeHead:
    """Writes the prototype head of ``model``'s features over the labeled images ``ids`` of ``data``
    into its (active domain's) segmentation head and returns it.

    Args:
        model: The network (moved to ``device``).
        data: The data section of the images (its masks: pseudo masks for a pseudo-labeled run).
        ids: The labeled image ids.
        batch_size: Images per forward pass (images of several sizes go in groups of one size).
        device: Where the features are computed.
        pretrained_by: The objective that trained ``model``'s weights: ``space="auto"`` uses the
            embedding only if that objective trained the projection head ("" if unknown).
        space: ``"auto"``, ``"embedding"`` or ``"features"`` (``train.prototype_space``).
        seed: Seeds the sample of the scale fit.
    """
    tic = time.perf_counter()
    plain = open_dataset(data, ids=list(ids), transform=eval_transform(data.eval_size))
    loader = DataLoader(
        cast("Dataset[tuple[Tensor, Tensor]]", plain),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=_same_size_groups,
    )
    model = model.to(device)
    trained = pretrained_by in OBJECTIVES and objective_heads(pretrained_by)[1]
    head = prototype_head(
        model,
        _OnDevice(loader, device),
        plain.num_classes,
        plain.ignore_index,
        space,
        seed=seed,
        projection_trained=trained,
    )
    load_head(model, head)
    log.info(
        "head_init prototypes (%s space, %d of %d classes labeled, scale %.3g): labeled-pixel CE %.3f, "
        "accuracy %.3f (%.1f s)",
        head.space,
        int((head.counts > 0).sum()),
        plain.num_classes,
        head.scale,
        head.train_ce,
        head.train_acc,
        time.perf_counter() - tic,
    )
    return head


def _same_size_groups(items: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Collate (image, mask) pairs into stacked groups of consecutive images of one size."""
    groups: list[list[tuple[Tensor, Tensor]]] = []
    for item in items:
        if groups and groups[-1][0][0].shape == item[0].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [(torch.stack([i for i, _ in g]), torch.stack([m for _, m in g])) for g in groups]


@dataclass
class _OnDevice:
    """A loader of :func:`_same_size_groups` batches, moved to ``device`` (iterable more than once)."""

    loader: DataLoader
    device: torch.device

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for groups in self.loader:
            for images, masks in groups:
                yield images.to(self.device), masks.to(self.device)

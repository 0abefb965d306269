"""The contract every training objective follows, and the registry the loop picks them from.

An objective is an ``nn.Module``: it owns the trainable parts only it needs (e.g. GLCNet's MLPs),
which the loop optimises and checkpoints beside the segmenter, and it turns one batch into named
loss terms, whose sum is minimised::

    objective = create_objective("glcnet", cfg, model, info)
    terms = objective(model, batch)        # {"global": tensor(), "local": tensor()}

Batches (what the loop feeds, chosen by the class attributes):

* ``views == 1``: ``(images (B, C, H, W) float in [0, 1], masks (B, H, W) int64)``, the labeled
  training images with the usual joint augmentation;
* ``views == 2``: a dict from :class:`pixcon.data.views.TwoViews` (two augmented views of each
  image with their crop geometry, see there).

``images == "all"`` trains on every image of the training split (the unlabeled ones' masks are all
``ignore_index``); ``"labeled"`` on the labeled split only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn


@dataclass(frozen=True)
class DataInfo:
    """What an objective may need to know about the data."""

    num_classes: int
    ignore_index: int
    in_channels: int
    class_weights: Tensor | None = None  # CE weights (C,) on the device, with loss.class_weights


class Objective(nn.Module):
    """Base class: set the class attributes, implement :meth:`forward`."""

    name: ClassVar[str] = ""
    views: ClassVar[int] = 1  # 1: (images, masks) batches; 2: TwoViews dict batches
    images: ClassVar[str] = "labeled"  # "labeled" or "all"
    uses_segmentation_head: ClassVar[bool] = False  # frozen (and not in DDP's reducer) when False
    uses_projection_head: ClassVar[bool] = False

    def forward(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:  # pragma: no cover
        """One batch -> named scalar loss terms (summed by the loop)."""
        raise NotImplementedError


Factory = Callable[..., Objective]
OBJECTIVES: dict[str, Factory] = {}


def register_objective(name: str) -> Callable[[Factory], Factory]:
    """Decorator: ``@register_objective("glcnet")`` on a factory ``(cfg, model, info) -> Objective``."""

    def deco(factory: Factory) -> Factory:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = factory
        return factory

    return deco


def create_objective(name: str, cfg: Any, model: nn.Module, info: DataInfo) -> Objective:
    """The registered objective ``name`` built for this run."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; available: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](cfg, model, info)

"""The contract every training objective follows, and the registry the loop picks them from.

An objective is an ``nn.Module``: it owns the trainable parts only it needs (e.g. GLCNet's MLPs),
which the loop optimises and checkpoints beside the segmenter, and it turns one batch into named
loss terms, whose sum is minimised::

    objective = create_objective("glcnet", cfg, model, info)
    terms = objective(model, batch)        # {"global": tensor(), "local": tensor()}

A run of several datasets builds one objective per domain
(:func:`pixcon.objectives.domains.create_objectives`).

Batches (what the loop feeds, chosen by the class attributes):

* ``views == 1``: ``(images (B, C, H, W) float in [0, 1], masks (B, H, W) int64)``, the labeled
  training images with the usual joint augmentation;
* ``views == 2``: a dict from :class:`pixcon.data.views.TwoViews` (two augmented views of each
  image with their crop geometry, see there).

``partners`` objectives (the supervised pixel contrast) take, under ``loss.partner: copy``,
(images, masks) batches whose crops ``(2k, 2k + 1)`` are an image and a distorted copy of it
(:mod:`pixcon.data.copies`).

``images == "all"`` trains on every image of the training split (the unlabeled ones' masks are all
``ignore_index``); ``"labeled"`` on the labeled split only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, get_type_hints

from torch import Tensor, nn

from pixcon.config import RunConfig


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
    # pairs the images of a batch for the pixel contrast: loss.partner applies (a distorted copy of
    # each image as its partner, pixcon.data.copies)
    partners: ClassVar[bool] = False

    def forward(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:  # pragma: no cover
        """One batch -> named scalar loss terms (summed by the loop)."""
        raise NotImplementedError


Factory = Callable[[RunConfig, nn.Module, DataInfo], Objective]
OBJECTIVES: dict[str, Factory] = {}
OBJECTIVE_CLASSES: dict[str, type[Objective]] = {}  # name -> the Objective subclass its factory builds


def _return_class(factory: Factory) -> type[Objective] | None:
    """The factory's return annotation, if it names a strict subclass of :class:`Objective`."""
    try:
        hint = get_type_hints(factory).get("return")
    except (NameError, TypeError, AttributeError):  # unresolvable annotations: no class from them
        return None
    if isinstance(hint, type) and issubclass(hint, Objective) and hint is not Objective:
        return hint
    return None


def register_objective(name: str, cls: type[Objective] | None = None) -> Callable[[Factory], Factory]:
    """Decorator: ``@register_objective("glcnet", GLCNetObjective)`` on a factory
    ``(cfg: RunConfig, model, info) -> Objective`` that reads its typed config section.

    ``cls`` is the :class:`Objective` subclass the factory builds (recorded in
    :data:`OBJECTIVE_CLASSES`, so its class attributes can be read without building it); if left
    out, the factory's return annotation is used when it names a subclass.
    """
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"objective {name!r}: cls must be a subclass of Objective, got {cls!r}")

    def deco(factory: Factory) -> Factory:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = factory
        klass = cls or _return_class(factory)
        if klass is not None:
            OBJECTIVE_CLASSES[name] = klass
        return factory

    return deco


def objective_heads(name: str) -> tuple[bool, bool]:
    """``(uses_segmentation_head, uses_projection_head)`` of the registered objective ``name``,
    read from its class (nothing is built).

    Raises:
        ValueError: ``name`` is not registered, or was registered without its class.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; available: {sorted(OBJECTIVES)}")
    if name not in OBJECTIVE_CLASSES:
        raise ValueError(
            f"objective {name!r} was registered without its class (register_objective(name, cls))"
        )
    cls = OBJECTIVE_CLASSES[name]
    return bool(cls.uses_segmentation_head), bool(cls.uses_projection_head)


def create_objective(name: str, cfg: RunConfig, model: nn.Module, info: DataInfo) -> Objective:
    """The registered objective ``name`` built for this run."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; available: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](cfg, model, info)

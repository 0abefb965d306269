"""The supervised objectives of Zhao et al. (ICCV 2021) and the CE baselines.

* ``ce`` -- cross-entropy; from scratch (the CE-only baseline) or from ``train.init_from``
  (stage 2: fine-tuning the whole network from a pretrained checkpoint).
* ``contrast`` -- stage 1: the label-based pixel contrastive loss on the projection head
  (``loss.*``: temperature, form, variant, pixel budget).
* ``joint`` -- the single-stage baseline CE + ``loss.joint_weight`` * contrast.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from pixcon.config import RunConfig
from pixcon.losses.cross_entropy import cross_entropy
from pixcon.losses.dense import PixelContrastiveLoss
from pixcon.models import Segmenter
from pixcon.objectives.base import DataInfo, Objective, register_objective


def pixel_contrast_from_config(cfg: RunConfig, info: DataInfo) -> PixelContrastiveLoss:
    """The ``loss`` section as a :class:`PixelContrastiveLoss`."""
    lc = cfg.loss
    return PixelContrastiveLoss(
        lc.temperature,
        form=lc.form,
        variant=lc.variant,
        max_pixels=lc.max_pixels,
        ignore_index=info.ignore_index,
        gather=lc.gather_negatives,
    )


class CrossEntropy(Objective):
    name = "ce"
    uses_segmentation_head = True
    weight: Tensor | None  # CE class weights (C,), a buffer

    def __init__(self, info: DataInfo) -> None:
        super().__init__()
        self.ignore_index = info.ignore_index
        self.register_buffer("weight", info.class_weights, persistent=False)

    def forward(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, masks = batch  # (B, C, H, W), (B, H, W)
        logits = model(images)  # (B, K, H, W)
        # zero (graph kept) for a batch without a labeled pixel, as the pixel contrast
        return {
            "ce": cross_entropy(logits.float(), masks, weight=self.weight, ignore_index=self.ignore_index)
        }


class PixelContrast(Objective):
    name = "contrast"
    uses_projection_head = True
    partners = True

    def __init__(self, loss: PixelContrastiveLoss, project_sampled: bool = False) -> None:
        super().__init__()
        self.loss, self.project_sampled = loss, project_sampled

    def forward(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, masks = batch
        model = cast(Segmenter, model)  # the segmenter, or the trainee's mixed-precision view of it
        if not self.project_sampled:
            return {"contrast": self.loss(model.project(images), masks)}  # project: (B, D, H/4, W/4)
        # loss.project_sampled: sample on the decoder features, project only those pixels
        cells = model.decoder_cells(images)  # (B, C_dec, H/4, W/4)
        rows, labels, image_ids = self.loss.sample(cells, masks)  # (M, C_dec), (M,), (M,)
        return {"contrast": self.loss.contrast(model.project_rows(rows), labels, image_ids)}  # (M, D)


class JointCEContrast(Objective):
    name = "joint"
    uses_segmentation_head = True
    uses_projection_head = True
    partners = True
    weight: Tensor | None  # CE class weights (C,), a buffer

    def __init__(self, loss: PixelContrastiveLoss, info: DataInfo, weight: float) -> None:
        super().__init__()
        self.loss, self.joint_weight, self.ignore_index = loss, weight, info.ignore_index
        self.register_buffer("weight", info.class_weights, persistent=False)

    def forward(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, masks = batch
        model = cast(Segmenter, model)  # the segmenter, or the trainee's mixed-precision view of it
        logits, proj = model.forward_both(images)  # (B, K, H, W), (B, D, H/4, W/4)
        ce = cross_entropy(logits.float(), masks, weight=self.weight, ignore_index=self.ignore_index)
        return {"ce": ce, "contrast": self.joint_weight * self.loss(proj, masks)}


@register_objective("ce", CrossEntropy)
def _ce(cfg: RunConfig, model: nn.Module, info: DataInfo) -> Objective:
    return CrossEntropy(info)


@register_objective("contrast", PixelContrast)
def _contrast(cfg: RunConfig, model: nn.Module, info: DataInfo) -> Objective:
    return PixelContrast(pixel_contrast_from_config(cfg, info), project_sampled=cfg.loss.project_sampled)


@register_objective("joint", JointCEContrast)
def _joint(cfg: RunConfig, model: nn.Module, info: DataInfo) -> Objective:
    return JointCEContrast(pixel_contrast_from_config(cfg, info), info, cfg.loss.joint_weight)

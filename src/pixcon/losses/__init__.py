"""Contrastive objectives: pure functions in ``contrastive``, modules over dense maps in ``dense``."""

from pixcon.losses.contrastive import (
    FORMS,
    VARIANTS,
    pair_scopes,
    pixel_contrastive_loss,
    pixel_contrastive_loss_dense,
    pixel_contrastive_sum,
)
from pixcon.losses.dense import PixelContrastiveLoss, balanced_quotas, balanced_sample, downsample_labels
from pixcon.losses.distributed import distributed_pixel_contrastive_loss

__all__ = [
    "FORMS",
    "VARIANTS",
    "PixelContrastiveLoss",
    "balanced_quotas",
    "balanced_sample",
    "distributed_pixel_contrastive_loss",
    "downsample_labels",
    "pair_scopes",
    "pixel_contrastive_loss",
    "pixel_contrastive_loss_dense",
    "pixel_contrastive_sum",
]

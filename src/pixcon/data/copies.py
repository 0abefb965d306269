"""Each labeled image with a distorted copy of itself, for Zhao et al.'s cross-image pixel contrast.

Zhao et al. (ICCV 2021) pair every image of a batch with a partner; with ``loss.partner: copy`` the
partner is a second, independently distorted crop of the same image (``loss.partner: image``, the
default, pairs two different labeled images). A sample is the pair, stacked::

    images (2, C, S, S), masks (2, S, S)     # [0]: the training augmentation, [1]: the copy

and :func:`pixcon.train.data.infinite_batches` loads ``data.batch_size / 2`` samples per step and
flattens them to ``data.batch_size`` crops, so that crops ``(2k, 2k + 1)`` are an image and its copy:
the pairs of the ``cross`` variant (:mod:`pixcon.losses.contrastive`), and the same number of crops
per step as every other objective.

The copy's distortion is the training augmentation (random resized crop, flip) with colour jitter
of strength ``loss.copy_jitter`` instead of ``data.color_jitter``. The masks follow each crop, so
positives are pixels of one class in either crop; no pixel correspondence between them is needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pixcon.data.base import DatasetView, PairTransform


class DistortedCopies(DatasetView):
    """``dataset`` (opened without a transform) as ``(image, copy)`` pairs; see the module docstring."""

    crops_per_item = 2  # what infinite_batches divides the batch size by and flattens

    def __init__(self, dataset: Any, transform: PairTransform, distort: PairTransform) -> None:
        super().__init__(dataset)
        self.transform, self.distort = transform, distort

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.dataset[index]  # (C, H, W), (H, W)
        a_image, a_mask = self.transform(image, mask)  # (C, S, S), (S, S)
        b_image, b_mask = self.distort(image, mask)
        return torch.stack([a_image, b_image]), torch.stack([a_mask, b_mask])  # (2, C, S, S), (2, S, S)

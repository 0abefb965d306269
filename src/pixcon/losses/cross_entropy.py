"""Pixel-wise cross-entropy that stays finite on a batch without a labeled pixel.

``F.cross_entropy(..., ignore_index=k)`` averages over the labeled pixels, weighted by the class
weights: ``sum_i w[y_i] * nll_i / sum_i w[y_i]``. When no pixel is labeled (a crop that holds
only ``ignore_index``, which masks with large ignored regions give often) both sums are zero and
the result is ``0 / 0 = NaN``, which stops training. :func:`cross_entropy` returns zero for such a
batch instead, with the graph kept (every logit gets a zero gradient), as the pixel-contrastive
loss does for a batch without a positive pair. On every other batch it is ``F.cross_entropy``
itself, bit for bit.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(
    logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = 255
) -> Tensor:
    """Mean cross-entropy over the labeled pixels; zero (graph kept) when there are none.

    Args:
        logits: Class scores, shape (B, K, H, W) (or (N, K)).
        target: Class ids, shape (B, H, W) (or (N,)), int64; ``ignore_index`` marks unlabeled pixels.
        weight: Optional per-class weights, shape (K,).
        ignore_index: Label of pixels that do not count.

    Returns:
        Scalar: ``F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)``, or
        ``0 * logits.sum()`` when the labeled pixels carry no weight (none is labeled, or every
        labeled pixel's class has weight 0).
    """
    labeled = target != ignore_index  # (B, H, W)
    # Ignored pixels may hold ids outside the weight table (255): index the labeled pixels only.
    # One host sync per call; the loop already syncs on every loss term's finiteness.
    carries = labeled.any() if weight is None else (weight[target[labeled]] != 0).any()
    if not bool(carries):
        return logits.sum() * 0.0  # no labeled pixel: zero, but keep the graph
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)

"""Class-imbalance tools for SuperCon's second stage (Chen et al., "SuperCon: Supervised Contrastive
Learning for Imbalanced Skin Lesion Classification", arXiv 2202.05685).

SuperCon trains in two stages: (i) representation learning with a supervised contrastive loss,
(ii) "classifier fine-tuning", which learns a classifier on the learned representation. pixcon
already has stage (i) (class-balanced pixel sampling in the contrastive loss, :func:`balanced_sample`)
and inverse-frequency CE weights (``loss.class_weights="balanced"``). This module adds the two
standard alternatives for an imbalanced classifier stage, as dense losses:

* :func:`effective_number_weights` -- class-balanced weights from the "effective number of
  samples" (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019,
  Eq. 3-4): w_c proportional to (1 - beta) / (1 - beta^{n_c}), normalised to sum to the number of
  classes. beta = 0 gives equal weights, beta -> 1 inverse frequency.
* :func:`focal_loss` -- Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017, Eq. 5):
  -alpha_t (1 - p_t)^gamma log p_t per pixel; with ``alpha`` = effective-number weights it is Cui
  et al.'s class-balanced focal loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["effective_number_weights", "focal_loss"]


def effective_number_weights(counts: Tensor, beta: float = 0.9999) -> Tensor:
    """Class-balanced weights of Cui et al. (CVPR 2019, Eq. 3-4).

    The effective number of n samples is E_n = (1 - beta^n) / (1 - beta); the weight of class c is
    1 / E_{n_c}, normalised so that the weights of the classes present sum to their number.
    Absent classes (n_c = 0) get weight 0.

    Args:
        counts: Samples (pixels) per class, shape (C,), non-negative.
        beta: In [0, 1); Cui et al. use 0.9-0.9999 (larger for more samples).

    Returns:
        float64 weights, shape (C,).
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = counts.detach().double()
    if n.dim() != 1 or bool((n < 0).any()):
        raise ValueError(f"counts must be a non-negative (C,) tensor, got {tuple(n.shape)}")
    present = n > 0
    # 1 / E_n = (1 - beta) / (1 - beta^n); -expm1(n log beta) = 1 - beta^n without cancellation.
    if beta == 0:
        inv_effective = torch.ones_like(n)
    else:
        inv_effective = (1 - beta) / -torch.expm1(
            n.clamp_min(1) * torch.log(torch.tensor(beta, dtype=n.dtype))
        )
    weights = torch.where(present, inv_effective, 0.0)
    total = weights.sum()
    if total == 0:
        return weights
    return weights * present.sum() / total


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | None = None,
    ignore_index: int | None = 255,
) -> Tensor:
    """Focal loss (Lin et al., ICCV 2017, Eq. 5) over dense logits, mean over counted pixels.

    FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t with p_t the softmax probability of the target
    class. gamma = 0 and ``alpha=None`` give the cross-entropy. Note the plain mean: with class
    weights this differs from ``F.cross_entropy(weight=...)``, which divides by the summed weights.

    Args:
        logits: (B, C, H, W) (or (N, C)).
        target: (B, H, W) (or (N,)) int64 class ids.
        gamma: Focusing parameter >= 0 (Lin et al.: 2).
        alpha: Optional class weights, shape (C,) (e.g. :func:`effective_number_weights`).
        ignore_index: Target value that is not counted, or None.

    Returns:
        Scalar; 0 (with the graph kept) when no pixel counts.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    c = logits.shape[1]
    flat = logits.movedim(1, -1).reshape(-1, c)  # (N, C)
    if flat.dtype in (torch.float16, torch.bfloat16):  # mixed precision: the softmax in float32
        flat = flat.float()
    y = target.reshape(-1)  # (N,)
    if flat.shape[0] != y.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    if ignore_index is not None:
        keep = y != ignore_index
        flat, y = flat[keep], y[keep]  # (N', C), (N',)
    if y.numel() == 0:
        return logits.sum() * 0.0
    log_pt = F.log_softmax(flat, dim=1).gather(1, y[:, None])[:, 0]  # (N',)
    loss = -log_pt  # (N',)
    if gamma > 0:  # (skipped for gamma = 0: the pow's gradient at p_t = 1 would be 0 * inf)
        loss = loss * (1 - log_pt.exp()).clamp_min(0) ** gamma
    if alpha is not None:
        loss = loss * alpha.to(loss)[y]
    return loss.mean()

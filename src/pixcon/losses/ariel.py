"""ARIEL (Feng et al., "Adversarial Graph Contrastive Learning with Information Regularization",
WWW 2022) for labeled pixels.

ARIEL trains graph contrastive learning (GRACE) on two augmented views G1, G2 of a graph G, adds a
third, *adversarial* view: a few steps of projected gradient ascent on G (features and edges,
within a budget) that maximise the contrastive loss against G1, and an *information regulariser*.
Its objective is::

    L = L_con(G1, G2) + eps_w * L_con(G1, G_adv) + lambda * L_I

The regulariser follows from the Markov chain G1 <- G -> G2: by data processing,
I(G1; G2) <= I(G; G1) and <= I(G; G2), hence 2 I(G1; G2) <= I(G; G1) + I(G; G2); with the positive
pair similarity as the per-node estimate (the critic of the InfoNCE bound),

    L_I = mean_i max(0, 2 s(z1_i, z2_i) - s(z1_i, z_i) - s(z2_i, z_i)),

with z the embedding of the unaugmented graph and the last two similarities not differentiated (as
in the authors' code): the views may not agree with each other more than they agree with the
original. It keeps the adversarial game from collapsing the views onto each other.

Mapping to images (pixcon): nodes -> pixels of the projection map; G -> the training image;
G1, G2 -> two pixel-aligned photometric views (:func:`pixcon.losses.claws.aligned_view`; graph
feature masking and edge dropping have no aligned image analogue beyond photometric change);
the attack on features and edges -> an L-inf PGD attack on the input pixels
(:func:`pgd_attack`: radius epsilon, step alpha, projected, clamped to [0, 1]; an image has no
edges to flip); GRACE's node InfoNCE -> the supervised pixel contrast (Zhao et al.) over both views'
pixels at the same sampled positions (:func:`two_view_pixel_loss`). Perturbations and photometric
changes keep pixels aligned, so the masks of the image apply to every view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixcon.losses.contrastive import pixel_contrastive_loss

__all__ = [
    "PGDResult",
    "extra_pass",
    "information_regularizer",
    "pgd_attack",
    "two_view_pixel_loss",
]


@dataclass(frozen=True)
class PGDResult:
    """The outcome of :func:`pgd_attack`.

    Attributes:
        images: The adversarial images (B, C, H, W), detached.
        loss: The attacked loss at ``images``.
        clean_loss: The attacked loss at the unperturbed images.
    """

    images: Tensor
    loss: float
    clean_loss: float


def pgd_attack(
    loss_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    epsilon: float,
    alpha: float,
    steps: int,
) -> PGDResult:
    """Projected gradient ascent on the input within an L-inf ball (Madry et al., 2018).

    Starting from the images themselves (delta = 0, as ARIEL's attack), each step moves the
    perturbation by ``alpha * sign(grad)``, projects it onto ||delta||_inf <= epsilon and then onto
    the valid range [0, 1]. The iterate with the highest loss is returned (the unperturbed images
    count as iterate 0), so ``loss >= clean_loss`` always holds. Only the input is differentiated:
    parameters get no ``.grad``.

    Args:
        loss_fn: Images (B, C, H, W) -> scalar loss to maximise.
        images: (B, C, H, W) in [0, 1].
        epsilon: Radius of the L-inf ball, >= 0 (0 returns the images).
        alpha: Step size, >= 0.
        steps: Ascent steps, >= 0.

    Returns:
        A :class:`PGDResult`; ``loss_fn`` is evaluated ``steps + 1`` times.
    """
    if epsilon < 0 or alpha < 0 or steps < 0:
        raise ValueError(f"epsilon, alpha and steps must be >= 0, got {epsilon}, {alpha}, {steps}")
    x = images.detach()
    if epsilon == 0 or steps == 0 or alpha == 0:
        with torch.no_grad():
            clean = float(loss_fn(x))
        return PGDResult(x, clean, clean)
    delta = torch.zeros_like(x)
    best_x, best_loss, clean_loss = x, -float("inf"), 0.0
    for k in range(steps + 1):
        if k < steps:
            d = delta.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(x + d)  # x + delta lies in [0, 1] by the projection below
                (grad,) = torch.autograd.grad(loss, d)
        else:
            with torch.no_grad():
                loss = loss_fn(x + delta)
        value = float(loss.detach())
        if k == 0:
            clean_loss = value
        if value > best_loss:
            best_x, best_loss = (x + delta).detach(), value
        if k < steps:
            delta = (delta + alpha * grad.sign()).clamp(-epsilon, epsilon)
            delta = (x + delta).clamp(0.0, 1.0) - x  # stay a valid image
    return PGDResult(best_x, best_loss, clean_loss)


def information_regularizer(z1: Tensor, z2: Tensor, z: Tensor) -> Tensor:
    """ARIEL's information regulariser, mean_i max(0, 2 s(z1_i, z2_i) - s(z1_i, z_i) - s(z2_i, z_i)).

    s is the cosine similarity; the two similarities to the original are constants (detached), so
    the gradient only lowers the agreement of the two views where it exceeds their mean agreement
    with the original.

    Args:
        z1, z2: Embeddings of the two views at the same N pixels, shape (N, D).
        z: Embeddings of the original image at those pixels, shape (N, D).

    Returns:
        Scalar (0 with the graph kept for N = 0).
    """
    if not z1.shape == z2.shape == z.shape or z1.dim() != 2:
        raise ValueError(
            f"expected three (N, D) tensors, got {tuple(z1.shape)}, {tuple(z2.shape)}, {tuple(z.shape)}"
        )
    if z1.shape[0] == 0:
        return (z1.sum() + z2.sum()) * 0.0
    z1, z2, z = (
        F.normalize(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t, dim=1)
        for t in (z1, z2, z)
    )
    s12 = (z1 * z2).sum(dim=1)  # (N,)
    s1 = (z1 * z).sum(dim=1).detach()  # (N,)
    s2 = (z2 * z).sum(dim=1).detach()  # (N,)
    return F.relu(2.0 * s12 - s1 - s2).mean()


def two_view_pixel_loss(
    za: Tensor, zb: Tensor, labels: Tensor, temperature: float = 0.1, ignore_index: int | None = 255
) -> Tensor:
    """Supervised pixel contrast over two views' embeddings at the same N positions.

    Args:
        za, zb: (N, D) each; row i of both is the same pixel.
        labels: (N,) class ids.
        temperature: t > 0.
        ignore_index: Label to drop, or None.

    Returns:
        :func:`pixel_contrastive_loss` of the 2N pixels with labels repeated: the pixel's other
        view and every pixel of its class (in either view) are positives.
    """
    if za.shape != zb.shape or labels.shape != za.shape[:1]:
        raise ValueError(
            f"expected za, zb (N, D) and labels (N,), got {tuple(za.shape)}, {tuple(zb.shape)}, {tuple(labels.shape)}"
        )
    return pixel_contrastive_loss(
        torch.cat([za, zb]), labels.repeat(2), temperature, ignore_index=ignore_index
    )


@contextmanager
def extra_pass(model: nn.Module) -> Iterator[None]:
    """Extra forward passes (an attack, an attention map) that leave no trace and are deterministic.

    BatchNorm keeps the model's mode (in training it still normalises with the batch's statistics,
    so an attack targets the function being trained) but its running means, variances and batch
    counters are restored on exit; dropout layers are switched off for the duration (ARIEL attacks
    a fixed function), then back to their mode.
    """
    saved = [
        (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.running_mean is not None
        and m.running_var is not None
        and m.num_batches_tracked is not None
    ]
    dropouts = [(m, m.training) for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for drop, _ in dropouts:
        drop.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, mean, var, count in saved:  # buffers not None: filtered above
                cast(Tensor, bn.running_mean).copy_(mean)
                cast(Tensor, bn.running_var).copy_(var)
                cast(Tensor, bn.num_batches_tracked).copy_(count)
        for drop, mode in dropouts:
            drop.train(mode)

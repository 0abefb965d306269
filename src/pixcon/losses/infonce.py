"""Pixel-level InfoNCE between two views (dense SimCLR) and DirectCLR.

Dense SimCLR: SimCLR's NT-Xent (Chen et al., ICML 2020, Eq. 1) applied to pixels. A pixel of view
1 and the pixel of view 2 that sees the same source point (:func:`pixcon.data.views.correspondence`)
form a positive pair; every other sampled pixel of either view, in any image of the batch, is a
negative (spatial neighbours included, as in PixContrast, Xie et al. CVPR 2021, here with the
nearest-cell rule instead of a distance threshold). For M sampled pairs and the 2M L2-normalised
embeddings z, with a_ij = z_i . z_j / t and p(i) the partner of i::

    l_i = -log( exp(a_{i p(i)}) / sum_{k != i} exp(a_ik) ),    loss = mean over the 2M anchors

This is the SupCon L_out form of :func:`pixcon.losses.contrastive.pixel_contrastive_loss` with
labels = pair ids (each id exactly twice, so one positive per anchor), which computes it exactly in
O(M) memory; :func:`pixel_info_nce` is that call.

DirectCLR (Jing et al., ICLR 2022, arXiv 2110.09348, Sec. 5): no trainable projector; InfoNCE
on the first d0 dimensions of the representation, L2-normalised as a sub-vector. Only those d0
dimensions receive a gradient from the loss; the backbone learns through them. For dense
prediction the representation is the decoder's feature map (the input of both heads, after its
last ReLU, like ResNet's pooled features in the paper) and the InfoNCE runs over corresponding
pixels as above: :func:`directclr_loss`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pixcon.losses.contrastive import pixel_contrastive_loss


def pixel_info_nce(z1: Tensor, z2: Tensor, temperature: float = 0.1, block_size: int | None = None) -> Tensor:
    """InfoNCE / NT-Xent over M positive pairs, 2M anchors, in O(M * block) memory.

    Args:
        z1: Embeddings of view-1 pixels, shape (M, D). Normalised inside.
        z2: Embeddings of the corresponding view-2 pixels, shape (M, D); row i pairs with ``z1``'s row i.
        temperature: t > 0.
        block_size: Anchors per tile of the blocked computation; None picks a default.

    Returns:
        Scalar mean over the 2M anchors (0 with the graph kept when M = 0).
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both have shape (M, D), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    m = z1.shape[0]
    pair_ids = torch.arange(m, device=z1.device).repeat(2)  # (2M,) every id exactly twice
    return pixel_contrastive_loss(
        torch.cat([z1, z2]),  # (2M, D)
        pair_ids,
        temperature=temperature,
        form="supcon",
        ignore_index=None,
        block_size=block_size,
    )


def directclr_loss(r1: Tensor, r2: Tensor, dim: int, temperature: float = 0.1) -> Tensor:
    """DirectCLR: InfoNCE on the first ``dim`` (d0) dimensions of the representation.

    Args:
        r1: Representations of view-1 pixels, shape (M, C).
        r2: Representations of the corresponding view-2 pixels, shape (M, C).
        dim: d0, 1 <= d0 <= C. The sub-vector ``r[:, :d0]`` is L2-normalised inside.
        temperature: t > 0.

    Returns:
        Scalar; its gradient with respect to ``r[:, d0:]`` is exactly zero.
    """
    if r1.dim() != 2 or r1.shape != r2.shape:
        raise ValueError(
            f"r1 and r2 must both have shape (M, C), got {tuple(r1.shape)} and {tuple(r2.shape)}"
        )
    if not 1 <= dim <= r1.shape[1]:
        raise ValueError(f"dim (d0) must be in [1, {r1.shape[1]}], got {dim}")
    return pixel_info_nce(r1[:, :dim], r2[:, :dim], temperature)


def sample_pairs(
    corr: Tensor, max_pairs: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A uniform random subset of corresponding pixel pairs, each view-2 pixel used at most once.

    Where several view-1 pixels map to one view-2 pixel (view 2 zoomed out), one of them, chosen
    at random, keeps it: a pixel repeated under two pair ids would be its own negative.

    Args:
        corr: View-2 index of every view-1 pixel or -1, shape (B, n) (from
            :func:`pixcon.data.views.correspondence`).
        max_pairs: Budget M_max >= 1 for the whole batch.
        generator: Random source on ``corr``'s device; None uses torch's global RNG.

    Returns:
        ``(idx1, idx2)``: indices into the flattened (B*n) pixels of view 1 and view 2, shape (M,)
        each, M <= max_pairs, in random order.
    """
    if corr.dim() != 2:
        raise ValueError(f"corr must have shape (B, n), got {tuple(corr.shape)}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    b, n = corr.shape
    offset = torch.arange(b, device=corr.device)[:, None] * n  # (B, 1)
    flat = corr.flatten()  # (B*n,)
    idx1 = torch.nonzero(flat >= 0).squeeze(1)  # (V,) view-1 pixels that have a partner
    idx2 = (corr + offset).flatten()[idx1]  # (V,)
    order = torch.argsort(
        torch.rand(idx1.shape, generator=generator, device=corr.device)
    )  # (V,) random order
    idx1, idx2 = idx1[order], idx2[order]
    # First occurrence of every view-2 pixel in the random order: a stable sort keeps that order.
    sorted2, perm = torch.sort(idx2, stable=True)  # (V,)
    first = torch.ones_like(sorted2, dtype=torch.bool)
    first[1:] = sorted2[1:] != sorted2[:-1]
    keep = torch.sort(perm[first]).values[:max_pairs]  # (M,) back in random order, then the budget
    return idx1[keep], idx2[keep]


def _flatten(x: Tensor) -> Tensor:
    """(B, D, h, w) -> (B*h*w, D), pixel-major in the order of :func:`correspondence`'s indices."""
    b, d, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w, d)


def _check_maps(x1: Tensor, x2: Tensor, corr: Tensor) -> None:
    if x1.dim() != 4 or x1.shape != x2.shape:
        raise ValueError(
            f"expected two (B, D, h, w) maps of one shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    b, _, h, w = x1.shape
    if corr.shape != (b, h * w):
        raise ValueError(f"corr must have shape (B, h*w) = {(b, h * w)}, got {tuple(corr.shape)}")


class PixelInfoNCELoss(nn.Module):
    """Dense SimCLR over corresponding pixels of two views; the math is :func:`pixel_info_nce`.

    Args:
        temperature: t > 0.
        max_pairs: Corresponding pairs sampled per batch (the loss sees 2x as many pixels); memory
            grows linearly with it.
    """

    def __init__(self, temperature: float = 0.2, max_pairs: int = 1024) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
        self.temperature, self.max_pairs = float(temperature), int(max_pairs)

    def forward(self, z1: Tensor, z2: Tensor, corr: Tensor) -> Tensor:
        """z1, z2: (B, D, h, w) embeddings of the two views; corr: (B, h*w) -> scalar."""
        _check_maps(z1, z2, corr)
        idx1, idx2 = sample_pairs(corr, self.max_pairs)  # (M,), (M,)
        return pixel_info_nce(_flatten(z1)[idx1], _flatten(z2)[idx2], self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, max_pairs={self.max_pairs}"


class DirectCLRLoss(nn.Module):
    """DirectCLR over corresponding pixels of two feature maps; the math is :func:`directclr_loss`.

    Args:
        dim: d0 >= 1, the leading channels the loss sees (the paper: 360 of ResNet-50's 2048).
        temperature: t > 0.
        max_pairs: Corresponding pairs sampled per batch.
    """

    def __init__(self, dim: int = 64, temperature: float = 0.1, max_pairs: int = 1024) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim (d0) must be >= 1, got {dim}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
        self.dim, self.temperature, self.max_pairs = int(dim), float(temperature), int(max_pairs)

    def forward(self, r1: Tensor, r2: Tensor, corr: Tensor) -> Tensor:
        """r1, r2: (B, C, h, w) representations (C >= d0) of the two views; corr: (B, h*w) -> scalar."""
        _check_maps(r1, r2, corr)
        if r1.shape[1] < self.dim:
            raise ValueError(
                f"DirectCLR dim d0={self.dim} exceeds the representation's {r1.shape[1]} channels"
            )
        idx1, idx2 = sample_pairs(corr, self.max_pairs)  # (M,), (M,)
        # Slicing before flattening copies d0 channels instead of C; the loss is the same.
        r1, r2 = _flatten(r1[:, : self.dim])[idx1], _flatten(r2[:, : self.dim])[idx2]  # (M, d0) each
        return directclr_loss(r1, r2, self.dim, self.temperature)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, temperature={self.temperature}, max_pairs={self.max_pairs}"

"""GLCNet's two contrastive terms (Li et al., TGRS 2022, arXiv 2106.10605).

Global style contrast: the per-channel mean and variance of the encoder's coarsest features (the
"style" of an image) form a (B, 2C) vector per view (the authors' code takes them after the ASPP
module; pixcon takes the encoder's output, which every smp architecture has); an MLP maps it to
an embedding and NT-Xent contrasts the two views of each image against the other images.

Local feature-matching contrast: K patches are drawn in the source region where the two crops
overlap; each patch is mapped into both views, the decoder features are averaged over it
(``roi_align``), an MLP maps them to embeddings and NT-Xent contrasts every patch against all
patches of the batch (positive: the same patch in the other view).

Total: ``lambda * global + (1 - lambda) * local`` (the paper: temperature 0.5, lambda 0.5).

The math lives in pure functions over flat tensors (:func:`nt_xent`, :func:`style_statistics`,
:func:`sample_patches`, :func:`pool_patches`); :class:`NTXentLoss` and :class:`GLCNetLoss` are thin
modules that validate hyper-parameters. The MLPs belong to the objective
(:class:`pixcon.objectives.ssl.GLCNetObjective`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from pixcon.data.views import CELL_OFFSET


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def nt_xent(a: Tensor, b: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent, SimCLR's loss (Chen et al., ICML 2020, Eq. 1), over 2N samples.

    With z the L2-normalised rows of ``cat(a, b)`` and s_ij = z_i . z_j / t, for every anchor i and
    its positive p(i) (row i of ``a`` pairs with row i of ``b``)::

        l_i = -log( exp(s_{i p(i)}) / sum_{k != i} exp(s_ik) ),    loss = mean_i l_i over the 2N anchors

    The other 2N - 2 samples are the negatives. Dense (2N x 2N) and computed in float32 at
    least: meant for image- and patch-level embeddings (N up to a few thousand); pixel-level
    pairs go through :func:`pixcon.losses.infonce.pixel_info_nce`, the same value in O(N) memory.

    Args:
        a: Embeddings of view 1, shape (N, D). Normalised here.
        b: Embeddings of view 2, shape (N, D); row i is the positive of ``a``'s row i.
        temperature: t > 0.

    Returns:
        Scalar mean over the 2N anchors; 0 (graph kept) for N = 0.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both have shape (N, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = a.shape[0]
    if n == 0:
        return (a.sum() + b.sum()) * 0.0
    z = torch.cat([a, b])  # (2N, D)
    z = F.normalize(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=1)
    logits = z @ z.t() / temperature  # (2N, 2N)
    # A finite fill keeps autograd free of NaN; exp(min) underflows to exactly 0.
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, torch.finfo(logits.dtype).min)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)  # (2N,) index of the positive
    return F.cross_entropy(logits, target)


def style_statistics(features: Tensor) -> Tensor:
    """GLCNet's style vector: per-channel mean and variance over space (the paper; its code too).

    Args:
        features: Encoder features, shape (B, C, h, w).

    Returns:
        ``cat(mean, var)``, shape (B, 2C); the variance is the population one (divided by h*w).
    """
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, h, w), got {tuple(features.shape)}")
    flat = features.flatten(2)  # (B, C, h*w)
    mean = flat.mean(dim=2)  # (B, C)
    var = flat.var(dim=2, unbiased=False)  # (B, C)
    return torch.cat([mean, var], dim=1)  # (B, 2C)


def sample_patches(
    geom1: Tensor,
    geom2: Tensor,
    num_patches: int,
    patch_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Square-ish patches in the source region where the two views' crops overlap.

    The patch spans ``patch_fraction`` of the smaller crop along each axis, so it covers at most
    that fraction of either view's side (the paper: 48 px of 224, ``patch_fraction = 48 / 224``),
    shrunk to the overlap where the overlap is smaller. Its position is uniform among the
    placements that keep it inside the overlap, hence inside both crops.

    Args:
        geom1, geom2: View geometry ``(top, left, height, width, flip)``, shape (B, 5) each.
        num_patches: K >= 1 patches per image.
        patch_fraction: In (0, 1].
        generator: Random source on ``geom1``'s device; None uses torch's global RNG.

    Returns:
        ``(boxes, valid)``: boxes ``(x1, y1, x2, y2)`` in source pixels, shape (B, K, 4), and
        ``valid`` (B,) bool, False where the crops do not overlap (those boxes are empty).
    """
    if geom1.shape != geom2.shape or geom1.dim() != 2 or geom1.shape[1] != 5:
        raise ValueError(
            f"geom1 and geom2 must both be (B, 5), got {tuple(geom1.shape)} and {tuple(geom2.shape)}"
        )
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    if not 0 < patch_fraction <= 1:
        raise ValueError(f"patch_fraction must be in (0, 1], got {patch_fraction}")
    top1, left1, h1, w1, _ = geom1.unbind(1)  # (B,) each
    top2, left2, h2, w2, _ = geom2.unbind(1)
    y0, x0 = torch.maximum(top1, top2), torch.maximum(left1, left2)  # (B,) overlap corner
    oh = torch.minimum(top1 + h1, top2 + h2) - y0  # (B,) overlap height, < 0 when disjoint
    ow = torch.minimum(left1 + w1, left2 + w2) - x0
    valid = (oh > 0) & (ow > 0)  # (B,)
    ph = torch.minimum(patch_fraction * torch.minimum(h1, h2), oh).clamp(min=0)  # (B,) patch height
    pw = torch.minimum(patch_fraction * torch.minimum(w1, w2), ow).clamp(min=0)
    b = geom1.shape[0]
    u = torch.rand(
        b, num_patches, 2, generator=generator, device=geom1.device, dtype=geom1.dtype
    )  # (B, K, 2)
    py = y0[:, None] + u[..., 0] * (oh - ph).clamp(min=0)[:, None]  # (B, K) patch top
    px = x0[:, None] + u[..., 1] * (ow - pw).clamp(min=0)[:, None]  # (B, K) patch left
    boxes = torch.stack([px, py, px + pw[:, None], py + ph[:, None]], dim=-1)  # (B, K, 4)
    return boxes, valid


def pool_patches(
    features: Tensor, boxes: Tensor, size: int | tuple[int, int], offset: float = CELL_OFFSET
) -> Tensor:
    """Average of the features over each box, with ``torchvision.ops.roi_align``.

    One output bin per box and the adaptive sampling ratio: about one bilinear sample per feature
    cell along each axis, averaged. A box aligned to cell borders (``s * a + offset - s / 2``) gives
    the exact mean of the cells it covers.

    Alignment: ``roi_align(aligned=True)`` scales a box by ``1 / s`` and subtracts half a cell, so
    it reads cell a at view coordinate ``s * a + s / 2`` (the centre of the block [s * a, s * a + s)).
    Feature cell a is centred on ``s * a + offset`` instead (:mod:`pixcon.data.views`; 0.5 for
    smp's encoders), so the boxes are shifted by ``s / 2 - offset`` (+1.5 px at stride 4) first: the
    pooled region is then the region of the view the box covers, flipped views alike (their cells
    are laid out the same way in view coordinates, only the view-to-source map flips).

    Args:
        features: Feature map of the views, shape (B, C, h, w), with h / H == w / W.
        boxes: ``(x1, y1, x2, y2)`` in view pixels, shape (B, K, 4).
        size: The views' (H, W), or S.
        offset: Centre of feature cell 0 in view pixels (see :data:`pixcon.data.views.CELL_OFFSET`).

    Returns:
        Pooled features, shape (B, K, C).
    """
    if features.dim() != 4 or boxes.dim() != 3 or boxes.shape[0] != features.shape[0] or boxes.shape[-1] != 4:
        raise ValueError(
            f"expected features (B, C, h, w) and boxes (B, K, 4), got {tuple(features.shape)} and {tuple(boxes.shape)}"
        )
    height, width = _hw(size)
    b, c, h, w = features.shape
    scale = h / height
    if abs(w / width - scale) > 1e-6:
        raise ValueError(f"features {(h, w)} are not a uniform downscaling of the views {(height, width)}")
    shift = 0.5 / scale - offset  # view pixels: roi_align's cell centre s * a + s / 2 -> s * a + offset
    rois = [(box + shift).to(features.dtype) for box in boxes]  # B tensors of (K, 4)
    pooled = roi_align(features, rois, output_size=1, spatial_scale=scale, sampling_ratio=-1, aligned=True)
    return pooled.reshape(b, boxes.shape[1], c)  # (B*K, C, 1, 1) -> (B, K, C)


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """GLCNet's heads: Linear -> ReLU -> Linear (no batch norm, as in the paper's code)."""
    for name, v in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class NTXentLoss(nn.Module):
    """NT-Xent between paired embeddings; the math lives in :func:`nt_xent`.

    Args:
        temperature: t > 0 (GLCNet: 0.5).
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """a, b: (N, D) embeddings of the two views, row i of each a positive pair -> scalar."""
        return nt_xent(a, b, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class GLCNetLoss(nn.Module):
    """GLCNet's weighted terms: ``lambda * NT-Xent(global) + (1 - lambda) * NT-Xent(local)``.

    Args:
        temperature: t > 0 for both terms (the paper: 0.5).
        global_weight: lambda in [0, 1] (the paper: 0.5).
    """

    def __init__(self, temperature: float = 0.5, global_weight: float = 0.5) -> None:
        super().__init__()
        if not 0 <= global_weight <= 1:
            raise ValueError(f"global_weight must be in [0, 1], got {global_weight}")
        self.nt_xent = NTXentLoss(temperature)
        self.global_weight = float(global_weight)

    def forward(self, global1: Tensor, global2: Tensor, local1: Tensor, local2: Tensor) -> dict[str, Tensor]:
        """Image embeddings (B, D) and patch embeddings (M, D) of the two views.

        Returns:
            ``{"global": lambda * L_global, "local": (1 - lambda) * L_local}`` (already weighted,
            so their sum is the paper's total).
        """
        lam = self.global_weight
        return {
            "global": lam * self.nt_xent(global1, global2),
            "local": (1 - lam) * self.nt_xent(local1, local2),
        }

    def extra_repr(self) -> str:
        return f"global_weight={self.global_weight}"

"""Where a segmenter's decoder cells sit on the input: the input-gradient centroid of each cell."""

from __future__ import annotations

import torch
from torch import nn


def mirrored_cell_offset(model: nn.Module, image: torch.Tensor, cells: int = 4) -> tuple[int, torch.Tensor]:
    """(stride, mean offset (y, x) in px) of the central ``cells`` x ``cells`` decoder cells of ``model``.

    For each cell a, the centroid of |d(cell, summed over channels) / d input| along each axis,
    minus stride * a (pixel k spans [k, k+1)). Random kernels are asymmetric, which moves single
    centroids by up to ~1.5 px and a model's mean by up to ~1 px; the same network with every
    kernel mirrored, on the mirrored input, has the mirrored bias but the same cell geometry, so the
    mean of the two runs is the geometry. ``model`` (eval mode) has its kernels mirrored in place.
    Two backward passes; ``image`` is (1, 3, S, S).
    """
    s = image.shape[-1]
    with torch.no_grad():
        h = model.features(image)[1].shape[-1]
    stride, mid = s // h, h // 2
    grid = [
        (r, c)
        for r in range(mid - cells // 2, mid + cells - cells // 2)
        for c in range(mid - cells // 2, mid + cells - cells // 2)
    ]
    rows, cols = torch.tensor(grid).T  # (n,) each
    k = torch.arange(s, dtype=torch.float64) + 0.5  # continuous centre of pixel k

    def offsets(x: torch.Tensor) -> torch.Tensor:
        x = x.expand(len(grid), -1, -1, -1).clone().requires_grad_(True)  # one sample per cell
        decoded = model.features(x)[1]  # (n, C_dec, h, w)
        decoded[torch.arange(len(grid)), :, rows, cols].sum().backward()
        g = x.grad.abs().sum(1).double()  # (n, S, S)
        cy = (g.sum(2) * k).sum(1) / g.sum((1, 2))
        cx = (g.sum(1) * k).sum(1) / g.sum((1, 2))
        return torch.stack([cy - stride * rows, cx - stride * cols], 1).mean(0)  # (2,)

    plain = offsets(image)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(m.weight.flip(-1, -2))
    return stride, (plain + offsets(image.flip(-1, -2))) / 2

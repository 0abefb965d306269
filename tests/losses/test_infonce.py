"""Pixel InfoNCE and DirectCLR against references written straight from the equations."""

from __future__ import annotations

import math

import pytest
import torch

from pixcon.losses.glcnet import nt_xent
from pixcon.losses.infonce import (
    DirectCLRLoss,
    PixelInfoNCELoss,
    directclr_loss,
    pixel_info_nce,
    sample_pairs,
)


def reference_info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE with one positive per anchor, as loops: anchors are all 2M samples, the positive
    is the other view of the same pair, the denominator every other sample."""
    z = [v / v.norm() for v in [*z1, *z2]]
    m = len(z1)
    total = z1.new_zeros(())
    for i in range(2 * m):
        p = (i + m) % (2 * m)
        denom = sum(torch.exp(z[i] @ z[k] / tau) for k in range(2 * m) if k != i)
        total = total - torch.log(torch.exp(z[i] @ z[p] / tau) / denom)
    return total / (2 * m)


@pytest.mark.parametrize("m, d", [(1, 3), (3, 4), (8, 5), (17, 3)])
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
def test_pixel_info_nce_is_info_nce(m: int, d: int, tau: float) -> None:
    # SupCon's L_out with labels = pair ids (each id twice) is InfoNCE: value and gradient.
    g = torch.Generator().manual_seed(m * 10 + d)
    z1 = torch.randn(m, d, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(m, d, generator=g, dtype=torch.float64, requires_grad=True)
    ref = reference_info_nce(z1, z2, tau)
    ref_g = torch.autograd.grad(ref, (z1, z2))
    out = pixel_info_nce(z1, z2, tau, block_size=3)  # several tiles of the blocked computation
    out_g = torch.autograd.grad(out, (z1, z2))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(out_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out, nt_xent(z1, z2, tau), rtol=1e-10, atol=1e-12)  # GLCNet's dense core


def test_pixel_info_nce_edge_cases() -> None:
    ones = torch.ones(5, 3, dtype=torch.float64)
    assert pixel_info_nce(ones, ones, 0.3).item() == pytest.approx(math.log(9))
    empty = torch.zeros(0, 4, requires_grad=True)
    out = pixel_info_nce(empty, empty, 0.1)
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match="shape"):
        pixel_info_nce(ones, ones[:3], 0.1)


@pytest.mark.parametrize("d0", [1, 3, 6])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_directclr_value_and_gradient(d0: int, tau: float) -> None:
    g = torch.Generator().manual_seed(d0)
    r1 = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    r2 = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    out = directclr_loss(r1, r2, d0, tau)
    g1, g2 = torch.autograd.grad(out, (r1, r2))
    # Reference: InfoNCE on the L2-normalised sub-vectors r[:, :d0] (DirectCLR, Jing et al. Sec. 5).
    ref = reference_info_nce(r1[:, :d0], r2[:, :d0], tau)
    ref_g1, ref_g2 = torch.autograd.grad(ref, (r1, r2))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g1, ref_g1, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(g2, ref_g2, rtol=1e-8, atol=1e-10)
    # No gradient reaches the dimensions >= d0, and some reaches the others.
    assert bool((g1[:, d0:] == 0).all() and (g2[:, d0:] == 0).all())
    assert float(g1[:, :d0].abs().sum()) > 0
    with pytest.raises(ValueError, match="d0"):
        directclr_loss(r1, r2, 7, tau)


def _corr(b: int, n: int, seed: int, collide: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    high = n // 2 if collide else n  # few distinct targets: many view-1 pixels share one
    corr = torch.randint(high, (b, n), generator=g)
    corr[torch.rand(b, n, generator=g) < 0.3] = -1
    return corr


@pytest.mark.parametrize("budget", [1, 10, 1000])
def test_sample_pairs_valid_unique_and_within_budget(budget: int) -> None:
    b, n = 3, 40
    corr = _corr(b, n, seed=budget)
    idx1, idx2 = sample_pairs(corr, budget, generator=torch.Generator().manual_seed(0))
    assert len(idx1) == len(idx2) <= budget
    flat = corr.flatten()
    assert bool((flat[idx1] >= 0).all())
    assert torch.equal(flat[idx1] + idx1 // n * n, idx2)  # same image, the corresponding pixel
    assert len(torch.unique(idx2)) == len(idx2) and len(torch.unique(idx1)) == len(idx1)
    if budget == 1000:  # every distinct view-2 target is used once
        targets = {(i // n, int(c)) for i, c in enumerate(flat.tolist()) if c >= 0}
        assert len(idx2) == len(targets)
    again = sample_pairs(corr, budget, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], idx1) and torch.equal(again[1], idx2)


def test_sample_pairs_is_uniform_over_valid_pixels() -> None:
    corr = torch.arange(20)[None].repeat(2, 1)  # identity correspondences, no collisions
    counts = torch.zeros(40)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx1, _ = sample_pairs(corr, 10, generator=g)
        counts[idx1] += 1
    assert float(counts.min()) > 60 and float(counts.max()) < 140  # expected 100 each


def test_modules_sample_and_call_the_cores() -> None:
    g = torch.Generator().manual_seed(0)
    b, d, h, w = 2, 8, 4, 4
    z1, z2 = torch.randn(2, b, d, h, w, generator=g, dtype=torch.float64)
    corr = _corr(b, h * w, seed=1, collide=False)
    torch.manual_seed(5)
    out = PixelInfoNCELoss(temperature=0.2, max_pairs=12)(z1, z2, corr)
    torch.manual_seed(5)
    idx1, idx2 = sample_pairs(corr, 12)
    flat1, flat2 = z1.permute(0, 2, 3, 1).reshape(-1, d), z2.permute(0, 2, 3, 1).reshape(-1, d)
    torch.testing.assert_close(out, reference_info_nce(flat1[idx1], flat2[idx2], 0.2))
    torch.manual_seed(5)
    out = DirectCLRLoss(dim=3, temperature=0.1, max_pairs=12)(z1, z2, corr)
    torch.testing.assert_close(out, reference_info_nce(flat1[idx1, :3], flat2[idx2, :3], 0.1))
    with pytest.raises(ValueError, match="exceeds"):
        DirectCLRLoss(dim=9)(z1, z2, corr)
    with pytest.raises(ValueError, match="corr"):
        PixelInfoNCELoss()(z1, z2, corr[:, :4])
    for bad in (dict(temperature=0.0), dict(max_pairs=0)):
        with pytest.raises(ValueError):
            PixelInfoNCELoss(**bad)
        with pytest.raises(ValueError):
            DirectCLRLoss(**bad)
    with pytest.raises(ValueError, match="d0"):
        DirectCLRLoss(dim=0)

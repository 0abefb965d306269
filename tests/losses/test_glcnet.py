"""GLCNet's pieces against references written straight from the equations."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import NTXentLoss as PMLNTXent

from pixcon.data.views import CELL_OFFSET, grid_to_source, map_boxes, sample_view
from pixcon.losses.glcnet import (
    GLCNetLoss,
    NTXentLoss,
    nt_xent,
    pool_patches,
    projection_mlp,
    sample_patches,
    style_statistics,
)


def reference_nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR (Chen et al. 2020) Eq. 1 and the loss over 2N samples, as explicit loops (autograd-able)."""
    z = [*a, *b]  # samples 2k-1, 2k of the paper are a[k], b[k] here
    n = len(a)

    def sim(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u @ v) / (u.norm() * v.norm())

    def ell(i: int, j: int) -> torch.Tensor:
        denom = sum(torch.exp(sim(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        return -torch.log(torch.exp(sim(z[i], z[j]) / tau) / denom)

    return sum(ell(k, k + n) + ell(k + n, k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize("n, d", [(1, 3), (2, 4), (5, 3), (9, 8)])
@pytest.mark.parametrize("tau", [0.07, 0.5, 2.0])
def test_nt_xent_matches_reference_value_and_gradient(n: int, d: int, tau: float) -> None:
    g = torch.Generator().manual_seed(n * 100 + d)
    a = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    ref = reference_nt_xent(a, b, tau)
    ref_ga, ref_gb = torch.autograd.grad(ref, (a, b))
    out = nt_xent(a, b, tau)
    ga, gb = torch.autograd.grad(out, (a, b))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ga, ref_ga, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gb, ref_gb, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_pytorch_metric_learning(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    labels = torch.arange(7).repeat(2)
    expected = PMLNTXent(temperature=tau)(torch.cat([a, b]), labels)
    torch.testing.assert_close(nt_xent(a, b, tau), expected)


def test_nt_xent_analytic_values_and_edge_cases() -> None:
    ones = torch.ones(4, 3, dtype=torch.float64)
    # All 2N embeddings identical: every anchor's softmax is uniform over 2N - 1 candidates.
    assert nt_xent(ones, ones, 0.5).item() == pytest.approx(math.log(7))
    empty = torch.zeros(0, 3, requires_grad=True)
    out = nt_xent(empty, empty, 0.5)
    assert out.item() == 0.0 and out.requires_grad
    half = nt_xent(torch.randn(3, 4).half(), torch.randn(3, 4).half(), 0.5)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(ones, ones, 0.0)
    with pytest.raises(ValueError, match="shape"):
        nt_xent(ones, ones[:2], 0.5)


def test_style_statistics_match_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    f[1, 2] = 7.0  # a constant channel: variance 0, finite gradient
    out = style_statistics(f)
    x = f.numpy()
    for b in range(2):
        for c in range(3):
            values = [x[b, c, i, j] for i in range(4) for j in range(5)]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / len(values)
            assert out[b, c].item() == pytest.approx(mean, rel=1e-12)
            assert out[b, 3 + c].item() == pytest.approx(var, rel=1e-12, abs=1e-15)
    f.requires_grad_(True)
    style_statistics(f).sum().backward()
    assert torch.isfinite(f.grad).all()


def _random_geoms(seed: int, b: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = [sample_view(80, 100, 32, scale=(0.2, 1.0), generator=g) for _ in range(2 * b)]
    geoms = torch.stack([v.to_tensor() for v in views])
    return geoms[:b], geoms[b:]


@pytest.mark.parametrize("seed", range(3))
def test_patches_lie_inside_both_crops(seed: int) -> None:
    g1, g2 = _random_geoms(seed)
    boxes, valid = sample_patches(g1, g2, 4, 48 / 224, generator=torch.Generator().manual_seed(0))
    assert boxes.shape == (6, 4, 4)
    for geo in (g1, g2):
        top, left, height, width = (geo[:, k, None] for k in range(4))
        x1, y1, x2, y2 = boxes.unbind(-1)
        inside = (
            (x1 >= left - 1e-4)
            & (x2 <= left + width + 1e-4)
            & (y1 >= top - 1e-4)
            & (y2 <= top + height + 1e-4)
        )
        assert bool(inside[valid].all())
        # Mapped into the view, the patch covers at most the fraction of its side.
        view_boxes = map_boxes(boxes, geo, 32)
        assert bool((view_boxes[..., 2] - view_boxes[..., 0] <= 48 / 224 * 32 + 1e-4).all())
        assert bool((view_boxes[..., 0] >= -1e-4).all() and (view_boxes[..., 2] <= 32 + 1e-4).all())
    # Patch size: the fraction of the smaller crop, unless the overlap is smaller.
    side_y = boxes[..., 3] - boxes[..., 1]  # (B, K)
    limit = 48 / 224 * torch.minimum(g1[:, 2], g2[:, 2])  # (B,)
    assert bool((side_y <= limit[:, None] + 1e-4)[valid].all())
    assert bool((side_y > 0)[valid].all())


def test_patch_sampling_is_deterministic_and_flags_disjoint_crops() -> None:
    g1, g2 = _random_geoms(7)
    a = sample_patches(g1, g2, 4, 0.2, generator=torch.Generator().manual_seed(3))
    b = sample_patches(g1, g2, 4, 0.2, generator=torch.Generator().manual_seed(3))
    c = sample_patches(g1, g2, 4, 0.2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    disjoint1 = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.0]])
    disjoint2 = torch.tensor([[20.0, 20.0, 10.0, 10.0, 1.0]])
    boxes, valid = sample_patches(disjoint1, disjoint2, 2, 0.2)
    assert not bool(valid[0])
    assert bool((boxes[0, :, 2] == boxes[0, :, 0]).all())  # empty boxes
    with pytest.raises(ValueError, match="num_patches"):
        sample_patches(g1, g2, 0, 0.2)
    with pytest.raises(ValueError, match="patch_fraction"):
        sample_patches(g1, g2, 1, 1.5)


@pytest.mark.parametrize("offset", [CELL_OFFSET, 2.0, 0.0])
def test_pool_patches_is_the_mean_over_covered_cells(offset: float) -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 8, 8, generator=g, dtype=torch.float64)  # views of 32 px, stride 4
    # Cell a spans [4a + offset - 2, 4a + offset + 2) in view pixels. Cells [2, 4) x [1, 4) of
    # image 0 and [0, 8) x [6, 8) of image 1, as (x1, y1, x2, y2) borders for offset 2, shifted.
    boxes = torch.tensor([[[4.0, 8.0, 16.0, 16.0]], [[24.0, 0.0, 32.0, 32.0]]], dtype=torch.float64)
    pooled = pool_patches(features, boxes + (offset - 2), 32, offset)
    assert pooled.shape == (2, 1, 5)
    torch.testing.assert_close(pooled[0, 0], features[0, :, 2:4, 1:4].mean(dim=(1, 2)))
    torch.testing.assert_close(pooled[1, 0], features[1, :, :, 6:8].mean(dim=(1, 2)))


def test_pool_patches_default_offset_is_the_cell_model() -> None:
    assert inspect.signature(pool_patches).parameters["offset"].default == CELL_OFFSET == 0.5
    # A feature map holding each cell's centre (view pixels: 4a + 0.5): the pooled value of a box
    # is the box's centre, i.e. the pooled region is the box (sample points spread evenly over it).
    a = torch.arange(8, dtype=torch.float64) * 4 + CELL_OFFSET
    features = torch.stack(torch.meshgrid(a, a, indexing="ij"))[None]  # (1, 2, 8, 8) as (y, x)
    boxes = torch.tensor([[[3.0, 5.0, 11.0, 9.0], [6.5, 1.0, 27.0, 28.0], [14.2, 17.9, 20.0, 24.4]]])
    pooled = pool_patches(features, boxes.double(), 32)[0]  # (3, 2)
    centre = torch.stack([(boxes[0, :, 1] + boxes[0, :, 3]) / 2, (boxes[0, :, 0] + boxes[0, :, 2]) / 2], -1)
    torch.testing.assert_close(pooled, centre.double())


@pytest.mark.parametrize("flip", [False, True])
def test_pooled_patches_see_their_source_region(flip: bool) -> None:
    # Source boxes -> map_boxes -> pool_patches on a feature map whose cells hold the source point
    # of their centre (grid_to_source, the default cell model): the pooled value is the source
    # box's centre, for flipped views too.
    geo = torch.tensor([[6.0, 10.0, 48.0, 64.0, float(flip)]], dtype=torch.float64)  # view of 32 px
    centres = grid_to_source(geo, 8, 32)  # (1, 8, 8, 2) source (y, x) of every cell centre
    features = centres.permute(0, 3, 1, 2)  # (1, 2, 8, 8)
    boxes = torch.tensor([[[20.0, 12.0, 40.0, 30.0], [46.0, 20.0, 60.0, 44.0]]], dtype=torch.float64)
    pooled = pool_patches(features, map_boxes(boxes, geo, 32), 32)[0]  # (2, 2)
    centre = torch.stack([(boxes[0, :, 1] + boxes[0, :, 3]) / 2, (boxes[0, :, 0] + boxes[0, :, 2]) / 2], -1)
    torch.testing.assert_close(pooled, centre)


def test_modules_validate_and_weight_terms() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=-1.0)
    with pytest.raises(ValueError, match="global_weight"):
        GLCNetLoss(global_weight=1.5)
    with pytest.raises(ValueError, match="hidden_dim"):
        projection_mlp(4, 0, 2)
    g = torch.Generator().manual_seed(0)
    q, k, lq, lk = (torch.randn(6, 4, generator=g) for _ in range(4))
    terms = GLCNetLoss(temperature=0.5, global_weight=0.3)(q, k, lq, lk)
    assert set(terms) == {"global", "local"}
    torch.testing.assert_close(terms["global"], 0.3 * nt_xent(q, k, 0.5))
    torch.testing.assert_close(terms["local"], 0.7 * nt_xent(lq, lk, 0.5))
    assert np.isfinite(sum(t.item() for t in terms.values()))

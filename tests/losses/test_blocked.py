"""The torch path's schedule (:mod:`pixcon.losses.blocked`): its tiles, its cache and its precision.

The value and gradient against the loop reference are in ``test_contrastive.py``; here the parts
that a small grid could miss: segments long enough for uniform tiles, tiles recomputed instead of
cached, float64 tiles for small temperatures, and that the plan visits every pair exactly once.
"""

from __future__ import annotations

import pytest
import torch

from pixcon.losses import blocked
from pixcon.losses.contrastive import (
    pair_scopes,
    pixel_contrastive_loss,
    pixel_contrastive_loss_dense,
    pixel_contrastive_sum,
)

FORMS = ("zhao", "supcon")
VARIANTS = ("batch", "within", "cross")


def _batch(n: int, d: int, classes: int, images: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(classes, (n,), generator=g)
    img = torch.randint(images, (n,), generator=g)
    return z, labels, img


def _pairs(labels, img, variant, anchors):
    """Expected pair kinds in the input order: +1 positive, -1 negative, 0 none; (N, N)."""
    pg, ng = pair_scopes(img, variant)
    n = len(labels)
    pg = torch.zeros(n, dtype=torch.long) if pg is None else pg
    ng = torch.zeros(n, dtype=torch.long) if ng is None else ng
    same = labels[:, None] == labels[None, :]
    pos = same & (pg[:, None] == pg[None, :]) & ~torch.eye(n, dtype=torch.bool)
    neg = ~same & (ng[:, None] == ng[None, :])
    is_anchor = torch.zeros(n, dtype=torch.bool)
    is_anchor[anchors[0] : anchors[1]] = True
    useful = is_anchor[:, None] | is_anchor[None, :]
    return pos.long() * useful - neg.long() * useful


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("block", [1, 3, 8, None])
@pytest.mark.parametrize("anchors", [(0, 60), (10, 35)])
def test_plan_visits_every_pair_once_and_uniform_tiles_hold_one_kind(variant, block, anchors) -> None:
    g = torch.Generator().manual_seed(7)
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.randint(1, 6, (30,), generator=g)])
    labels = labels[torch.randperm(60, generator=g)]  # one long class, several short ones
    img = torch.randint(0, 4, (60,), generator=g)
    pg, ng = pair_scopes(img, variant)
    plan = blocked.plan_tiles(labels, pg, ng, anchors, block_size=block)
    expected = _pairs(labels, img, variant, anchors)[plan.order][:, plan.order]  # sorted order
    seen = torch.zeros(60, 60, dtype=torch.long)
    for tile in plan.tiles:
        r, c = slice(*tile.rows), slice(*tile.cols)
        cover = torch.ones(tile.rows[1] - tile.rows[0], tile.cols[1] - tile.cols[0], dtype=torch.long)
        if tile.diagonal:
            assert tile.rows == tile.cols
            cover = torch.triu(cover, diagonal=1)  # each unordered pair once, i itself excluded
        else:
            assert tile.cols[0] >= tile.rows[1]  # upper triangle only
        seen[r, c] += cover
        kinds = expected[r, c][cover.bool()]
        if tile.kind == blocked._POS:
            assert (kinds == 1).all()
        elif tile.kind == blocked._NEG:
            assert (kinds == -1).all()
    upper = torch.triu(torch.ones(60, 60, dtype=torch.bool), diagonal=1)
    needed = (expected != 0) & upper
    assert (seen[needed] == 1).all()
    assert (seen <= 1).all() and (seen[~upper] == 0).all()
    assert any(t.kind != blocked._MIXED for t in plan.tiles) or block not in (1, 3)  # both kinds tested
    every = _pairs(labels, img, variant, (0, 60))[plan.order][:, plan.order]
    assert torch.equal(plan.num_pos, (every == 1).sum(1))  # |P(i)| counts non-anchors too


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_long_segments_uniform_tiles_match_dense(form: str, variant: str) -> None:
    # 3 classes over 2 images: segments of ~100-300 pixels, pure blocks and uniform tiles.
    z, labels, img = _batch(700, 16, 3, 2, seed=1)
    for block in (64, None):
        a = z.clone().requires_grad_(True)
        loss = pixel_contrastive_loss(a, labels, 0.2, form, image_ids=img, variant=variant, block_size=block)
        loss.backward()
        b = z.clone().requires_grad_(True)
        dense = pixel_contrastive_loss_dense(b, labels, 0.2, form, image_ids=img, variant=variant)
        dense.backward()
        assert loss.item() == pytest.approx(dense.item(), rel=1e-12)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_recomputed_tiles_equal_cached_ones(monkeypatch: pytest.MonkeyPatch, form: str, variant: str) -> None:
    z, labels, img = _batch(300, 8, 4, 3, seed=2)
    results = []
    for cache in (blocked._CACHE_BYTES, 0):
        monkeypatch.setattr(blocked, "_CACHE_BYTES", cache)
        for block in (7, None):
            x = z.clone().requires_grad_(True)
            loss = pixel_contrastive_loss(
                x, labels, 0.1, form, image_ids=img, variant=variant, block_size=block
            )
            loss.backward()
            results.append((loss.detach(), x.grad))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("form", FORMS)
def test_small_temperature_computes_float32_tiles_in_float64(form: str) -> None:
    # At t = 0.02, exp(-2/t) = exp(-100) is below float32's normal range: tiles go to float64.
    z, labels, _ = _batch(200, 8, 3, 1, seed=3)
    x = z.float().requires_grad_(True)
    loss = pixel_contrastive_loss(x, labels, 0.02, form)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.float32
    ref = z.clone().requires_grad_(True)
    expected = pixel_contrastive_loss_dense(ref, labels, 0.02, form)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(x.grad.double(), ref.grad, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="temperature must be >= 0.0029"):
        pixel_contrastive_loss(z, labels, 0.002, form)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_anchor_ranges_add_up(form: str, variant: str) -> None:
    z, labels, img = _batch(90, 6, 3, 4, seed=4)
    labels[::7] = 255
    whole = z.clone().requires_grad_(True)
    total, count = pixel_contrastive_sum(
        whole, labels, 0.2, form, image_ids=img, variant=variant, block_size=5
    )
    total.backward()
    parts = z.clone().requires_grad_(True)
    sums, counts = [], 0
    for lo, hi in ((0, 31), (31, 32), (32, 90)):
        s, c = pixel_contrastive_sum(
            parts, labels, 0.2, form, image_ids=img, variant=variant, block_size=5, anchors=(lo, hi)
        )
        sums.append(s)
        counts += int(c)
    torch.stack(sums).sum().backward()
    assert sum(s.item() for s in sums) == pytest.approx(total.item(), rel=1e-12)
    assert counts == int(count)
    torch.testing.assert_close(parts.grad, whole.grad, rtol=1e-10, atol=1e-15)


def test_no_grad_skips_the_gradient_and_keeps_the_value() -> None:
    z, labels, _ = _batch(200, 8, 3, 1, seed=5)
    with torch.no_grad():
        value = pixel_contrastive_loss(z, labels, 0.1)
    assert value.item() == pytest.approx(pixel_contrastive_loss_dense(z, labels, 0.1).item(), rel=1e-12)

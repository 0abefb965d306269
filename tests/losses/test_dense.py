"""The dense-map wrapper: label downsampling and the class-balanced pixel budget."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixcon.losses.contrastive import pixel_contrastive_loss
from pixcon.losses.dense import (
    PixelContrastiveLoss,
    balanced_quotas,
    balanced_sample,
    balanced_sample_fixed,
    downsample_labels,
    water_fill,
)


@pytest.mark.parametrize(
    "counts, budget, expected",
    [
        ([100, 100, 100], 30, [10, 10, 10]),
        ([3, 100, 100], 30, [3, 14, 13]),  # the small class gives its rest to the others
        ([0, 5, 1000], 100, [0, 5, 95]),
        ([2, 2], 100, [2, 2]),  # fewer pixels than the budget: everything
        ([7, 7, 7], 0, [0, 0, 0]),
    ],
)
def test_balanced_quotas(counts: list[int], budget: int, expected: list[int]) -> None:
    q = balanced_quotas(torch.tensor(counts), budget)
    assert sorted(q.tolist()) == sorted(expected) and q.sum().item() == sum(expected)
    assert (q <= torch.tensor(counts)).all()
    # equal shares up to one pixel among classes that were not exhausted
    capped = [qi for qi, c in zip(q.tolist(), counts, strict=True) if qi < c]
    assert not capped or max(capped) - min(capped) <= 1


def test_balanced_sample_respects_budget_classes_and_ignore() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.cat(
        [torch.zeros(5000), torch.ones(40), torch.full((300,), 2), torch.full((100,), 255)]
    ).long()
    labels = labels[torch.randperm(len(labels), generator=g)]
    idx = balanced_sample(labels, budget=600, generator=g)
    picked = labels[idx]
    assert len(idx) == 600 and len(idx.unique()) == 600
    assert (picked != 255).all()
    counts = torch.bincount(picked, minlength=3).tolist()
    assert counts[1] == 40  # every pixel of the rare class
    assert abs(counts[0] - counts[2]) <= 1 and counts[0] + counts[2] == 560
    again = balanced_sample(labels, budget=600, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(idx, again)  # random within classes


def test_downsample_labels_is_nearest_and_exact() -> None:
    masks = torch.randint(0, 4, (2, 8, 8))
    masks[:, :2] = 255
    small = downsample_labels(masks, (4, 4))
    assert small.shape == (2, 4, 4) and small.dtype == torch.long
    torch.testing.assert_close(small, masks[:, ::2, ::2])


def test_module_equals_core_on_all_pixels_when_under_budget() -> None:
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(2, 16, 4, 4, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 3, (2, 16, 16), generator=g)
    labels = masks[:, ::4, ::4].flatten()
    z = proj.permute(0, 2, 3, 1).reshape(-1, 16)
    for variant in ("batch", "within", "cross"):
        loss = PixelContrastiveLoss(temperature=0.1, variant=variant, max_pixels=10_000)(proj, masks)
        img = torch.arange(2).repeat_interleave(16)
        expected = pixel_contrastive_loss(z, labels, 0.1, image_ids=img, variant=variant)
        torch.testing.assert_close(loss, expected)


def test_module_budget_per_image_for_within() -> None:
    loss = PixelContrastiveLoss(variant="within", max_pixels=64)
    z, _labels, img = loss.sample(torch.randn(4, 8, 16, 16), torch.randint(0, 3, (4, 64, 64)))
    assert len(z) == 64 and torch.bincount(img).tolist() == [16, 16, 16, 16]


def test_module_backward_and_validation() -> None:
    proj = torch.randn(2, 8, 8, 8, requires_grad=True)
    PixelContrastiveLoss(max_pixels=50)(proj, torch.randint(0, 2, (2, 32, 32))).backward()
    assert proj.grad is not None and proj.grad.abs().sum() > 0
    for kwargs, match in [
        (dict(temperature=-1.0), "temperature"),
        (dict(max_pixels=1), "max_pixels"),
        (dict(form="x"), "form"),
        (dict(variant="x"), "variant"),
    ]:
        with pytest.raises(ValueError, match=match):
            PixelContrastiveLoss(**kwargs)
    with pytest.raises(ValueError, match="expected proj"):
        PixelContrastiveLoss()(torch.randn(2, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))


@pytest.mark.parametrize(
    "counts, budget",
    [
        ([100, 100, 100], 30),
        ([3, 100, 100], 30),
        ([0, 5, 1000], 100),
        ([2, 2], 100),
        ([7, 7, 7], 0),
        ([0, 0, 0], 10),
        ([], 10),
        ([5, 0, 9, 9, 1, 0, 40], 33),
    ],
)
def test_water_fill_equals_balanced_quotas(counts: list[int], budget: int) -> None:
    c = torch.tensor(counts, dtype=torch.long)
    q = water_fill(c, budget)
    expected = balanced_quotas(c, budget) if counts else torch.zeros(0, dtype=torch.long)
    assert q.sum().item() == min(budget, sum(counts))
    assert ((q >= 0) & (q <= c)).all()
    assert sorted(q.tolist()) == sorted(expected.tolist())
    if len(set(counts)) == len(counts):  # no ties: the very same quota per class
        assert q.tolist() == expected.tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=12), st.integers(0, 400))
def test_water_fill_matches_the_sequential_quotas(counts: list[int], budget: int) -> None:
    c = torch.tensor(counts)
    q, expected = water_fill(c, budget), balanced_quotas(c, budget)
    # Equal counts may swap their shares; the multiset per count is the same.
    for value in set(counts):
        same = c == value
        assert sorted(q[same].tolist()) == sorted(expected[same].tolist())


def test_balanced_sample_fixed_has_fixed_size_and_the_same_quotas() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.cat(
        [torch.zeros(5000), torch.ones(40), torch.full((300,), 2), torch.full((100,), 255)]
    ).long()
    labels = labels[torch.randperm(len(labels), generator=g)]
    idx, keep = balanced_sample_fixed(labels, budget=600, generator=g)
    assert idx.shape == keep.shape == (600,) and keep.all() and len(idx.unique()) == 600
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts[1] == 40 and abs(counts[0] - counts[2]) <= 1 and counts[0] + counts[2] == 560
    assert sorted(counts) == sorted(balanced_quotas(torch.tensor([5000, 40, 300]), 600).tolist())
    again, _ = balanced_sample_fixed(labels, budget=600, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(torch.sort(idx).values, torch.sort(again).values)  # random within classes
    # Fewer labeled pixels than the budget: every labeled pixel, then filler marked not kept.
    small = torch.tensor([255, 1, 1, 255, 0, 2, 255, 255])
    idx, keep = balanced_sample_fixed(small, budget=6)
    assert idx.shape == (6,) and keep.tolist() == [True] * 4 + [False] * 2
    assert sorted(idx[keep].tolist()) == [1, 2, 4, 5] and len(idx.unique()) == 6
    idx, keep = balanced_sample_fixed(small, budget=100)  # more budget than pixels: N entries
    assert idx.shape == (8,) and int(keep.sum()) == 4
    idx, keep = balanced_sample_fixed(torch.full((5,), 255), budget=3)
    assert idx.shape == (3,) and not keep.any()


@pytest.mark.parametrize("variant", ["batch", "within", "cross"])
def test_module_fixed_shapes_sampler_gives_a_valid_balanced_loss(variant: str) -> None:
    torch.manual_seed(0)
    proj = torch.randn(2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    masks = torch.randint(0, 3, (2, 32, 32))
    masks[:, :16] = 255  # half the pixels ignored
    loss = PixelContrastiveLoss(variant=variant, max_pixels=40, fixed_shapes=True)
    z, labels, img = loss.sample(proj, masks)
    assert len(z) == 40 and (labels != 255).sum() == 40
    assert torch.isfinite(loss.contrast(z, labels, img))
    # Budget above the labeled pixels: the filler is ignored, the loss is that of all labeled pixels.
    big = PixelContrastiveLoss(variant=variant, max_pixels=10_000, fixed_shapes=True)(proj, masks)
    every = PixelContrastiveLoss(variant=variant, max_pixels="all")(proj, masks)
    torch.testing.assert_close(big, every)
    big.backward()
    assert proj.grad is not None and torch.isfinite(proj.grad).all()


def test_module_all_pixels_equals_core_on_every_labeled_pixel() -> None:
    g = torch.Generator().manual_seed(1)
    proj = torch.randn(2, 16, 4, 4, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 3, (2, 16, 16), generator=g)
    masks[0, :8] = 255
    labels = masks[:, ::4, ::4].flatten()
    z = proj.permute(0, 2, 3, 1).reshape(-1, 16)
    img = torch.arange(2).repeat_interleave(16)
    for variant in ("batch", "within", "cross"):
        loss = PixelContrastiveLoss(temperature=0.1, variant=variant, max_pixels="all")(proj, masks)
        expected = pixel_contrastive_loss(z, labels, 0.1, image_ids=img, variant=variant)
        torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="max_pixels must be an int >= 2 or 'all'"):
        PixelContrastiveLoss(max_pixels="most")

"""The dense-map wrapper: label downsampling and the class-balanced pixel budget."""

from __future__ import annotations

import pytest
import torch

from pixcon.losses.contrastive import pixel_contrastive_loss
from pixcon.losses.dense import PixelContrastiveLoss, balanced_quotas, balanced_sample, downsample_labels


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

"""CLAWS: hard attention masks, aligned views, and a loss that only sees attended pixels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixcon.losses.claws import (
    CLAWSLoss,
    aligned_view,
    attended_labels,
    attention_from_feature_norm,
    attention_from_labels,
    hard_attention,
)
from pixcon.losses.contrastive import pixel_contrastive_loss


def test_hard_attention_zeroes_exactly_the_unattended_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    images = 0.1 + 0.9 * torch.rand(2, 4, 9, 7, generator=g)  # no zero anywhere
    attention = torch.rand(2, 9, 7, generator=g) < 0.4
    out = hard_attention(images, attention)
    expanded = attention[:, None].expand_as(images)
    assert torch.equal(out[expanded], images[expanded])
    assert torch.equal(out[~expanded], torch.zeros(int((~expanded).sum())))
    with pytest.raises(ValueError, match="attention"):
        hard_attention(images, attention[:, :5])


def test_attention_from_labels_masks_ignored_and_background_pixels() -> None:
    masks = torch.tensor([[[0, 1, 255], [2, 0, 1]]])
    assert attention_from_labels(masks).tolist() == [[[True, True, False], [True, True, True]]]
    assert attention_from_labels(masks, background_classes=(0,)).tolist() == [
        [[False, True, False], [True, False, True]]
    ]
    assert attended_labels(masks, attention_from_labels(masks, background_classes=(0, 2))).tolist() == [
        [[255, 1, 255], [255, 255, 1]]
    ]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_attention_from_feature_norm_keeps_the_largest_norms(fraction: float) -> None:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 5, 4, 6, generator=g)
    attend = attention_from_feature_norm(features, (8, 12), fraction)
    assert attend.shape == (2, 8, 12)
    coarse = attend[:, ::2, ::2]  # nearest upsampling by 2: each feature pixel is a 2x2 block
    assert torch.equal(attend, coarse.repeat_interleave(2, 1).repeat_interleave(2, 2))
    k = math.ceil(fraction * 24)
    norms = features.norm(dim=1)
    for b in range(2):
        assert int(coarse[b].sum()) == k
        # every attended pixel has a norm at least that of every unattended one
        if k < 24:
            assert norms[b][coarse[b]].min() >= norms[b][~coarse[b]].max()
    with pytest.raises(ValueError, match="fraction"):
        attention_from_feature_norm(features, (8, 12), 0.0)


def test_aligned_view_is_photometric_and_pixel_aligned() -> None:
    # Two constant regions stay two constant regions: the view changes colours, not geometry.
    images = torch.zeros(3, 3, 8, 8)
    images[:, :, :, :3] = torch.tensor([0.2, 0.5, 0.7])[:, None, None]
    images[:, :, :, 3:] = torch.tensor([0.9, 0.1, 0.4])[:, None, None]
    view = aligned_view(images, 0.8, torch.Generator().manual_seed(0))
    assert view.shape == images.shape and view.min() >= 0 and view.max() <= 1
    for region in (view[..., :3], view[..., 3:]):
        assert torch.allclose(region, region[..., :1, :1].expand_as(region))
    assert not torch.allclose(view, images)  # it did change the colours
    assert torch.equal(aligned_view(images, 0.0), images)


def _proj(b: int, d: int, h: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, h, h, generator=g, dtype=torch.float64), dim=1)


def test_loss_uses_only_attended_pixels() -> None:
    g = torch.Generator().manual_seed(2)
    masks = torch.randint(3, (2, 16, 16), generator=g)
    attention = torch.rand(2, 16, 16, generator=g) < 0.5
    labels = attended_labels(masks, attention)
    views = [_proj(2, 5, 4, seed).requires_grad_(True) for seed in (3, 4)]
    loss_fn = CLAWSLoss(temperature=0.2, max_pixels=10_000)
    loss = loss_fn(views, labels)
    loss.backward()
    attended = (labels[:, ::4, ::4] != 255)[:, None].expand(-1, 5, -1, -1)  # at the projection's resolution
    for v in views:
        assert torch.equal(v.grad[~attended], torch.zeros(int((~attended).sum()), dtype=torch.float64))
        assert v.grad[attended].abs().sum() > 0
    # changing unattended embeddings changes nothing
    moved = [v.detach().clone() for v in views]
    for m in moved:
        m[~attended] = 0.5
    assert loss_fn(moved, labels).item() == pytest.approx(loss.item(), rel=1e-12)
    # and it is the pixel loss of the attended pixels of both views, labels repeated
    z = torch.cat([v.detach().permute(0, 2, 3, 1).reshape(-1, 5) for v in views])
    y = labels[:, ::4, ::4].flatten().repeat(2)
    assert loss.item() == pytest.approx(pixel_contrastive_loss(z, y, 0.2).item(), rel=1e-12)


def test_loss_validates() -> None:
    with pytest.raises(ValueError, match="temperature"):
        CLAWSLoss(temperature=0)
    with pytest.raises(ValueError, match="projections"):
        CLAWSLoss()([_proj(1, 2, 2, 0), _proj(1, 3, 2, 0)], torch.zeros(1, 8, 8, dtype=torch.long))

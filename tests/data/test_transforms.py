"""Tests for the joint image/mask transforms."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import Tensor

from pixcon.data.transforms import eval_transform, train_transform


def _blocky_pair(seed: int, size: int = 64, block: int = 8, num_classes: int = 2) -> tuple[Tensor, Tensor]:
    """A mask of random `block`-sized squares and an image whose every channel encodes it."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(num_classes, (size // block, size // block), generator=g)
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)  # (H, W)
    image = (mask.float() / (num_classes - 1))[None].repeat(3, 1, 1)  # (3, H, W)
    return image, mask


@pytest.mark.parametrize("size", [32, 48, 96])
def test_train_transform_keeps_image_and_mask_aligned(size: int) -> None:
    # Binary blocks: resampling blurs the image only across edges, so rounding the image must
    # give back the mask everywhere except at a few corner pixels, for down- and up-scaling.
    # Legacy nearest (torchvision's mask default) fails this: ~94 % agreement at size 48.
    transform = train_transform(size, scale=(0.3, 1.0), color_jitter=0.0)
    for seed in range(25):
        image, mask = _blocky_pair(seed)
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, size, size) and out_image.dtype == torch.float32
        assert out_mask.shape == (size, size) and out_mask.dtype == torch.int64
        assert type(out_image) is Tensor and type(out_mask) is Tensor
        agreement = ((out_image[0] > 0.5).long() == out_mask).float().mean().item()
        assert agreement > 0.99, f"seed {seed}: image and mask disagree on {1 - agreement:.1%} of pixels"


def test_train_transform_flips_both() -> None:
    transform = train_transform(64, scale=(1.0, 1.0), color_jitter=0.0)
    image, mask = _blocky_pair(0, num_classes=5)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        flipped = torch.equal(out_mask, mask.flip(-1))
        assert flipped or torch.equal(out_mask, mask)
        torch.testing.assert_close(out_image, image.flip(-1) if flipped else image)
        seen.add(flipped)
    assert seen == {True, False}


def test_color_jitter_touches_image_only() -> None:
    transform = train_transform(64, scale=(1.0, 1.0), hflip=False, color_jitter=0.8)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.randint(0, 14, (64, 64), generator=torch.Generator().manual_seed(1))
    mask[:4] = 255
    torch.manual_seed(0)
    out_image, out_mask = transform(image, mask)
    assert torch.equal(out_mask, mask)
    assert not torch.allclose(out_image, image)
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0


def test_masks_keep_their_values() -> None:
    transform = train_transform(40, scale=(0.2, 1.0), color_jitter=0.4)
    image, mask = _blocky_pair(1, num_classes=4)
    mask[mask == 3] = 255  # ignore pixels must survive resampling untouched
    for seed in range(10):
        torch.manual_seed(seed)
        _, out_mask = transform(image, mask)
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 255}


def test_eval_transform() -> None:
    image, mask = _blocky_pair(2, size=64, num_classes=3)
    same_image, same_mask = eval_transform(None)(image, mask)
    assert torch.equal(same_image, image) and torch.equal(same_mask, mask)
    small_image, small_mask = eval_transform(32)(image, mask)
    assert small_image.shape == (3, 32, 32) and small_mask.shape == (32, 32)
    # Exact halving with pixel-centre nearest keeps the odd pixel of every 2x2 cell.
    torch.testing.assert_close(small_mask, mask[1::2, 1::2])
    _, big_mask = eval_transform(96)(image, mask)
    assert big_mask.dtype == torch.int64 and big_mask.shape == (96, 96)
    assert set(big_mask.unique().tolist()) <= {0, 1, 2}


def test_validation_and_pickling() -> None:
    with pytest.raises(ValueError, match="scale"):
        train_transform(32, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="color_jitter"):
        train_transform(32, color_jitter=-0.1)
    with pytest.raises(ValueError, match="expected image"):
        train_transform(32)(torch.rand(3, 8, 8), torch.zeros(8, 9, dtype=torch.long))
    restored = pickle.loads(pickle.dumps(train_transform(32)))  # DataLoader workers need this
    out_image, out_mask = restored(*_blocky_pair(0))
    assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32)


@pytest.mark.parametrize("shape", [(37, 53), (1, 96, 96), (2, 64, 48)])
@pytest.mark.parametrize("size", [(64, 64), (20, 31), (37, 53), (128, 77)])
def test_nearest_exact_matches_torchvision(shape: tuple[int, ...], size: tuple[int, int]) -> None:
    """The index-arithmetic resize equals torchvision's NEAREST_EXACT mask resize on these sizes, a tie included
    (96 -> 37 rows puts a source coordinate exactly on a pixel border)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from pixcon.data.transforms import nearest_exact

    for dtype in (torch.uint8, torch.int64):
        mask = torch.randint(0, 20, shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        want = TF.resize_mask(mask, list(size), interpolation=InterpolationMode.NEAREST_EXACT)
        got = nearest_exact(mask, size)
        assert got.dtype == dtype
        assert torch.equal(got, want)

"""Joint transforms on images with more than three channels (e.g. Potsdam RGBIR)."""

from __future__ import annotations

import torch
from torch import Tensor

from pixcon.data.transforms import eval_transform, train_transform


def _blocky_4ch(seed: int, size: int = 64, block: int = 8) -> tuple[Tensor, Tensor]:
    """A binary block mask and a 4-channel image whose every channel encodes it."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(2, (size // block, size // block), generator=g)
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)  # (H, W)
    return mask.float()[None].repeat(4, 1, 1), mask  # (4, H, W), (H, W)


def test_four_channel_image_and_mask_stay_aligned() -> None:
    transform = train_transform(48, scale=(0.3, 1.0), color_jitter=0.0)
    for seed in range(15):
        image, mask = _blocky_4ch(seed)
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (4, 48, 48) and out_mask.shape == (48, 48)
        for c in range(4):  # geometry applies to every channel, IR included
            agreement = ((out_image[c] > 0.5).long() == out_mask).float().mean().item()
            assert agreement > 0.99, f"seed {seed}, channel {c}: {1 - agreement:.1%} misaligned"


def test_color_jitter_on_the_first_three_channels_only() -> None:
    image = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.randint(0, 6, (32, 32), generator=torch.Generator().manual_seed(1))
    plain, jitter = (train_transform(32, scale=(0.5, 1.0), color_jitter=s) for s in (0.0, 0.8))
    for seed in range(5):
        torch.manual_seed(seed)
        ref_image, ref_mask = plain(image, mask)
        torch.manual_seed(seed)  # same crop and flip: the jitter draws its parameters after them
        out_image, out_mask = jitter(image, mask)
        assert torch.equal(out_mask, ref_mask)
        torch.testing.assert_close(out_image[3], ref_image[3], rtol=0, atol=0)  # IR untouched
        assert not torch.allclose(out_image[:3], ref_image[:3])
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0


def test_eval_transform_four_channels() -> None:
    image, mask = _blocky_4ch(3)
    out_image, out_mask = eval_transform(32)(image, mask)
    assert out_image.shape == (4, 32, 32)
    torch.testing.assert_close(out_mask, mask[1::2, 1::2])

"""Differentiable Siamese augmentation: one draw, the same transformation on the real and the
synthetic batch; each family checked against its definition; gradients w.r.t. the images."""

from __future__ import annotations

import pytest
import torch

from pixcon.condense.dsa import (
    DSA_FAMILIES,
    DSAConfig,
    DSAParams,
    apply_dsa,
    apply_dsa_mask,
    parse_strategy,
    sample_dsa,
    siamese_dsa,
)


def _images(n: int, c: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("family", DSA_FAMILIES)
def test_siamese_draw_applies_one_transformation_to_both_batches(family: str) -> None:
    real, syn = _images(5, seed=1), _images(2, seed=2).requires_grad_(True)
    gen = torch.Generator().manual_seed(7)
    real_aug, syn_aug, params = siamese_dsa(real, syn, (family,), gen)
    assert params.family == family and params.size == 1
    # the same parameters reproduce both outputs, image by image: nothing else was random
    for i in range(len(real)):
        torch.testing.assert_close(real_aug[i : i + 1], apply_dsa(real[i : i + 1], params))
    for i in range(len(syn)):
        torch.testing.assert_close(syn_aug[i : i + 1], apply_dsa(syn[i : i + 1], params))
    # an image that is in both batches is transformed identically
    both = torch.cat([real[:1], syn.detach()[:1]])
    out = apply_dsa(torch.cat([both, both]), params)
    torch.testing.assert_close(out[:2], out[2:])
    torch.testing.assert_close(
        apply_dsa(real[:1], params), apply_dsa(torch.cat([real[:1], syn.detach()]), params)[:1]
    )


@pytest.mark.parametrize("family", DSA_FAMILIES)
def test_augmentation_is_differentiable_wrt_synthetic_images(family: str) -> None:
    gen = torch.Generator().manual_seed(3)
    params = sample_dsa((family,), 1, (6, 6), gen)
    syn = _images(2, c=2, size=6, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: apply_dsa(x, params), (syn,))
    real, syn2 = _images(3, c=2, size=6, seed=5), _images(2, c=2, size=6, seed=6).requires_grad_(True)
    _, syn_aug, _ = siamese_dsa(real, syn2, (family,), torch.Generator().manual_seed(8))
    syn_aug.sum().backward()
    assert syn2.grad is not None and torch.isfinite(syn2.grad).all()


def _params(family: str, **values: object) -> DSAParams:
    """Explicit parameters; floats in float64, as `sample_dsa` draws them."""
    out = {}
    for k, v in values.items():
        t = torch.as_tensor(v)
        out[k] = (t.double() if t.is_floating_point() else t).reshape(-1)
    return DSAParams(family=family, values=out)


def test_flip_crop_cutout_definitions() -> None:
    x = _images(2, c=1, size=6)
    torch.testing.assert_close(apply_dsa(x, _params("flip", flip=True)), x.flip(3))
    torch.testing.assert_close(apply_dsa(x, _params("flip", flip=False)), x)
    shifted = apply_dsa(x, _params("crop", dy=1, dx=-2))
    torch.testing.assert_close(shifted[:, :, 1:, :4], x[:, :, :5, 2:])  # content moved down 1, left 2
    assert shifted[:, :, 0].abs().sum() == 0 and shifted[:, :, :, 4:].abs().sum() == 0  # zeros shifted in
    cut = apply_dsa(x, _params("cutout", cy=3, cx=0, side_h=2, side_w=2))
    zero = torch.zeros_like(x, dtype=torch.bool)
    zero[:, :, 2:4, 0:1] = True  # rows 3-1..3, columns -1..0 clipped to the image
    assert (cut[zero] == 0).all()
    torch.testing.assert_close(cut[~zero], x[~zero])


def test_colour_definition() -> None:
    x = _images(1, c=3, size=4)
    out = apply_dsa(x, _params("color", brightness=0.25, saturation=0.5, contrast=1.5))
    y = x + 0.25
    m = y.mean(1, keepdim=True)
    y = (y - m) * 0.5 + m
    mm = y.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (y - mm) * 1.5 + mm)
    grey = _images(1, c=1, size=4)  # saturation is the identity on one channel
    torch.testing.assert_close(
        apply_dsa(grey, _params("color", brightness=0.0, saturation=1.7, contrast=1.0)), grey
    )


def test_scale_and_rotate_definitions() -> None:
    x = _images(2, c=2, size=6)
    torch.testing.assert_close(apply_dsa(x, _params("scale", sy=1.0, sx=1.0)), x)
    torch.testing.assert_close(apply_dsa(x, _params("rotate", angle=0.0)), x)
    quarter = apply_dsa(x, _params("rotate", angle=torch.pi / 2))
    # a quarter turn moves pixel centres onto pixel centres (up to affine_grid's rounding)
    torch.testing.assert_close(quarter, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-6, rtol=1e-6)


def test_per_image_parameters() -> None:
    x = _images(3, c=1, size=6)
    params = _params("flip", flip=[True, False, True])
    out = apply_dsa(x, params)
    torch.testing.assert_close(out[0], x[0].flip(2))
    torch.testing.assert_close(out[1], x[1])
    with pytest.raises(ValueError, match="for 3 images applied to a batch of 2"):
        apply_dsa(x[:2], params)


def test_masks_follow_the_geometry() -> None:
    mask = torch.randint(0, 4, (2, 6, 6))
    torch.testing.assert_close(apply_dsa_mask(mask, _params("flip", flip=True), 255), mask.flip(2))
    moved = apply_dsa_mask(mask, _params("crop", dy=2, dx=0), 255)
    torch.testing.assert_close(moved[:, 2:], mask[:, :4])
    assert (moved[:, :2] == 255).all()  # no source pixel: ignored
    assert torch.equal(
        apply_dsa_mask(mask, _params("color", brightness=1, saturation=1, contrast=1), 255), mask
    )
    assert torch.equal(apply_dsa_mask(mask, _params("cutout", cy=1, cx=1, side_h=2, side_w=2), 255), mask)
    scaled = apply_dsa_mask(mask, _params("scale", sy=1.2, sx=0.9), 255)
    assert set(scaled.unique().tolist()) <= set(mask.unique().tolist()) | {255}
    quarter = apply_dsa_mask(mask, _params("rotate", angle=torch.pi / 2), 255)
    torch.testing.assert_close(quarter, torch.rot90(mask, k=1, dims=(1, 2)))


def test_sampling_ranges_and_determinism() -> None:
    cfg = DSAConfig()
    gen = torch.Generator().manual_seed(0)
    draws = [sample_dsa(DSA_FAMILIES, 64, (32, 32), gen, cfg) for _ in range(60)]
    assert {d.family for d in draws} == set(DSA_FAMILIES)
    for d in draws:
        v = d.values
        if d.family == "crop":
            assert v["dy"].abs().max() <= 4 and v["dx"].abs().max() <= 4  # 0.125 * 32
        elif d.family == "scale":
            assert ((v["sy"] >= 1 / 1.2) & (v["sy"] <= 1.2)).all()
        elif d.family == "rotate":
            assert v["angle"].abs().max() <= 15 * torch.pi / 180
        elif d.family == "cutout":
            assert (v["side_h"] == 16).all()
    a = sample_dsa(DSA_FAMILIES, 4, (8, 8), torch.Generator().manual_seed(5))
    b = sample_dsa(DSA_FAMILIES, 4, (8, 8), torch.Generator().manual_seed(5))
    assert a.family == b.family and all(torch.equal(a.values[k], b.values[k]) for k in a.values)


def test_strategy_validation() -> None:
    assert parse_strategy("color_crop_cutout_flip_scale_rotate") == DSA_FAMILIES
    assert parse_strategy("crop,flip") == ("crop", "flip")
    with pytest.raises(ValueError, match=r"unknown DSA transformation\(s\) \['blur'\]"):
        parse_strategy("crop_blur")
    with pytest.raises(ValueError, match="empty"):
        sample_dsa((), 1, (8, 8), torch.Generator())
    with pytest.raises(ValueError, match="scale must be >= 1"):
        DSAConfig(scale=0.5)
    with pytest.raises(ValueError, match="differ in size"):
        siamese_dsa(_images(1, size=8), _images(1, size=6), ("flip",), torch.Generator())

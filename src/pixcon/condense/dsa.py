"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, "Dataset Condensation with
Differentiable Siamese Augmentation", ICML 2021).

Gradient matching on augmented data needs two things: the augmentation must be differentiable
w.r.t. the synthetic images (the matching loss is back-propagated through it), and the real and
the synthetic batch of one matching step must get *the same* transformation, so that their
gradients stay comparable (DSA Sec. 3, "Siamese"). Here an augmentation is split into drawing its
random parameters (`sample_dsa`) and applying them (`apply_dsa`, differentiable): one draw applied
to both batches is the Siamese augmentation (`siamese_dsa`).

Each draw picks one family from the strategy, uniformly (the official code's single-transform
mode), and samples its parameters:

==========  ==================================================================  ===============
family      transformation (per image)                                          DSA default
==========  ==================================================================  ===============
color       brightness ``x + (u - 1/2) b``, then saturation ``m_c + (x - m_c)   b=1, s=2, c=1/2
            s u``, then contrast ``m + (x - m) (u + c)`` (m_c: channel mean,
            m: image mean; saturation is the identity on one channel)
crop        translation by up to ``crop_pad * size`` pixels, zeros shifted in  0.125
cutout      a square of side ``cutout * size`` set to 0                         0.5
flip        horizontal flip with probability ``flip_prob``                      0.5
scale       x and y scaled by factors in ``[1/r, r]`` (bilinear, zeros outside)  r=1.2
rotate      rotation by an angle in ``[-deg, deg]`` (bilinear, zeros outside)    15 degrees
==========  ==================================================================  ===============

Parameters have a leading dimension of 1 (one transformation for the whole batch: Siamese) or of
the batch size (one per image: plain augmentation while training a network on the synthetic set).
Images are in the network's input space (normalised for classification), so "0" is the mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pixcon.condense.options import DEFAULT_STRATEGY, DSA_FAMILIES, check_strategy, parse_strategy

__all__ = ["DEFAULT_STRATEGY", "DSA_FAMILIES", "check_strategy", "parse_strategy"]
GEOMETRIC: frozenset[str] = frozenset({"crop", "flip", "scale", "rotate"})  # also move the mask


@dataclass(frozen=True)
class DSAConfig:
    """Ranges of the DSA transformations (the official ``ParamDiffAug`` defaults)."""

    brightness: float = 1.0  # added offset (u - 0.5) * brightness
    saturation: float = 2.0  # saturation factor u * saturation
    contrast: float = 0.5  # contrast factor u + contrast
    crop_pad: float = 0.125  # largest shift, as a fraction of the side
    cutout: float = 0.5  # side of the cut-out square, as a fraction of the side
    flip_prob: float = 0.5
    scale: float = 1.2  # scale factors in [1/scale, scale]
    rotate_deg: float = 15.0  # angles in [-rotate_deg, rotate_deg]

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"DSAConfig.scale must be >= 1, got {self.scale}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"DSAConfig.flip_prob must be in [0, 1], got {self.flip_prob}")
        if not 0 <= self.crop_pad < 1 or not 0 <= self.cutout <= 1:
            raise ValueError(
                f"DSAConfig.crop_pad must be in [0, 1) and cutout in [0, 1], got {self.crop_pad}, {self.cutout}"
            )


@dataclass(frozen=True)
class DSAParams:
    """One draw of DSA parameters.

    Attributes:
        family: One of `DSA_FAMILIES`.
        values: The family's parameters, each of shape (n,): n = 1 applies one transformation to
            every image (Siamese), n = B one per image. ``color``: ``brightness``, ``saturation``,
            ``contrast`` (factors/offsets); ``crop``: ``dy``, ``dx`` (int shifts); ``cutout``:
            ``cy``, ``cx`` (int centres), ``side_h``, ``side_w`` (int sides); ``flip``: ``flip`` (bool); ``scale``: ``sy``, ``sx``;
            ``rotate``: ``angle`` (radians).
    """

    family: str
    values: Mapping[str, Tensor]

    @property
    def size(self) -> int:
        return int(next(iter(self.values.values())).shape[0])


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def sample_dsa(
    strategy: Sequence[str],
    n: int,
    image_size: tuple[int, int],
    generator: torch.Generator,
    config: DSAConfig | None = None,
) -> DSAParams:
    """Draws one augmentation: a family from `strategy`, then its parameters.

    Args:
        strategy: Families to choose from (see `DSA_FAMILIES`), uniformly.
        n: 1 for one transformation shared by every image (Siamese), else the batch size.
        image_size: (H, W) of the images it will be applied to (crop and cutout sizes).
        generator: The only source of randomness (a CPU generator).
        config: Ranges; default `DSAConfig()`.

    Returns:
        `DSAParams` with tensors of shape (n,) on the CPU (float64 or int64/bool).
    """
    families = check_strategy(strategy)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cfg = config or DSAConfig()
    h, w = image_size
    family = families[int(torch.randint(len(families), (1,), generator=generator))]
    values: dict[str, Tensor]
    if family == "color":
        values = {
            "brightness": (_uniform(n, 0, 1, generator) - 0.5) * cfg.brightness,
            "saturation": _uniform(n, 0, 1, generator) * cfg.saturation,
            "contrast": _uniform(n, 0, 1, generator) + cfg.contrast,
        }
    elif family == "crop":
        sy, sx = int(h * cfg.crop_pad + 0.5), int(w * cfg.crop_pad + 0.5)
        values = {
            "dy": torch.randint(-sy, sy + 1, (n,), generator=generator),
            "dx": torch.randint(-sx, sx + 1, (n,), generator=generator),
        }
    elif family == "cutout":
        values = {
            "cy": torch.randint(0, h, (n,), generator=generator),
            "cx": torch.randint(0, w, (n,), generator=generator),
            "side_h": torch.full((n,), int(h * cfg.cutout + 0.5)),
            "side_w": torch.full((n,), int(w * cfg.cutout + 0.5)),
        }
    elif family == "flip":
        values = {"flip": _uniform(n, 0, 1, generator) < cfg.flip_prob}
    elif family == "scale":
        values = {
            "sy": _uniform(n, 1 / cfg.scale, cfg.scale, generator),
            "sx": _uniform(n, 1 / cfg.scale, cfg.scale, generator),
        }
    else:  # rotate
        values = {"angle": _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, generator) * math.pi / 180}
    return DSAParams(family=family, values=values)


def _per_image(params: DSAParams, key: str, batch: int, like: Tensor) -> Tensor:
    """A parameter as shape (B,) on `like`'s device (float parameters in `like`'s dtype)."""
    v = params.values[key]
    if v.shape[0] not in (1, batch):
        raise ValueError(f"DSA parameters for {v.shape[0]} images applied to a batch of {batch}")
    v = v.to(like.device)
    if v.is_floating_point():
        v = v.to(like.dtype)
    return v.expand(batch)


def _affine_theta(params: DSAParams, batch: int, like: Tensor) -> Tensor:
    """The (B, 2, 3) sampling matrices of a ``scale`` or ``rotate`` draw (output -> input coords)."""
    zero = torch.zeros(batch, dtype=like.dtype, device=like.device)
    if params.family == "scale":
        sy, sx = _per_image(params, "sy", batch, like), _per_image(params, "sx", batch, like)
        rows = [torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)]
    else:
        a = _per_image(params, "angle", batch, like)
        rows = [torch.stack([a.cos(), -a.sin(), zero], 1), torch.stack([a.sin(), a.cos(), zero], 1)]
    return torch.stack(rows, 1)  # (B, 2, 3)


def _shift(x: Tensor, dy: Tensor, dx: Tensor, fill: float) -> Tensor:
    """x (B, C, H, W) translated by (dy[b], dx[b]) pixels, `fill` shifted in; differentiable."""
    b, _, h, w = x.shape
    py, px = int(dy.abs().max()), int(dx.abs().max())
    padded = F.pad(x, (px, px, py, py), value=fill)  # (B, C, H + 2py, W + 2px)
    rows = torch.arange(h, device=x.device)[None] + py - dy[:, None]  # (B, H)
    cols = torch.arange(w, device=x.device)[None] + px - dx[:, None]  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]  # (B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)  # (B, C, H, W)


def apply_dsa(x: Tensor, params: DSAParams) -> Tensor:
    """Applies one DSA draw to a batch; differentiable w.r.t. `x`.

    Args:
        x: Images (B, C, H, W), float.
        params: A draw from `sample_dsa` with n = 1 (the same transformation for every image) or
            n = B.

    Returns:
        The augmented images, (B, C, H, W).
    """
    if x.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got {tuple(x.shape)}")
    b = x.shape[0]
    fam = params.family
    if fam == "color":
        bright = _per_image(params, "brightness", b, x)[:, None, None, None]  # (B, 1, 1, 1)
        sat = _per_image(params, "saturation", b, x)[:, None, None, None]
        con = _per_image(params, "contrast", b, x)[:, None, None, None]
        x = x + bright
        channel_mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        x = (x - channel_mean) * sat + channel_mean
        image_mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        return (x - image_mean) * con + image_mean
    if fam == "crop":
        return _shift(x, _per_image(params, "dy", b, x), _per_image(params, "dx", b, x), fill=0.0)
    if fam == "cutout":
        return x * _cutout_keep(params, x)[:, None]  # (B, C, H, W)
    if fam == "flip":
        flip = _per_image(params, "flip", b, x)[:, None, None, None]  # (B, 1, 1, 1)
        return torch.where(flip, x.flip(3), x)
    if fam in ("scale", "rotate"):
        grid = F.affine_grid(_affine_theta(params, b, x), list(x.shape), align_corners=False)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    raise ValueError(f"unknown DSA family {fam!r}; expected one of {list(DSA_FAMILIES)}")


def _cutout_keep(params: DSAParams, x: Tensor) -> Tensor:
    """(B, H, W) float: 0 inside each image's cut-out square, 1 elsewhere."""
    b, _, h, w = x.shape
    side_h, side_w = _per_image(params, "side_h", b, x), _per_image(params, "side_w", b, x)  # (B,)
    top = _per_image(params, "cy", b, x) - side_h // 2  # (B,)
    left = _per_image(params, "cx", b, x) - side_w // 2  # (B,)
    ys = torch.arange(h, device=x.device)[None]  # (1, H)
    xs = torch.arange(w, device=x.device)[None]  # (1, W)
    in_y = (ys >= top[:, None]) & (ys < (top + side_h)[:, None])  # (B, H)
    in_x = (xs >= left[:, None]) & (xs < (left + side_w)[:, None])  # (B, W)
    return (~(in_y[:, :, None] & in_x[:, None, :])).to(x.dtype)  # (B, H, W)


def apply_dsa_mask(mask: Tensor, params: DSAParams, ignore_index: int) -> Tensor:
    """Moves a segmentation mask with the geometric part of a DSA draw (nearest neighbour).

    Pixels that come from outside the image get `ignore_index`; ``color`` and ``cutout`` leave
    the mask unchanged (a cut-out region keeps its labels, as an occluded object would).

    Args:
        mask: Class ids (B, H, W), int64.
        params: The draw applied to the images (n = 1 or B).
        ignore_index: Label of pixels without a source pixel.

    Returns:
        (B, H, W) int64.
    """
    if mask.dim() != 3:
        raise ValueError(f"expected masks (B, H, W), got {tuple(mask.shape)}")
    if params.family not in GEOMETRIC:
        return mask
    b = mask.shape[0]
    shifted = (mask + 1).to(torch.float64)[:, None]  # (B, 1, H, W); 0 marks "no source pixel"
    if params.family == "crop":
        out = _shift(shifted, _per_image(params, "dy", b, shifted), _per_image(params, "dx", b, shifted), 0.0)
    elif params.family == "flip":
        flip = _per_image(params, "flip", b, shifted)[:, None, None, None]
        out = torch.where(flip, shifted.flip(3), shifted)
    else:
        grid = F.affine_grid(_affine_theta(params, b, shifted), list(shifted.shape), align_corners=False)
        out = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    labels = out[:, 0].round().long() - 1  # (B, H, W)
    return labels.masked_fill(labels < 0, ignore_index)


def siamese_dsa(
    real: Tensor,
    syn: Tensor,
    strategy: Sequence[str],
    generator: torch.Generator,
    config: DSAConfig | None = None,
) -> tuple[Tensor, Tensor, DSAParams]:
    """One Siamese augmentation: the same draw applied to a real and a synthetic batch.

    Args:
        real: Real images (B_r, C, H, W).
        syn: Synthetic images (B_s, C, H, W), usually requiring grad.
        strategy: Families to draw from.
        generator: Source of randomness.
        config: Ranges.

    Returns:
        ``(real_aug, syn_aug, params)``; ``syn_aug`` is differentiable w.r.t. `syn`.
    """
    if real.shape[1:] != syn.shape[1:]:
        raise ValueError(f"real {tuple(real.shape)} and synthetic {tuple(syn.shape)} images differ in size")
    params = sample_dsa(strategy, 1, (real.shape[-2], real.shape[-1]), generator, config)
    return apply_dsa(real, params), apply_dsa(syn, params), params

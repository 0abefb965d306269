"""Two augmented views of one image with known geometry, for self-supervised dense objectives.

Each view is a crop box of the source image, resized to ``size x size`` and optionally flipped
horizontally. Its geometry travels with the batch as a (5,) float tensor::

    geom = (top, left, height, width, flip)    # crop box in source pixels, flip in {0, 1}

Coordinates are continuous, pixel k spanning [k, k + 1) and its centre at k + 0.5, on the source
image and on any view or feature grid alike. A view of size (H, W) maps its point (y, x) to::

    source y = top + y / H * height
    source x = left + (x / W) * width          without flip
    source x = left + (1 - x / W) * width      with flip (the flip is applied after the resize)

This is exact for torchvision's resize (pixel-centre aligned, ``align_corners=False``) and for the
``NEAREST_EXACT`` mask resize used here.

Feature cells: cell a of a grid (h, w) over an (H, W) view, with stride s = H / h, is centred on
view coordinate ``s * a + offset`` (along x likewise, flipped views included: the flip lives in the
view-to-source map, the cells of a flipped view are laid out like any other). The default
:data:`CELL_OFFSET` = 0.5 is the centre of view pixel s * a, where smp's encoders put it: their
convolutions and poolings are symmetric (kernel k, padding (k - 1) / 2), so a stride-s output
keeps the input pixel s * a at its centre (ResNet stem: 7x7 conv stride 2 padding 3, then 3x3 max
pool stride 2 padding 1 -> stride-4 cell a on pixel 4a). It is *not* the centre of the block
[s * a, s * a + s) (that would be offset s / 2, e.g. 4a + 2), which misplaces stride-4 cells by 1.5
px, 3 px between the two views once one of them is flipped. Measured on DeepLabV3+ / ResNet-18
(random weights, 64 px views, input-gradient centroids of the central decoder cells, averaged
with the kernel-mirrored network to cancel the weights' own asymmetry): 4a + 0.49 (rows) and
4a + 0.46 (columns); the stride-4 skip path alone is centred on 4a + 0.5, while the ASPP branch is
diffuse and pulled towards the origin by smp's ``align_corners=True`` upsampling (no constant
offset describes it). Other decoders differ (smp's FPN and Unet upsample with nearest
neighbours, which pulls their cells towards the origin: about 4a - 0.9 for FPN, a - 2.1 for Unet's
full-resolution output at 64 px); pass their ``offset`` to :func:`grid_to_source`,
:func:`correspondence` and :func:`pixcon.losses.glcnet.pool_patches`. Pixel grids (s = 1) with
offset 0.5 are the pixel centres.

:class:`TwoViews` wraps a dataset whose ``transform`` is None and returns per sample::

    {"view1": (C, S, S) float, "view2": (C, S, S) float,
     "geom1": (5,) float32, "geom2": (5,) float32,
     "mask1": (S, S) int64, "mask2": (S, S) int64, "index": int}

which ``torch.utils.data.default_collate`` batches into (B, ...) tensors.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

log = logging.getLogger(__name__)

Size = int | tuple[int, int] | Sequence[int]

CELL_OFFSET = 0.5
"""Default cell-centre offset: cell a of a stride-s grid is centred on view coordinate s * a + 0.5."""


@dataclass(frozen=True)
class ViewParams:
    """One view's geometry: crop box in source pixels, horizontal flip, output side.

    Attributes:
        top, left, height, width: Integer crop box inside the source image.
        flip: Whether the resized crop is flipped horizontally.
        size: Output side S (views are S x S).
    """

    top: int
    left: int
    height: int
    width: int
    flip: bool
    size: int

    def to_tensor(self) -> Tensor:
        """The (5,) float32 geometry tensor ``(top, left, height, width, flip)``."""
        return torch.tensor(
            [self.top, self.left, self.height, self.width, float(self.flip)], dtype=torch.float32
        )

    @classmethod
    def from_tensor(cls, geom: Tensor, size: int) -> ViewParams:
        """Inverse of :meth:`to_tensor`; ``geom`` has shape (5,)."""
        top, left, height, width, flip = (float(v) for v in geom.tolist())
        return cls(round(top), round(left), round(height), round(width), flip > 0.5, int(size))

    @property
    def area(self) -> int:
        return self.height * self.width


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator))


def sample_view(
    h: int,
    w: int,
    size: int,
    scale: Sequence[float] = (0.3, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> ViewParams:
    """A random resized crop (torchvision's ``RandomResizedCrop`` rule) and a random flip.

    Args:
        h, w: Source image size.
        size: Output side S.
        scale: Range of the crop area as a fraction of the image area, ``0 < lo <= hi <= 1``.
        ratio: Range of the crop's width / height (sampled log-uniformly).
        hflip: Flip with probability 0.5 when True.
        generator: Random source; None uses torch's global RNG (which DataLoader workers seed).

    Returns:
        The view's :class:`ViewParams`; the crop box always lies inside the image.
    """
    if h < 1 or w < 1 or size < 1:
        raise ValueError(f"image size and view size must be >= 1, got h={h}, w={w}, size={size}")
    lo, hi = (float(s) for s in scale)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {tuple(scale)}")
    r_lo, r_hi = (float(r) for r in ratio)
    if not 0 < r_lo <= r_hi:
        raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {tuple(ratio)}")
    area = h * w
    log_lo, log_hi = math.log(r_lo), math.log(r_hi)
    for _ in range(10):
        target = area * _uniform(lo, hi, generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = _randint(h - ch + 1, generator), _randint(w - cw + 1, generator)
            break
    else:  # torchvision's fallback: the largest central crop whose aspect is within `ratio`
        aspect = w / h
        if aspect < r_lo:
            cw, ch = w, round(w / r_lo)
        elif aspect > r_hi:
            ch, cw = h, round(h * r_hi)
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    flip = bool(hflip) and float(torch.rand((), generator=generator)) < 0.5
    return ViewParams(top=top, left=left, height=ch, width=cw, flip=flip, size=int(size))


def overlap_fraction(a: ViewParams, b: ViewParams) -> float:
    """Area of the intersection of two crop boxes over the area of the smaller one, in [0, 1]."""
    dy = min(a.top + a.height, b.top + b.height) - max(a.top, b.top)
    dx = min(a.left + a.width, b.left + b.width) - max(a.left, b.left)
    if dy <= 0 or dx <= 0:
        return 0.0
    return dy * dx / min(a.area, b.area)


@overload
def apply_view(params: ViewParams, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]: ...
@overload
def apply_view(params: ViewParams, image: Tensor, mask: None = None) -> tuple[Tensor, None]: ...
def apply_view(params: ViewParams, image: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Crops, resizes to (S, S) and flips an image and its mask with the same geometry.

    The image is resampled bilinearly with antialiasing, the mask with pixel-centre aligned
    nearest (``NEAREST_EXACT``, as in :mod:`pixcon.data.transforms`): each view pixel takes the
    label of the source pixel that contains its centre's source point.

    Args:
        params: The view's geometry.
        image: Shape (C, H, W), float.
        mask: Shape (H, W), int64, or None.

    Returns:
        ``(image (C, S, S), mask (S, S) or None)``.
    """
    if image.ndim != 3 or (mask is not None and mask.shape != image.shape[-2:]):
        raise ValueError(
            f"expected image (C, H, W) and mask (H, W), got {tuple(image.shape)} and "
            f"{None if mask is None else tuple(mask.shape)}"
        )
    p, out = params, [params.size, params.size]
    if p.top < 0 or p.left < 0 or p.top + p.height > image.shape[-2] or p.left + p.width > image.shape[-1]:
        raise ValueError(f"crop box {p} does not fit in an image of size {tuple(image.shape[-2:])}")
    view = F.resized_crop(image, p.top, p.left, p.height, p.width, size=out, antialias=True)  # (C, S, S)
    view_mask = None
    if mask is not None:
        cropped = F.crop_mask(mask[None], p.top, p.left, p.height, p.width)  # (1, h, w)
        view_mask = F.resize_mask(cropped, out, interpolation=InterpolationMode.NEAREST_EXACT)[0]  # (S, S)
    if p.flip:
        view = view.flip(-1)
        view_mask = None if view_mask is None else view_mask.flip(-1)
    return view, view_mask


def color_jitter(image: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Seeded colour jitter (torchvision's ``ColorJitter`` rule, factors drawn from ``generator``).

    Brightness, contrast and saturation factors are uniform in [max(0, 1 - s), 1 + s], the hue
    shift in [-min(s / 4, 0.5), min(s / 4, 0.5)], applied in a random order, on the first three
    channels only (further bands, e.g. IR, are left as they are, as in :mod:`pixcon.data.transforms`).
    Images with fewer than three channels get brightness and contrast only, each channel alike.

    Args:
        image: Shape (C, H, W), float in [0, 1].
        strength: s >= 0; 0 returns the image unchanged.
        generator: Random source; None uses torch's global RNG.

    Returns:
        Shape (C, H, W), float in [0, 1].
    """
    if strength < 0:
        raise ValueError(f"color jitter strength must be >= 0, got {strength}")
    if strength == 0:
        return image
    lo, hi = max(0.0, 1 - strength), 1 + strength
    hue = min(strength / 4, 0.5)
    factors = [_uniform(lo, hi, generator) for _ in range(3)] + [_uniform(-hue, hue, generator)]
    order = torch.randperm(4, generator=generator).tolist()

    def jitter(x: Tensor) -> Tensor:  # x: (3, H, W) or (1, H, W)
        for k in order:
            if k == 0:
                x = F.adjust_brightness(x, factors[0])
            elif k == 1:
                x = F.adjust_contrast(x, factors[1])
            elif k == 2 and x.shape[0] == 3:
                x = F.adjust_saturation(x, factors[2])
            elif k == 3 and x.shape[0] == 3:
                x = F.adjust_hue(x, factors[3])
        return x

    if image.shape[0] >= 3:
        return torch.cat([jitter(image[:3]), image[3:]])  # (C, H, W)
    return torch.cat([jitter(band[None]) for band in image])  # (C, H, W), C = 1 or 2


# --------------------------------------------------------------------------------------------
# Geometry on batched tensors
# --------------------------------------------------------------------------------------------


def _size2(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def _unpack(geom: Tensor, ndim: int) -> tuple[Tensor, ...]:
    """geom (B, 5) -> five (B, 1, ..., 1) tensors that broadcast against (B, ...) of ``ndim`` dims."""
    if geom.dim() != 2 or geom.shape[1] != 5:
        raise ValueError(f"geom must have shape (B, 5), got {tuple(geom.shape)}")
    shape = (geom.shape[0],) + (1,) * (ndim - 1)
    return tuple(g.reshape(shape) for g in geom.unbind(1))


def view_to_source(points: Tensor, geom: Tensor, size: Size) -> Tensor:
    """View coordinates to source-image coordinates.

    Args:
        points: (y, x) in view pixels (continuous, [0, H] x [0, W]), shape (B, ..., 2).
        geom: View geometry, shape (B, 5).
        size: The view's (H, W), or S for S x S; a feature grid's (h, w) works as well.

    Returns:
        (y, x) in source pixels, shape (B, ..., 2).
    """
    h, w = _size2(size)
    top, left, height, width, flip = _unpack(geom, points.dim() - 1)
    u, v = points[..., 0] / h, points[..., 1] / w  # fractions of the view, (B, ...)
    v = torch.where(flip > 0.5, 1 - v, v)
    return torch.stack([top + u * height, left + v * width], dim=-1)  # (B, ..., 2)


def source_to_view(points: Tensor, geom: Tensor, size: Size) -> Tensor:
    """Source-image coordinates to view coordinates; the inverse of :func:`view_to_source`.

    Args:
        points: (y, x) in source pixels, shape (B, ..., 2).
        geom: View geometry, shape (B, 5).
        size: The view's (H, W), or S.

    Returns:
        (y, x) in view pixels, shape (B, ..., 2); outside [0, H) x [0, W) for points the view misses.
    """
    h, w = _size2(size)
    top, left, height, width, flip = _unpack(geom, points.dim() - 1)
    u = (points[..., 0] - top) / height  # (B, ...)
    v = (points[..., 1] - left) / width
    v = torch.where(flip > 0.5, 1 - v, v)
    return torch.stack([u * h, v * w], dim=-1)  # (B, ..., 2)


def _strides(grid: Size, size: Size) -> tuple[int, int, float, float]:
    """(h, w, s_y, s_x): the grid and its strides in view pixels (H / h, W / w)."""
    h, w = _size2(grid)
    big_h, big_w = _size2(size)
    if min(h, w, big_h, big_w) < 1:
        raise ValueError(f"grid and view size must be >= 1, got grid {(h, w)} and size {(big_h, big_w)}")
    return h, w, big_h / h, big_w / w


def grid_to_source(geom: Tensor, grid: Size, size: Size, offset: float = CELL_OFFSET) -> Tensor:
    """Source coordinates of the centres of a view's feature grid.

    Cell (a, b) is centred on view coordinate ``(s_y * a + offset, s_x * b + offset)`` with strides
    ``s_y = H / h``, ``s_x = W / w`` (see the module docstring), flipped views alike.

    Args:
        geom: View geometry, shape (B, 5).
        grid: Feature grid (h, w) covering the whole view (e.g. (S/4, S/4) for DeepLabV3+).
        size: The view's (H, W), or S; ``size = grid`` for a grid of view pixels.
        offset: Centre of cell 0 in view pixels (:data:`CELL_OFFSET`: the centre of pixel 0).

    Returns:
        (y, x) source coordinates of every cell centre, shape (B, h, w, 2).
    """
    h, w, sy, sx = _strides(grid, size)
    ys = torch.arange(h, device=geom.device, dtype=geom.dtype) * sy + offset  # (h,) view pixels
    xs = torch.arange(w, device=geom.device, dtype=geom.dtype) * sx + offset  # (w,)
    centres = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (h, w, 2)
    return view_to_source(centres.expand(geom.shape[0], h, w, 2), geom, size)  # (B, h, w, 2)


def correspondence(
    geom1: Tensor, geom2: Tensor, grid: Size, size: Size, offset: float = CELL_OFFSET
) -> Tensor:
    """For every feature cell of view 1, the view-2 cell whose centre is nearest in the source.

    The centre of a view-1 cell (:func:`grid_to_source`) is mapped into view 2 (point q, in view-2
    pixels); its match is the view-2 cell whose centre ``s * b + offset`` is nearest along each
    axis, ``b = floor((q - offset) / s + 1/2)`` (ties go to the higher cell). It gets -1 when q lies
    outside view 2, or more than half a cell from every view-2 centre (b outside the grid: e.g.
    with offset 0.5 and s = 4, the last 1.5 px of the view). Both views share the grid (h, w) and
    the view size (H, W).

    Args:
        geom1, geom2: Geometry of the two views, shape (B, 5) each.
        grid: Feature grid (h, w) of both views.
        size: The views' (H, W), or S; ``size = grid`` for a grid of view pixels.
        offset: Centre of cell 0 in view pixels (:data:`CELL_OFFSET`).

    Returns:
        Row-major index ``a2 * w + b2`` into view 2's flattened grid, or -1, shape (B, h*w) int64.
    """
    h, w, sy, sx = _strides(grid, size)
    big_h, big_w = _size2(size)
    source = grid_to_source(geom1, (h, w), size, offset)  # (B, h, w, 2)
    q = source_to_view(source, geom2, size)  # (B, h, w, 2), view-2 pixels
    stride = q.new_tensor([sy, sx])  # (2,)
    cell = torch.floor((q - offset) / stride + 0.5)  # (B, h, w, 2): the nearest view-2 centre
    qy, qx, cy, cx = q[..., 0], q[..., 1], cell[..., 0], cell[..., 1]
    inside = (qy >= 0) & (qy < big_h) & (qx >= 0) & (qx < big_w)  # (B, h, w) inside view 2
    inside &= (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)  # within half a cell of a centre
    index = cy.clamp(0, h - 1).long() * w + cx.clamp(0, w - 1).long()  # (B, h, w)
    return torch.where(inside, index, -1).reshape(geom1.shape[0], h * w)  # (B, h*w)


def map_boxes(boxes: Tensor, geom: Tensor, size: Size) -> Tensor:
    """Boxes in source pixels to view pixels (for :func:`pixcon.losses.glcnet.pool_patches`).

    Pure geometry, no cell model: :func:`~pixcon.losses.glcnet.pool_patches` lines the view-pixel
    boxes up with the feature cells' centres (``offset``).

    Args:
        boxes: ``(x1, y1, x2, y2)`` in source pixels (torchvision's box order), shape (B, K, 4).
        geom: View geometry, shape (B, 5).
        size: The view's (H, W), or S.

    Returns:
        ``(x1, y1, x2, y2)`` in view pixels with x1 <= x2 (a flip swaps the x ends), shape (B, K, 4).
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (B, K, 4), got {tuple(boxes.shape)}")
    corners = torch.stack([boxes[..., [1, 0]], boxes[..., [3, 2]]], dim=2)  # (B, K, 2, 2) as (y, x)
    view = source_to_view(corners, geom, size)  # (B, K, 2, 2)
    y, x = view[..., 0], view[..., 1]  # (B, K, 2) each
    return torch.stack([x.amin(-1), y.amin(-1), x.amax(-1), y.amax(-1)], dim=-1)  # (B, K, 4)


# --------------------------------------------------------------------------------------------
# Dataset wrapper
# --------------------------------------------------------------------------------------------


class TwoViews(Dataset):
    """Two augmented views of every image of a dataset, with their geometry.

    View 1 is a random resized crop of the source image; view 2 is resampled (at most
    ``max_tries`` times) until the two crops overlap by at least ``min_overlap`` of the smaller
    crop's area, so that local matching has something to match. If no draw succeeds, view 2 takes
    view 1's crop box (keeping its own flip and colour jitter). Each view gets its own seeded
    colour jitter.

    Randomness: with ``seed=None`` everything is drawn from torch's global RNG, like the other
    training transforms (DataLoader workers seed it per worker). With an integer ``seed``, sample
    ``index`` of epoch ``e`` (see :meth:`set_epoch`) draws from its own generator seeded by
    ``(seed, e, index)``, independent of workers and order.

    Args:
        base: A dataset following :class:`pixcon.data.base.SegmentationDataset`, built with
            ``transform=None``: it returns ``(image (C, H, W) float in [0, 1], mask (H, W) int64)``.
        size: View side S.
        scale: Crop area range as a fraction of the image area.
        ratio: Crop aspect (width / height) range.
        hflip: Random horizontal flips.
        color_jitter: Jitter strength (see :func:`color_jitter`); 0 disables it.
        min_overlap: Minimum intersection over the smaller crop's area, in [0, 1].
        max_tries: Draws of view 2 before falling back to view 1's box, >= 1.
        seed: None (global RNG) or an integer (per-sample generators).
    """

    def __init__(
        self,
        base: Any,
        size: int,
        scale: Sequence[float] = (0.3, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        color_jitter: float = 0.4,
        min_overlap: float = 0.5,
        max_tries: int = 20,
        seed: int | None = None,
    ) -> None:
        if getattr(base, "transform", None) is not None:
            raise ValueError(
                "TwoViews needs the base dataset built with transform=None (it crops the views itself)"
            )
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {tuple(scale)}")
        if not 0 <= min_overlap <= 1:
            raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        if color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
        self.base, self.size = base, int(size)
        self.scale, self.ratio = (lo, hi), tuple(float(r) for r in ratio)
        self.hflip, self.color_jitter = bool(hflip), float(color_jitter)
        self.min_overlap, self.max_tries, self.seed = float(min_overlap), int(max_tries), seed
        self.epoch = 0

    # The dataset attributes objectives and loops read, passed through from the base dataset.
    @property
    def num_classes(self) -> int:
        return int(self.base.num_classes)

    @property
    def ignore_index(self) -> int:
        return int(self.base.ignore_index)

    @property
    def in_channels(self) -> int:
        return int(self.base.in_channels)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's views when ``seed`` is set (no effect with ``seed=None``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        state = np.random.SeedSequence([int(self.seed), self.epoch, int(index)]).generate_state(2)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def sample_pair(
        self, h: int, w: int, generator: torch.Generator | None = None
    ) -> tuple[ViewParams, ViewParams]:
        """The two views' geometry for an h x w image (view 2 resampled for overlap)."""
        kwargs: dict[str, Any] = dict(
            size=self.size, scale=self.scale, ratio=self.ratio, hflip=self.hflip, generator=generator
        )
        first = sample_view(h, w, **kwargs)
        for _ in range(self.max_tries):
            second = sample_view(h, w, **kwargs)
            if overlap_fraction(first, second) >= self.min_overlap:
                return first, second
        log.debug(
            "no view overlapping by %.2f in %d tries; view 2 reuses view 1's box",
            self.min_overlap,
            self.max_tries,
        )
        return first, replace(first, flip=second.flip)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.base[index]  # (C, H, W), (H, W)
        generator = self._generator(index)
        p1, p2 = self.sample_pair(int(image.shape[-2]), int(image.shape[-1]), generator)
        view1, mask1 = apply_view(p1, image, mask)  # (C, S, S), (S, S)
        view2, mask2 = apply_view(p2, image, mask)
        return {
            "view1": color_jitter(view1, self.color_jitter, generator),
            "view2": color_jitter(view2, self.color_jitter, generator),
            "geom1": p1.to_tensor(),  # (5,)
            "geom2": p2.to_tensor(),
            "mask1": mask1.long(),
            "mask2": mask2.long(),
            "index": int(index),
        }

    def __repr__(self) -> str:
        return (
            f"TwoViews(size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, "
            f"color_jitter={self.color_jitter}, min_overlap={self.min_overlap}, seed={self.seed}, "
            f"base={type(self.base).__name__}[{len(self.base)}])"
        )

"""The dataset protocol shared by every reader, and the helpers the readers share.

Every reader (:class:`~pixcon.data.folder.SegmentationFolder`, :class:`~pixcon.data.voc.VOCSegmentation`,
:class:`~pixcon.data.cityscapes.Cityscapes`, :class:`~pixcon.data.isprs.ISPRSPatches`) is a
``torch.utils.data.Dataset`` that returns ``(image (C, H, W) float32, mask (H, W) int64)`` after an
optional joint ``transform(image, mask)``, and follows :class:`SegmentationDataset`. 8-bit images are
in [0, 1]; deeper ones are scaled by ``data.value_range`` (see :mod:`pixcon.data.images`).

:class:`Scan` is what a format's ``scan_*`` function hands to
:func:`pixcon.data.registry.check_dataset`: the image/mask pairs to read, the problems found while
indexing (missing files, bad split files), and the format's decoders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from pixcon.data.images import image_to_tensor, open_image
from pixcon.data.images import read_rgb as read_rgb  # re-exported; its home is pixcon.data.images

DEFAULT_IGNORE_INDEX = 255

PairTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
RGB = tuple[int, int, int]


@runtime_checkable
class SegmentationDataset(Protocol):
    """What the training loop, the class weights and the label splits rely on.

    Attributes:
        ids: Sample ids in dataset order, without whitespace (they go into split files).
        class_names: One name per class id ``0 .. num_classes - 1``.
        num_classes: ``len(class_names)``.
        ignore_index: Mask value excluded from losses and metrics (255 for every built-in format).
        palette: One (r, g, b) per class for visualisation, or None.
        in_channels: Image channels C (3, or 4 for Potsdam RGBIR).
    """

    ids: list[str]
    class_names: list[str]
    num_classes: int
    ignore_index: int
    palette: list[tuple[int, ...]] | None
    in_channels: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """``(image (C, H, W) float32, mask (H, W) int64)``, transformed if set.

        8-bit images are in [0, 1]; deeper ones are scaled by ``data.value_range``, not clipped.
        """
        ...

    def mask(self, index: int) -> Tensor:
        """The untransformed mask (H, W) int64 of sample ``index``; the image is not decoded."""
        ...


class DatasetView:
    """A wrapper that changes some samples of ``dataset`` and otherwise is it: its length and every
    attribute it does not define (``ids``, ``class_names``, ``num_classes``, ...) are the dataset's."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (e.g. during unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class UnknownColorError(ValueError):
    """A colour-coded mask holds a colour that is not in the palette."""


def read_index_mask(path: Path) -> np.ndarray:
    """Reads a single-channel index mask ("L", "P", "I" or "I;16" mode) as (H, W) class ids.

    Raises:
        OSError: Unreadable or truncated file.
        ValueError: A multi-channel image (the message names the file).
    """
    img = open_image(path)
    if img.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(
            f"mask {path} has mode {img.mode!r}; masks must be single-channel index images (mode 'L' or 'P')"
        )
    return np.asarray(img)  # (H, W); palette images give their indices


def _color_keys(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int32 key ``r << 16 | g << 8 | b``."""
    # Channel by channel: casting the whole (..., 3) array first would need 3x the memory.
    r, g, b = (rgb[..., c].astype(np.int32) for c in range(3))
    return (r << 16) | (g << 8) | b


def lookup_colors(
    rgb: np.ndarray, colors: Sequence[Sequence[int]], values: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Looks up every pixel's colour in a palette.

    Args:
        rgb: Colour mask, shape (H, W, 3), uint8.
        colors: Known colours, one (r, g, b) each; must be distinct.
        values: The value for each colour (class id, or the ignore index).

    Returns:
        ``(values (H, W) int64, found (H, W) bool)``; values are arbitrary where not found.
    """
    table = _color_keys(np.asarray(colors, dtype=np.int32).reshape(-1, 3))  # (K,)
    order = np.argsort(table)
    sorted_keys, sorted_values = table[order], np.asarray(values, dtype=np.int64)[order]
    keys = _color_keys(rgb)  # (H, W)
    pos = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)  # (H, W)
    return sorted_values[pos], sorted_keys[pos] == keys


def unknown_color_error(
    rgb: np.ndarray, found: np.ndarray, path: Path | str, offset: tuple[int, int] = (0, 0)
) -> UnknownColorError:
    """The error for the pixels of `rgb` (H, W, 3) where `found` (H, W) is False.

    Names the file, the most frequent unknown colour, its first pixel (y, x) in file coordinates
    (`offset` is the window's corner), the number of such pixels and up to 4 other unknown colours.
    """
    keys = _color_keys(rgb)  # (H, W)
    bad_keys, counts = np.unique(keys[~found], return_counts=True)
    first = bad_keys[np.argmax(counts)]
    y, x = (int(v[0]) + o for v, o in zip(np.nonzero(keys == first), offset, strict=True))

    def rgb_of(k: int) -> tuple[int, int, int]:
        return (int(k >> 16) & 255, int(k >> 8) & 255, int(k) & 255)

    others = [rgb_of(k) for k in bad_keys if k != first][:4]
    more = f"; other unknown colours: {others}" if others else ""
    return UnknownColorError(
        f"unknown colour {rgb_of(first)} at pixel (y={y}, x={x}) in {path} "
        f"({int((~found).sum())} pixels with unknown colours{more})"
    )


def decode_colors(
    rgb: np.ndarray,
    colors: Sequence[Sequence[int]],
    values: Sequence[int],
    path: Path | str,
    offset: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Maps every pixel's colour to the value of the matching palette entry.

    Args:
        rgb: Colour mask, shape (H, W, 3), uint8.
        colors: Known colours, one (r, g, b) each; must be distinct.
        values: The value for each colour (class id, or the ignore index).
        path: The mask file, for error messages.
        offset: (y, x) of `rgb` inside the file (a window of a tile), for error messages.

    Returns:
        Shape (H, W), int64.

    Raises:
        UnknownColorError: A pixel's colour is not in `colors` (see :func:`unknown_color_error`).
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"colour mask {path} must be (H, W, 3), got {rgb.shape}")
    out, found = lookup_colors(rgb, colors, values)  # (H, W), (H, W)
    if not found.all():
        raise unknown_color_error(rgb, found, path, offset)
    return out


def check_palette(colors: Sequence[Sequence[int]], source: str, distinct: bool = False) -> list[RGB]:
    """Validates a palette: (r, g, b) triples of ints in [0, 255].

    Args:
        colors: The palette.
        source: Where it comes from, for error messages.
        distinct: Also require distinct colours (needed to decode colour masks).

    Raises:
        ValueError: A malformed or (with `distinct`) repeated entry (the message names `source`).
    """
    out: list[RGB] = []
    for c in colors:
        if (
            not isinstance(c, (list, tuple))
            or len(c) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        ):
            raise ValueError(f"{source}: palette entries must be [r, g, b] with ints in [0, 255], got {c!r}")
        out.append((int(c[0]), int(c[1]), int(c[2])))
    dupes = sorted({c for c in out if out.count(c) > 1})
    if distinct and dupes:
        raise ValueError(f"{source}: colours must be distinct to decode colour masks; repeated: {dupes}")
    return out


def to_tensors(
    image: np.ndarray,
    mask: np.ndarray,
    value_range: Sequence[float] | None = None,
    source: str | Path = "image",
) -> tuple[Tensor, Tensor]:
    """Converts a decoded pair to tensors.

    Args:
        image: Shape (H, W, C): uint8 (scaled by 1/255), or a deeper dtype scaled by `value_range`
            (see :func:`pixcon.data.images.image_to_tensor`).
        mask: Shape (H, W), any integer type.
        value_range: ``[lo, hi]`` of non-8-bit images (``data.value_range``).
        source: The image file, for error messages.

    Returns:
        ``(image (C, H, W) float32, mask (H, W) int64)``; 8-bit images land in [0, 1].

    Raises:
        ValueError: A non-8-bit image without `value_range`, or an unsupported dtype (names `source`).
    """
    image_t = image_to_tensor(image, value_range, source)  # (C, H, W)
    mask_t = torch.from_numpy(np.array(mask, dtype=np.int64))  # (H, W)
    return image_t, mask_t


def check_same_size(
    image_shape: tuple[int, ...], mask_shape: tuple[int, ...], image: Path | str, mask: Path | str
) -> None:
    """Raises ValueError naming both files unless the image and mask have the same (H, W).

    ``image`` and ``mask`` name the two in the message: paths, or a description such as
    ``"image of <id>"``.
    """
    if tuple(image_shape[:2]) != tuple(mask_shape[:2]):
        raise ValueError(
            f"size mismatch: image {image} is {image_shape[1]}x{image_shape[0]} (WxH) "
            f"but mask {mask} is {mask_shape[1]}x{mask_shape[0]}"
        )


@dataclass
class Sample:
    """One image/mask pair to check; a None path was already reported as missing."""

    id: str
    image: Path | None
    mask: Path | None


@dataclass
class Scan:
    """A format's view of the files under its root, for :func:`pixcon.data.registry.check_dataset`.

    Attributes:
        samples: Pairs to decode and compare.
        errors: Problems found while indexing (each names its file or split file).
        warnings: Non-fatal findings.
        class_names: Class names, or None to name them ``class_k`` from the largest mask value.
        ignore_index: Mask value that is not a class.
        read_image: Path -> (H, W, C) array in the file's own depth (uint8, uint16, float32, ...);
            raises OSError/ValueError naming the file.
        read_mask: Path -> (H, W) non-negative integer class ids; raises OSError/ValueError naming
            the file.
        min_size: (H, W) every image must reach (ISPRS: the patch size), or None.
        in_channels: Channels every image must have, or None.
        unit: What one sample is, for the report ("image" or "tile").
    """

    samples: list[Sample]
    class_names: list[str] | None
    ignore_index: int
    read_image: Callable[[Path], np.ndarray]
    read_mask: Callable[[Path], np.ndarray]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    min_size: tuple[int, int] | None = None
    in_channels: int | None = None
    unit: str = "image"


def check_ids(ids: Sequence[str], source: str) -> list[str]:
    """Returns `ids` as a list; raises ValueError naming `source` for empty ids or ids with whitespace."""
    out = list(ids)
    for i in out:
        if not isinstance(i, str) or not i or any(c.isspace() for c in i):
            raise ValueError(f"invalid id {i!r} in {source}: ids must be non-empty and contain no whitespace")
    return out


def check_unique_ids(ids: Sequence[str], source: str) -> None:
    """Raises ValueError naming `source` and the first repeated id unless every id occurs once.

    The one uniqueness check for ids: split files, label-split files, explicit id lists and
    ``pixcon split``. A repeated id would weight its image several times in training.
    """
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        first = repeated[0]
        more = f" (repeated ids: {len(repeated)}, e.g. {repeated[:5]})" if len(repeated) > 1 else ""
        raise ValueError(f"{source}: ids must be unique; {first!r} is listed {counts[first]} times{more}")


def dedupe_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Drops repeated ids, keeping the first (an id listed in two splits is read once)."""
    seen: set[str] = set()
    out = []
    for s in samples:
        if s.id not in seen:
            seen.add(s.id)
            out.append(s)
    return out

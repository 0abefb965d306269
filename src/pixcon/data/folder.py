"""A segmentation dataset stored as a folder of images and masks.

Layout::

    root/images/<id>.png|jpg|jpeg|tif|tiff   RGB (greyscale and palette images are converted); one file
                                             per id: x.png beside x.tif is an error naming both
    root/masks/<id>.png                      mask_type="index": single-channel class ids ("L" or "P" mode)
                                             mask_type="color": RGB, one palette colour per class
    root/splits/<split>.txt                  optional: one id per line
    root/classes.yaml                        optional (required for colour masks): classes (names),
                                             palette, ignore_index, ignore_colors

``classes.yaml`` (or the file passed as `classes_file`)::

    classes: [background, road, building]     # or "names"
    palette: [[0, 0, 0], [128, 64, 128], [70, 70, 70]]   # one [r, g, b] per class
    ignore_index: 255                          # optional, default 255
    ignore_colors: [[255, 255, 255]]           # optional, colour masks only: pixels -> ignore_index

Colour masks are decoded exactly: a colour that is neither in the palette nor in ``ignore_colors``
is an error naming the file, the colour and a pixel (y, x) that has it.

Images deeper than 8 bits (16-bit greyscale PNG, uint16/float TIFF) keep their dynamic range and are
scaled by ``value_range`` (``data.value_range``); see :mod:`pixcon.data.images`. Greyscale images of
any depth are repeated to 3 channels, so ``in_channels`` is always 3.

Without a classes file, the classes are ``class_0 .. class_{max}`` from the largest mask value over
all masks, and an inventory with a stray id far beyond the others is refused (see
:mod:`pixcon.data.inventory`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import Tensor
from torch.utils.data import Dataset

from pixcon.data.base import (
    DEFAULT_IGNORE_INDEX,
    PairTransform,
    Sample,
    Scan,
    check_palette,
    check_same_size,
    check_unique_ids,
    decode_colors,
    dedupe_samples,
    open_image,
    read_index_mask,
    to_tensors,
)
from pixcon.data.images import check_value_range, read_rgb
from pixcon.data.inventory import STRAY_MAX_SHARE, find_stray_classes
from pixcon.data.paths import require_dir, require_file

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_TYPES: tuple[str, ...] = ("index", "color")

# Kept for callers of the previous module layout.
JointTransform = PairTransform
_open_image = open_image


def read_ids(path: str | Path) -> list[str]:
    """Reads ids from a text file, one per line; blank lines are skipped.

    Raises:
        FileNotFoundError: The file does not exist (the message names it).
        IsADirectoryError: `path` is a folder.
        ValueError: An id is listed twice (the message names the file and the id).
    """
    path = require_file(path, "id list")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    check_unique_ids(ids, str(path))
    return ids


def write_ids(path: str | Path, ids: Iterable[str]) -> Path:
    """Writes ids to a text file, one per line (parent directories are created).

    Raises:
        ValueError: An id is empty or contains whitespace.
    """
    path = Path(path)
    ids = list(ids)
    for i in ids:
        if not i or i != i.strip() or any(c.isspace() for c in i):
            raise ValueError(f"invalid id {i!r} for {path}: ids must be non-empty and contain no whitespace")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def _load_classes(path: Path) -> dict[str, Any]:
    try:
        info = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"cannot parse {path}: {err}") from err
    if not isinstance(info, dict):
        raise ValueError(
            f"{path} must hold a mapping with 'classes' (list of names), got {type(info).__name__}"
        )
    names = info.get("classes", info.get("names"))
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{path}: 'classes' must be a list of names")
    palette = info.get("palette")
    if palette is not None and (names is None or len(palette) != len(names)):
        raise ValueError(f"{path}: 'palette' must have one [r, g, b] entry per class")
    return info


@dataclass(frozen=True)
class ClassInfo:
    """The contents of a classes file (all optional)."""

    names: list[str] | None
    palette: list[tuple[int, int, int]] | None
    ignore_index: int
    ignore_colors: list[tuple[int, int, int]]
    source: Path | None


def load_class_info(root: Path, classes_file: str | Path | None = None) -> ClassInfo:
    """Reads `classes_file`, or ``root/classes.yaml`` if it exists when `classes_file` is None.

    Raises:
        FileNotFoundError: An explicit `classes_file` does not exist.
        ValueError: The file is malformed (the message names it).
    """
    path: Path | None
    if classes_file is not None:
        path = require_file(classes_file, "classes file")
    else:
        path = root / "classes.yaml"
        path = path if path.is_file() else None
    info = _load_classes(path) if path is not None else {}
    names = info.get("classes", info.get("names"))
    palette = info.get("palette")
    ignore_index = info.get("ignore_index", DEFAULT_IGNORE_INDEX)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"{path}: 'ignore_index' must be an integer, got {ignore_index!r}")
    ignore_colors = info.get("ignore_colors", [])
    if not isinstance(ignore_colors, list):
        raise ValueError(f"{path}: 'ignore_colors' must be a list of [r, g, b]")
    return ClassInfo(
        names=list(names) if names is not None else None,
        palette=check_palette(palette, str(path)) if palette is not None else None,
        ignore_index=int(ignore_index),
        ignore_colors=check_palette(ignore_colors, f"{path} (ignore_colors)"),
        source=path,
    )


def index_images(image_dir: Path) -> dict[str, list[Path]]:
    """Every image file of `image_dir` by id (the file name without extension), all candidates kept.

    Files count when their extension, in any case, is one of ``IMAGE_EXTENSIONS``.
    """
    found: dict[str, list[Path]] = {}
    for p in sorted(image_dir.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            found.setdefault(p.stem, []).append(p)
    return found


def resolve_image(index: dict[str, list[Path]], image_dir: Path, sample_id: str) -> Path:
    """The one image file of `sample_id`: the reader and ``pixcon data check`` both resolve ids here.

    Args:
        index: From :func:`index_images`.
        image_dir: The folder `index` lists, for messages.
        sample_id: The id.

    Raises:
        FileNotFoundError: No file (the message names the folder and the extensions tried).
        ValueError: Several files, e.g. ``x.png`` and ``x.tif`` (the message names them all).
    """
    candidates = index.get(sample_id, [])
    if not candidates:
        raise FileNotFoundError(
            f"no image for id {sample_id!r} in {image_dir} (tried extensions {list(IMAGE_EXTENSIONS)})"
        )
    if len(candidates) > 1:
        raise ValueError(
            f"id {sample_id!r} has {len(candidates)} image files: {', '.join(str(p) for p in candidates)}; "
            "keep one (an id is a file name without its extension)"
        )
    return candidates[0]


class _MaskDecoder:
    """Reads masks of one folder dataset: index PNGs, or colour PNGs decoded with the palette."""

    def __init__(self, mask_type: str, info: ClassInfo) -> None:
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {list(MASK_TYPES)}, got {mask_type!r}")
        self.mask_type = mask_type
        if mask_type == "color":
            if info.palette is None:
                where = info.source or "classes.yaml"
                raise ValueError(f"mask_type='color' needs a 'palette' (one [r, g, b] per class) in {where}")
            clash = sorted(set(info.palette) & set(info.ignore_colors))
            if clash:
                raise ValueError(f"{info.source}: colours {clash} are both a class and an ignore colour")
            check_palette([*info.palette, *info.ignore_colors], str(info.source), distinct=True)
            self.colors = [*info.palette, *info.ignore_colors]
            self.values = [*range(len(info.palette)), *[info.ignore_index] * len(info.ignore_colors)]

    def __call__(self, path: Path) -> np.ndarray:
        """Path -> (H, W) class ids."""
        if self.mask_type == "index":
            return read_index_mask(path)
        return decode_colors(read_rgb(path), self.colors, self.values, path)  # (H, W)


class SegmentationFolder(Dataset[tuple[Tensor, Tensor]]):
    """Images and masks from a folder (see the module docstring for the layout).

    Attributes:
        root: The dataset folder.
        ids: The sample ids, in order.
        class_names: Class names from the classes file; without it (index masks only),
            ``class_0 .. class_{C-1}`` with C inferred from the largest mask value (ignoring
            `ignore_index`) over all masks.
        num_classes: ``len(class_names)``.
        ignore_index: Mask value excluded from losses and metrics (default 255).
        palette: One (r, g, b) per class, or None.
        in_channels: Always 3 (images are converted to RGB; greyscale of any depth is repeated).
        mask_type: "index" or "color".
        value_range: ``(lo, hi)`` scaling images deeper than 8 bits, or None (8-bit data).
    """

    in_channels: int = 3

    def __init__(
        self,
        root: str | Path,
        ids: Sequence[str] | None = None,
        split: str | None = None,
        transform: PairTransform | None = None,
        classes_file: str | Path | None = None,
        mask_type: Literal["index", "color"] = "index",
        value_range: Sequence[float] | None = None,
    ) -> None:
        """Indexes the folder; every id must have one image and a mask.

        Args:
            root: Dataset folder.
            ids: Ids to use. Exclusive with `split`. Neither: every image in ``root/images``.
            split: Read ids from ``root/splits/<split>.txt``.
            transform: Joint transform ``(image (3, H, W) float, mask (H, W) int64) -> same``.
            classes_file: Classes YAML; None = ``root/classes.yaml`` when it exists.
            mask_type: "index" (class ids) or "color" (RGB masks decoded with the palette).
            value_range: ``[lo, hi]`` scaling images deeper than 8 bits (``data.value_range``); 8-bit
                images are always scaled by 1/255. Needed as soon as a non-8-bit image is read.

        Raises:
            ValueError: Both `ids` and `split` given, an empty or repeated id, an id with several image
                files, a malformed classes file or value range, colour masks without a palette, or
                (no classes file) a stray class id in the masks.
            FileNotFoundError: Missing folder, split file, classes file, image or mask (the message
                names it).
            NotADirectoryError, IsADirectoryError: A file where a folder belongs, or the reverse.
        """
        self.root = require_dir(root, "dataset folder")
        self.transform = transform
        self.value_range = check_value_range(value_range) if value_range is not None else None
        image_dir = require_dir(self.root / "images", "image folder")
        mask_dir = require_dir(self.root / "masks", "mask folder")
        if ids is not None and split is not None:
            raise ValueError("pass either ids or split, not both")
        index = index_images(image_dir)
        source = "ids"
        if split is not None:
            source = str(self.root / "splits" / f"{split}.txt")
            ids = read_ids(source)
        elif ids is None:
            ids = sorted(index)
        self.ids: list[str] = list(ids)
        check_unique_ids(self.ids, source)
        if not self.ids:
            raise ValueError(f"no samples in {self.root}" + (f" for split {split!r}" if split else ""))
        self._images = [resolve_image(index, image_dir, i) for i in self.ids]
        self._masks = [mask_dir / f"{i}.png" for i in self.ids]
        for image_path, mask_path in zip(self._images, self._masks, strict=True):
            if not mask_path.is_file():
                raise FileNotFoundError(f"mask {mask_path} not found for image {image_path}")

        info = load_class_info(self.root, classes_file)
        self.mask_type = mask_type
        self._decode = _MaskDecoder(mask_type, info)
        self.ignore_index: int = info.ignore_index
        names = info.names
        if names is None:
            names = [f"class_{k}" for k in range(self._infer_num_classes(mask_dir))]
            logger.info("%s has no classes file; inferred %d classes from the masks", self.root, len(names))
        self.class_names: list[str] = list(names)
        self.num_classes: int = len(self.class_names)
        self.palette: list[tuple[int, ...]] | None = (
            [tuple(c) for c in info.palette] if info.palette is not None else None
        )

    def _infer_num_classes(self, mask_dir: Path) -> int:
        """1 + the largest mask value over every mask of `mask_dir`, the ignore index excluded.

        Raises:
            ValueError: The inventory has a stray id (:func:`~pixcon.data.inventory.find_stray_classes`);
                the message names a mask holding it and the fixes.
        """
        counts = np.zeros(1, dtype=np.int64)
        first_seen: dict[int, Path] = {}
        for path in sorted(mask_dir.glob("*.png")):
            mask = self._read_mask(path)
            if mask.size and mask.min() < 0:
                raise ValueError(f"mask {path} has negative values")
            hist = np.bincount(mask.ravel().astype(np.int64))  # (V,) pixels per value
            if self.ignore_index < len(hist):
                hist[self.ignore_index] = 0
            if len(hist) > len(counts):
                counts = np.pad(counts, (0, len(hist) - len(counts)))
            counts[: len(hist)] += hist
            for v in np.nonzero(hist)[0]:
                first_seen.setdefault(int(v), path)
        strays = find_stray_classes(counts)
        if strays:
            rest = np.nonzero(counts)[0]
            rest = rest[~np.isin(rest, strays)]
            total = int(counts.sum())
            listing = "; ".join(
                f"{v} ({int(counts[v])} pixels, first in {first_seen[v]})" for v in sorted(strays)
            )
            raise ValueError(
                f"suspicious class inventory in {mask_dir}: mask value(s) {listing} lie far beyond the other "
                f"class ids ({int(rest.min())}..{int(rest.max())}) and cover under {STRAY_MAX_SHARE:.0%} of "
                f"the {total:,} labelled pixels; inferring the classes would make a {max(strays) + 1}-class "
                f"head. Fix those masks (or set the pixels to ignore_index {self.ignore_index}), or declare "
                f"the classes in {self.root / 'classes.yaml'} (or data.classes_file)"
            )
        present = np.nonzero(counts)[0]
        return int(present[-1]) + 1 if len(present) else 0

    @staticmethod
    def _read_mask(path: Path) -> np.ndarray:
        return read_index_mask(path)

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, index: int) -> Tensor:
        """The untransformed mask of sample ``index``, (H, W) int64, without decoding the image."""
        return torch.from_numpy(self._decode(self._masks[index]).astype(np.int64))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Returns ``(image (3, H, W) float32, mask (H, W) int64)``, transformed if set.

        8-bit images are in [0, 1]; deeper ones are scaled by ``value_range``, not clipped.
        """
        image_path, mask_path = self._images[index], self._masks[index]
        image = read_rgb(image_path)  # (H, W, 3) in the file's depth
        mask = self._decode(mask_path)  # (H, W)
        check_same_size(image.shape, mask.shape, image_path, mask_path)
        image_t, mask_t = to_tensors(image, mask, self.value_range, image_path)  # (3, H, W), (H, W)
        if self.transform is not None:
            image_t, mask_t = self.transform(image_t, mask_t)
        return image_t, mask_t

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, num_classes={self.num_classes})"
        )


def scan_folder(
    root: str | Path,
    splits: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    classes_file: str | Path | None = None,
    mask_type: Literal["index", "color"] = "index",
) -> Scan:
    """Indexes a folder dataset for :func:`pixcon.data.registry.check_dataset`, collecting problems.

    Args:
        root: Dataset folder.
        splits: Check the ids of these ``splits/<name>.txt``. Exclusive with `ids`.
        ids: Check these ids.
        classes_file: As in :class:`SegmentationFolder`.
        mask_type: As in :class:`SegmentationFolder`.

    With neither `splits` nor `ids`, every image and mask is checked, images without masks and masks
    without images are reported, and every ``splits/*.txt`` is checked for ids without files.

    Ids are resolved to files by :func:`resolve_image`, as the reader does: an id with several image
    files is an error naming them. A split file that repeats an id, or is a folder, is an error.

    Raises:
        FileNotFoundError: `root/images` or an explicit classes file does not exist.
        NotADirectoryError, IsADirectoryError: A file where a folder belongs, or the reverse.
        ValueError: A malformed classes file, or colour masks without a palette.
    """
    root = require_dir(root, "dataset folder")
    image_dir, mask_dir = require_dir(root / "images", "image folder"), root / "masks"
    info = load_class_info(root, classes_file)
    decode = _MaskDecoder(mask_type, info)
    errors: list[str] = []
    index = index_images(image_dir)
    masks = {p.stem: p for p in sorted(mask_dir.glob("*.png"))} if mask_dir.is_dir() else {}
    if not mask_dir.is_dir():
        errors.append(
            f"mask folder {mask_dir} is a file, not a folder"
            if mask_dir.exists()
            else f"mask folder {mask_dir} not found"
        )

    def image_of(i: str, source: str | None) -> Path | None:
        try:
            return resolve_image(index, image_dir, i)
        except FileNotFoundError:
            if source is not None:
                errors.append(f"{source}: id {i!r} has no image in {image_dir}")
        except ValueError as err:
            errors.append(str(err))  # several files: the same line wherever the id is listed
        return None

    def listed(source: str, wanted: Sequence[str]) -> list[Sample]:
        out = []
        for i in wanted:
            image, mask = image_of(i, source), masks.get(i)
            if mask is None:
                errors.append(f"{source}: id {i!r} has no mask {mask_dir / f'{i}.png'}")
            out.append(Sample(i, image, mask))
        return out

    def split_file(path: Path) -> list[str] | None:
        try:
            return read_ids(path)
        except (OSError, ValueError) as err:
            errors.append(str(err))
            return None

    if ids is not None and splits is not None:
        raise ValueError("pass either ids or splits, not both")
    if ids is not None:
        samples = listed("ids", list(ids))
    elif splits is not None:
        samples = []
        for split in splits:
            path = root / "splits" / f"{split}.txt"
            if not path.exists():
                errors.append(f"split file {path} not found")
                continue
            wanted = split_file(path)
            if wanted is not None:
                samples += listed(str(path), wanted)
    else:
        for i in sorted(set(index) - set(masks)):
            errors.append(f"image {index[i][0]} has no mask {mask_dir / f'{i}.png'}")
        for i in sorted(set(masks) - set(index)):
            errors.append(f"mask {masks[i]} has no image in {image_dir}")
        samples = [
            Sample(i, image_of(i, None) if i in index else None, masks.get(i))
            for i in sorted(set(index) | set(masks))
        ]
        for path in sorted((root / "splits").glob("*.txt")):
            for i in split_file(path) or []:
                if i not in index or i not in masks:
                    missing = " and ".join(
                        w for w, ok in (("image", i in index), ("mask", i in masks)) if not ok
                    )
                    errors.append(f"{path}: id {i!r} has no {missing}")
    return Scan(
        samples=dedupe_samples(samples),
        class_names=info.names,
        ignore_index=info.ignore_index,
        read_image=read_rgb,
        read_mask=decode,
        errors=errors,
    )

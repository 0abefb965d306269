"""A segmentation dataset stored as a folder of images and masks.

Layout::

    root/images/<id>.png|jpg|jpeg|tif|tiff   RGB (greyscale and palette images are converted)
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
    decode_colors,
    dedupe_samples,
    open_image,
    read_index_mask,
    read_rgb,
    to_tensors,
)

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
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list {path} not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


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
    if classes_file is not None:
        path: Path | None = Path(classes_file)
        if not path.is_file():  # type: ignore[union-attr]
            raise FileNotFoundError(f"classes file {path} not found")
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


def _find_image(image_dir: Path, sample_id: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (image_dir / f"{sample_id}{ext}", image_dir / f"{sample_id}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


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
        in_channels: Always 3 (images are converted to RGB).
        mask_type: "index" or "color".
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
    ) -> None:
        """Indexes the folder; every id must have an image and a mask.

        Args:
            root: Dataset folder.
            ids: Ids to use. Exclusive with `split`. Neither: every image in ``root/images``.
            split: Read ids from ``root/splits/<split>.txt``.
            transform: Joint transform ``(image (3, H, W) float, mask (H, W) int64) -> same``.
            classes_file: Classes YAML; None = ``root/classes.yaml`` when it exists.
            mask_type: "index" (class ids) or "color" (RGB masks decoded with the palette).

        Raises:
            ValueError: Both `ids` and `split` given, an empty id list, a malformed classes file, or
                colour masks without a palette.
            FileNotFoundError: Missing folder, split file, classes file, image or mask (the message
                names it).
        """
        self.root = Path(root)
        self.transform = transform
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder {image_dir} not found")
        if ids is not None and split is not None:
            raise ValueError("pass either ids or split, not both")
        if split is not None:
            ids = read_ids(self.root / "splits" / f"{split}.txt")
        elif ids is None:
            ids = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        self.ids: list[str] = list(ids)
        if not self.ids:
            raise ValueError(f"no samples in {self.root}" + (f" for split {split!r}" if split else ""))
        self._images = [self._find_image(i) for i in self.ids]
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

    def _find_image(self, sample_id: str) -> Path:
        found = _find_image(self.root / "images", sample_id)
        if found is None:
            raise FileNotFoundError(
                f"no image for id {sample_id!r} in {self.root / 'images'} (tried extensions {list(IMAGE_EXTENSIONS)})"
            )
        return found

    def _infer_num_classes(self, mask_dir: Path) -> int:
        largest = -1
        for path in sorted(mask_dir.glob("*.png")):
            values = np.unique(self._read_mask(path))
            values = values[values != self.ignore_index]
            if len(values):
                largest = max(largest, int(values.max()))
        return largest + 1

    @staticmethod
    def _read_mask(path: Path) -> np.ndarray:
        return read_index_mask(path)

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, index: int) -> Tensor:
        """The untransformed mask of sample ``index``, (H, W) int64, without decoding the image."""
        return torch.from_numpy(self._decode(self._masks[index]).astype(np.int64))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Returns ``(image (3, H, W) float32 in [0, 1], mask (H, W) int64)``, transformed if set."""
        image_path, mask_path = self._images[index], self._masks[index]
        image = read_rgb(image_path)  # (H, W, 3) uint8
        mask = self._decode(mask_path)  # (H, W)
        check_same_size(image.shape, mask.shape, image_path, mask_path)
        image_t, mask_t = to_tensors(image, mask)  # (3, H, W), (H, W)
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

    Raises:
        FileNotFoundError: `root/images` or an explicit classes file does not exist.
        ValueError: A malformed classes file, or colour masks without a palette.
    """
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} not found")
    info = load_class_info(root, classes_file)
    decode = _MaskDecoder(mask_type, info)
    errors: list[str] = []
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    masks = {p.stem: p for p in sorted(mask_dir.glob("*.png"))} if mask_dir.is_dir() else {}
    if not mask_dir.is_dir():
        errors.append(f"mask folder {mask_dir} not found")

    def listed(source: str, wanted: Sequence[str]) -> list[Sample]:
        out = []
        for i in wanted:
            image, mask = images.get(i), masks.get(i)
            if image is None:
                errors.append(f"{source}: id {i!r} has no image in {image_dir}")
            if mask is None:
                errors.append(f"{source}: id {i!r} has no mask {mask_dir / f'{i}.png'}")
            out.append(Sample(i, image, mask))
        return out

    if ids is not None and splits is not None:
        raise ValueError("pass either ids or splits, not both")
    if ids is not None:
        samples = listed("ids", list(ids))
    elif splits is not None:
        samples = []
        for split in splits:
            path = root / "splits" / f"{split}.txt"
            if not path.is_file():
                errors.append(f"split file {path} not found")
                continue
            samples += listed(str(path), read_ids(path))
    else:
        for i in sorted(set(images) - set(masks)):
            errors.append(f"image {images[i]} has no mask {mask_dir / f'{i}.png'}")
        for i in sorted(set(masks) - set(images)):
            errors.append(f"mask {masks[i]} has no image in {image_dir}")
        samples = [Sample(i, images.get(i), masks.get(i)) for i in sorted(set(images) | set(masks))]
        for path in sorted((root / "splits").glob("*.txt")):
            for i in read_ids(path):
                if i not in images or i not in masks:
                    missing = " and ".join(
                        w for w, ok in (("image", i in images), ("mask", i in masks)) if not ok
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

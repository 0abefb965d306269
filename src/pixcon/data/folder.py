"""A segmentation dataset stored as a folder of images and index masks.

Layout::

    root/images/<id>.png|jpg|jpeg|tif|tiff   RGB (greyscale and palette images are converted)
    root/masks/<id>.png                      single-channel class ids ("L" or "P" mode)
    root/splits/<split>.txt                  optional: one id per line
    root/classes.yaml                        optional: classes (names), palette, ignore_index
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_IGNORE_INDEX = 255

JointTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


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


def _open_image(path: Path, mode: str | None = None) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode) if mode is not None else img.copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err


class SegmentationFolder(Dataset[tuple[Tensor, Tensor]]):
    """Images and index masks from a folder (see the module docstring for the layout).

    Attributes:
        root: The dataset folder.
        ids: The sample ids, in order.
        class_names: Class names from ``classes.yaml``; without it, ``class_0 .. class_{C-1}``
            with C inferred from the largest mask value (ignoring `ignore_index`) over all masks.
        num_classes: ``len(class_names)``.
        ignore_index: Mask value excluded from losses and metrics (default 255).
        palette: One (r, g, b) per class, or None.
    """

    def __init__(
        self,
        root: str | Path,
        ids: Sequence[str] | None = None,
        split: str | None = None,
        transform: JointTransform | None = None,
    ) -> None:
        """Indexes the folder; every id must have an image and a mask.

        Args:
            root: Dataset folder.
            ids: Ids to use. Exclusive with `split`. Neither: every image in ``root/images``.
            split: Read ids from ``root/splits/<split>.txt``.
            transform: Joint transform ``(image (3, H, W) float, mask (H, W) int64) -> same``.

        Raises:
            ValueError: Both `ids` and `split` given, or an empty id list.
            FileNotFoundError: Missing folder, split file, image or mask (the message names it).
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

        classes_file = self.root / "classes.yaml"
        info = _load_classes(classes_file) if classes_file.is_file() else {}
        self.ignore_index: int = int(info.get("ignore_index", DEFAULT_IGNORE_INDEX))
        names = info.get("classes", info.get("names"))
        if names is None:
            names = [f"class_{k}" for k in range(self._infer_num_classes(mask_dir))]
            logger.info("%s has no classes.yaml; inferred %d classes from the masks", self.root, len(names))
        self.class_names: list[str] = list(names)
        self.num_classes: int = len(self.class_names)
        palette = info.get("palette")
        self.palette: list[tuple[int, ...]] | None = (
            [tuple(int(v) for v in c) for c in palette] if palette is not None else None
        )

    def _find_image(self, sample_id: str) -> Path:
        for ext in IMAGE_EXTENSIONS:
            for candidate in (
                self.root / "images" / f"{sample_id}{ext}",
                self.root / "images" / f"{sample_id}{ext.upper()}",
            ):
                if candidate.is_file():
                    return candidate
        raise FileNotFoundError(
            f"no image for id {sample_id!r} in {self.root / 'images'} (tried extensions {list(IMAGE_EXTENSIONS)})"
        )

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
        img = _open_image(path)
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"mask {path} has mode {img.mode!r}; masks must be single-channel index images (mode 'L' or 'P')"
            )
        return np.asarray(img)  # (H, W); palette images give their indices

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, index: int) -> Tensor:
        """The untransformed mask of sample ``index``, (H, W) int64, without decoding the image."""
        return torch.from_numpy(self._read_mask(self._masks[index]).astype(np.int64))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Returns ``(image (3, H, W) float32 in [0, 1], mask (H, W) int64)``, transformed if set."""
        image_path, mask_path = self._images[index], self._masks[index]
        image = np.asarray(_open_image(image_path, "RGB"))  # (H, W, 3) uint8
        mask = self._read_mask(mask_path)  # (H, W)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) "
                f"but mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}"
            )
        image_t = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        mask_t = torch.from_numpy(mask.astype(np.int64))  # (H, W)
        if self.transform is not None:
            image_t, mask_t = self.transform(image_t, mask_t)
        return image_t, mask_t

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, num_classes={self.num_classes})"
        )

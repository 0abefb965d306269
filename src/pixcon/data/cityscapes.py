"""Cityscapes fine annotations, mapped to the 19 evaluation classes (train ids).

Layout (the ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` archives, unpacked into `root`)::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The id of a sample is ``<city>/<city>_<seq>_<frame>`` and the splits are the folders under
``leftImg8bit``. Masks are read from the ``*_gtFine_labelIds.png`` files and mapped with the official
labelId -> trainId table of cityscapesScripts (``helpers/labels.py``); every label that is not one of
the 19 evaluation classes (and the license plate, id -1) becomes 255 and is ignored. The public test
annotations are placeholders, so the "test" split has no usable ground truth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pixcon.data.base import (
    DEFAULT_IGNORE_INDEX,
    PairTransform,
    Sample,
    Scan,
    check_ids,
    check_same_size,
    check_unique_ids,
    dedupe_samples,
    read_index_mask,
    to_tensors,
)
from pixcon.data.images import check_value_range, read_rgb
from pixcon.data.paths import require_dir

logger = logging.getLogger(__name__)

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE: list[tuple[int, int, int]] = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]
# labelId -> trainId for the 19 evaluation classes (cityscapesScripts helpers/labels.py); all others -> 255.
LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
_LUT = np.full(256, DEFAULT_IGNORE_INDEX, dtype=np.int64)
for _label, _train in LABEL_TO_TRAIN_ID.items():
    _LUT[_label] = _train

IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"


def read_cityscapes_mask(path: Path) -> np.ndarray:
    """Reads a ``*_gtFine_labelIds.png`` as (H, W) int64 train ids (255 = ignore)."""
    label_ids = read_index_mask(path)  # (H, W)
    if label_ids.dtype != np.uint8 and label_ids.max(initial=0) > 255:
        raise ValueError(f"mask {path} has label ids above 255; expected a *_gtFine_labelIds.png")
    return _LUT[label_ids.astype(np.int64)]  # (H, W)


class _Layout:
    def __init__(self, root: str | Path) -> None:
        self.root = require_dir(root, "Cityscapes folder")
        self.images = require_dir(self.root / "leftImg8bit", "Cityscapes image folder")
        self.masks = self.root / "gtFine"

    def split_names(self) -> list[str]:
        return sorted(p.name for p in self.images.iterdir() if p.is_dir())

    def split_ids(self, split: str) -> list[str]:
        folder = self.images / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Cityscapes split folder {folder} not found; available: {self.split_names()}"
            )
        return sorted(
            f"{p.parent.name}/{p.name[: -len(IMAGE_SUFFIX)]}" for p in folder.glob(f"*/*{IMAGE_SUFFIX}")
        )

    def image_path(self, split: str, sample_id: str) -> Path:
        return self.images / split / f"{sample_id}{IMAGE_SUFFIX}"

    def mask_path(self, split: str, sample_id: str) -> Path:
        return self.masks / split / f"{sample_id}{MASK_SUFFIX}"

    def find_split(self, sample_id: str) -> str | None:
        for split in self.split_names():
            if self.image_path(split, sample_id).is_file():
                return split
        return None


class Cityscapes(Dataset[tuple[Tensor, Tensor]]):
    """Cityscapes gtFine with the 19 train ids (see the module docstring for the layout).

    Attributes:
        root: The dataset folder (holding ``leftImg8bit`` and ``gtFine``).
        ids: ``<city>/<city>_<seq>_<frame>``.
        class_names, num_classes, ignore_index, palette, in_channels: See
            :class:`~pixcon.data.base.SegmentationDataset` (19 classes, 255, the official colours, 3).
    """

    in_channels: int = 3

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        ids: Sequence[str] | None = None,
        transform: PairTransform | None = None,
        value_range: Sequence[float] | None = None,
    ) -> None:
        """Indexes the images; every one must have its ``*_gtFine_labelIds.png``.

        Args:
            root: Folder holding ``leftImg8bit`` and ``gtFine``.
            split: A folder under ``leftImg8bit`` ("train", "val", "test"). Exclusive with `ids`.
                Neither: every split.
            ids: Explicit ids, looked up in every split folder.
            transform: Joint transform ``(image (3, H, W), mask (H, W)) -> same``.
            value_range: ``[lo, hi]`` of images deeper than 8 bits (see :mod:`pixcon.data.images`).

        Raises:
            ValueError: Both `split` and `ids`, no ids, or a repeated id.
            FileNotFoundError: Missing folder, image or mask (the message names it).
        """
        if ids is not None and split is not None:
            raise ValueError("pass either ids or split, not both")
        layout = _Layout(root)
        self.root = layout.root
        self.transform = transform
        self.value_range = check_value_range(value_range) if value_range is not None else None
        self.class_names: list[str] = list(CITYSCAPES_CLASSES)
        self.num_classes: int = len(self.class_names)
        self.ignore_index: int = DEFAULT_IGNORE_INDEX
        self.palette: list[tuple[int, ...]] | None = list(CITYSCAPES_PALETTE)
        pairs: list[tuple[str, str]] = []  # (split, id)
        if ids is not None:
            check_unique_ids(list(ids), "ids")
            for i in check_ids(ids, "ids"):
                found = layout.find_split(i)
                if found is None:
                    raise FileNotFoundError(
                        f"no image {i}{IMAGE_SUFFIX} in any split folder of {layout.images}"
                    )
                pairs.append((found, i))
        else:
            for s in [split] if split is not None else layout.split_names():
                pairs += [(s, i) for i in layout.split_ids(s)]
        self.ids: list[str] = [i for _, i in pairs]
        if not self.ids:
            raise ValueError(f"no samples in {self.root}" + (f" for split {split!r}" if split else ""))
        self._images = [layout.image_path(s, i) for s, i in pairs]
        self._masks = [layout.mask_path(s, i) for s, i in pairs]
        missing = [p for p in self._masks if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"mask {missing[0]} not found ({len(missing)} of {len(self._masks)} missing)"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, index: int) -> Tensor:
        """The untransformed train-id mask of sample ``index``, (H, W) int64, without decoding the image."""
        return torch.from_numpy(read_cityscapes_mask(self._masks[index]))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Returns ``(image (3, H, W) float32, mask (H, W) int64 train ids)``, transformed if set.

        8-bit images are in [0, 1]; deeper ones are scaled by ``value_range``, not clipped.
        """
        image_path, mask_path = self._images[index], self._masks[index]
        image = read_rgb(image_path)  # (H, W, 3) in the file's depth
        mask = read_cityscapes_mask(mask_path)  # (H, W)
        check_same_size(image.shape, mask.shape, image_path, mask_path)
        image_t, mask_t = to_tensors(image, mask, self.value_range, image_path)
        if self.transform is not None:
            image_t, mask_t = self.transform(image_t, mask_t)
        return image_t, mask_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)})"


def cityscapes_split_ids(root: str | Path, split: str) -> list[str]:
    """The ids of the images in ``leftImg8bit/<split>``."""
    return _Layout(root).split_ids(split)


def scan_cityscapes(
    root: str | Path, splits: Sequence[str] | None = None, ids: Sequence[str] | None = None
) -> Scan:
    """Indexes a Cityscapes folder for :func:`pixcon.data.registry.check_dataset`, collecting problems.

    Images without a labelIds mask and labelIds masks without an image are reported for every
    checked split (all split folders when neither `splits` nor `ids` is given).

    Raises:
        FileNotFoundError: ``root/leftImg8bit`` does not exist.
    """
    layout = _Layout(root)
    errors: list[str] = []
    samples: list[Sample] = []
    if ids is not None and splits is not None:
        raise ValueError("pass either ids or splits, not both")
    if ids is not None:
        for i in ids:
            split = layout.find_split(i)
            if split is None:
                errors.append(f"ids: id {i!r} has no image {i}{IMAGE_SUFFIX} in any split of {layout.images}")
                continue
            mask = layout.mask_path(split, i)
            if not mask.is_file():
                errors.append(f"image {layout.image_path(split, i)} has no mask {mask}")
            samples.append(Sample(i, layout.image_path(split, i), mask if mask.is_file() else None))
    else:
        if splits is not None:
            names = list(splits)
        else:  # every split folder of either tree, so masks of a split without images are found too
            mask_splits = (
                {p.name for p in layout.masks.iterdir() if p.is_dir()} if layout.masks.is_dir() else set()
            )
            names = sorted(set(layout.split_names()) | mask_splits)
        for split in names:
            has_images = (layout.images / split).is_dir()
            if not has_images and splits is not None:
                errors.append(f"Cityscapes split folder {layout.images / split} not found")
            image_ids = set(layout.split_ids(split)) if has_images else set()
            mask_ids = {
                f"{p.parent.name}/{p.name[: -len(MASK_SUFFIX)]}"
                for p in (layout.masks / split).glob(f"*/*{MASK_SUFFIX}")
            }
            for i in sorted(image_ids - mask_ids):
                errors.append(f"image {layout.image_path(split, i)} has no mask {layout.mask_path(split, i)}")
            for i in sorted(mask_ids - image_ids):
                errors.append(f"mask {layout.mask_path(split, i)} has no image {layout.image_path(split, i)}")
            for i in sorted(image_ids | mask_ids):
                image, mask = layout.image_path(split, i), layout.mask_path(split, i)
                samples.append(Sample(i, image if i in image_ids else None, mask if i in mask_ids else None))
    return Scan(
        samples=dedupe_samples(samples),
        class_names=list(CITYSCAPES_CLASSES),
        ignore_index=DEFAULT_IGNORE_INDEX,
        read_image=read_rgb,
        read_mask=read_cityscapes_mask,
        errors=errors,
    )

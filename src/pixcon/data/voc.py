"""PASCAL VOC 2012 semantic segmentation, optionally with the SBD "trainaug" set.

Layout (`root` may be ``.../VOCdevkit/VOC2012``, ``.../VOCdevkit`` or the folder holding ``VOCdevkit``)::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png             palette PNGs; the indices are the class ids, 255 = boundary
    VOC2012/ImageSets/Segmentation/train.txt       1,464 ids
    VOC2012/ImageSets/Segmentation/val.txt         1,449 ids
    VOC2012/ImageSets/Segmentation/trainval.txt
    VOC2012/SegmentationClassAug/<id>.png          optional (SBD, Hariharan et al. 2011): index PNGs

Splits are the ImageSets files, plus "trainaug": every id with a ``SegmentationClassAug`` mask minus
the VOC val ids (10,582 images with the usual SegmentationClassAug release). With ``sbd=True`` the
split "train" is read as "trainaug", and ids outside VOC val take their mask from
``SegmentationClassAug``; val ids always use ``SegmentationClass``.

21 classes (background + 20 objects) with the standard VOC colormap; 255 is ignored.
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
from pixcon.data.folder import read_ids
from pixcon.data.images import check_value_range, read_rgb

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
TRAINAUG = "trainaug"


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC devkit colormap: the bits of the index, interleaved into r, g, b from the top bit down."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


VOC_PALETTE: list[tuple[int, int, int]] = voc_colormap(len(VOC_CLASSES))


def find_voc_root(root: str | Path) -> Path:
    """The VOC2012 folder: `root` itself, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``.

    Raises:
        FileNotFoundError: None of them holds ``JPEGImages`` (the message lists the candidates).
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"VOC folder {root} is a file, not a folder")
    candidates = [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
    for c in candidates:
        if (c / "JPEGImages").is_dir():
            return c
    raise FileNotFoundError(
        f"no VOC2012 folder (with JPEGImages/) found; tried {[str(c) for c in candidates]}"
    )


class _Layout:
    """Paths of one VOC2012 folder and the split logic shared by the reader and the checker."""

    def __init__(self, root: str | Path, sbd: bool) -> None:
        self.root = find_voc_root(root)
        self.sbd = sbd
        self.images = self.root / "JPEGImages"
        self.masks = self.root / "SegmentationClass"
        self.aug = self.root / "SegmentationClassAug"
        self.sets = self.root / "ImageSets" / "Segmentation"
        self._val: set[str] | None = None

    def val_ids(self) -> set[str]:
        if self._val is None:
            self._val = set(read_ids(self.sets / "val.txt"))
        return self._val

    def split_names(self) -> list[str]:
        names = sorted(p.stem for p in self.sets.glob("*.txt")) if self.sets.is_dir() else []
        if self.aug.is_dir() and TRAINAUG not in names:
            names.append(TRAINAUG)
        return names

    def split_ids(self, split: str) -> list[str]:
        if split == "train" and self.sbd:
            logger.info("voc with sbd=True: split 'train' is read as %r", TRAINAUG)
            split = TRAINAUG
        if split == TRAINAUG:
            if not self.aug.is_dir():
                raise FileNotFoundError(
                    f"split {TRAINAUG!r} needs SBD's augmented masks in {self.aug} (not found)"
                )
            val = self.val_ids()
            return sorted(p.stem for p in self.aug.glob("*.png") if p.stem not in val)
        path = self.sets / f"{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"VOC split file {path} not found; available splits: {self.split_names()}"
            )
        return check_ids(read_ids(path), str(path))

    def uses_aug(self, split: str | None) -> bool:
        return self.sbd or split == TRAINAUG

    def mask_path(self, sample_id: str, use_aug: bool) -> Path:
        if use_aug and sample_id not in self.val_ids():
            aug = self.aug / f"{sample_id}.png"
            if aug.is_file():
                return aug
        return self.masks / f"{sample_id}.png"

    def image_path(self, sample_id: str) -> Path:
        return self.images / f"{sample_id}.jpg"


class VOCSegmentation(Dataset[tuple[Tensor, Tensor]]):
    """PASCAL VOC 2012 segmentation (see the module docstring for the layout and splits).

    Attributes:
        root: The VOC2012 folder.
        ids: Image ids, e.g. ``2007_000032``.
        class_names, num_classes, ignore_index, palette, in_channels: See
            :class:`~pixcon.data.base.SegmentationDataset` (21 classes, 255, VOC colormap, 3).
    """

    in_channels: int = 3

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        ids: Sequence[str] | None = None,
        sbd: bool = False,
        transform: PairTransform | None = None,
        value_range: Sequence[float] | None = None,
    ) -> None:
        """Indexes the split; every id must have an image and a mask.

        Args:
            root: ``VOCdevkit/VOC2012``, ``VOCdevkit`` or its parent.
            split: "train", "val", "trainval" (ImageSets files) or "trainaug". Exclusive with `ids`.
                Neither: every id of every split.
            ids: Explicit ids.
            sbd: Use SBD's ``SegmentationClassAug`` masks; "train" means "trainaug".
            transform: Joint transform ``(image (3, H, W), mask (H, W)) -> same``.
            value_range: ``[lo, hi]`` of images deeper than 8 bits (see :mod:`pixcon.data.images`);
                VOC's JPEGs are 8-bit, so it is unused with the official data.

        Raises:
            ValueError: Both `split` and `ids`, no ids, or a repeated id.
            FileNotFoundError: Missing VOC folder, split file, image or mask (the message names it).
        """
        if ids is not None and split is not None:
            raise ValueError("pass either ids or split, not both")
        self._layout = _Layout(root, sbd)
        self.root = self._layout.root
        self.transform = transform
        self.value_range = check_value_range(value_range) if value_range is not None else None
        self.class_names: list[str] = list(VOC_CLASSES)
        self.num_classes: int = len(self.class_names)
        self.ignore_index: int = DEFAULT_IGNORE_INDEX
        self.palette: list[tuple[int, ...]] | None = list(VOC_PALETTE)
        if ids is not None:
            self.ids = check_ids(ids, "ids")
            check_unique_ids(self.ids, "ids")
        elif split is not None:
            self.ids = self._layout.split_ids(split)
        else:
            names = [s for s in self._layout.split_names() if s != TRAINAUG or sbd]
            self.ids = sorted({i for s in names for i in self._layout.split_ids(s)})
        if not self.ids:
            raise ValueError(f"no samples in {self.root}" + (f" for split {split!r}" if split else ""))
        use_aug = self._layout.uses_aug(split)
        self._images = [self._layout.image_path(i) for i in self.ids]
        self._masks = [self._layout.mask_path(i, use_aug) for i in self.ids]
        for kind, paths in (("image", self._images), ("mask", self._masks)):
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{kind} {missing[0]} not found ({len(missing)} {kind}s of {len(paths)} missing)"
                )

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, index: int) -> Tensor:
        """The untransformed mask of sample ``index``, (H, W) int64, without decoding the image."""
        return torch.from_numpy(read_index_mask(self._masks[index]).astype(np.int64))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Returns ``(image (3, H, W) float32, mask (H, W) int64)``, transformed if set.

        8-bit images are in [0, 1]; deeper ones are scaled by ``value_range``, not clipped.
        """
        image_path, mask_path = self._images[index], self._masks[index]
        image = read_rgb(image_path)  # (H, W, 3) in the file's depth
        mask = read_index_mask(mask_path)  # (H, W)
        check_same_size(image.shape, mask.shape, image_path, mask_path)
        image_t, mask_t = to_tensors(image, mask, self.value_range, image_path)
        if self.transform is not None:
            image_t, mask_t = self.transform(image_t, mask_t)
        return image_t, mask_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)})"


def voc_split_ids(root: str | Path, split: str, sbd: bool = False) -> list[str]:
    """The ids of one VOC split (see the module docstring)."""
    return _Layout(root, sbd).split_ids(split)


def scan_voc(
    root: str | Path,
    splits: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    sbd: bool = False,
) -> Scan:
    """Indexes a VOC folder for :func:`pixcon.data.registry.check_dataset`, collecting problems.

    With neither `splits` nor `ids`, every split (ImageSets files, and "trainaug" with `sbd`) is
    checked and masks without images are reported (JPEGImages holds many images without masks, so
    those are not problems).

    Raises:
        FileNotFoundError: No VOC2012 folder under `root`.
    """
    layout = _Layout(root, sbd)
    errors: list[str] = []
    samples: list[Sample] = []

    def listed(source: str, wanted: Sequence[str], use_aug: bool) -> None:
        for i in wanted:
            image, mask = layout.image_path(i), layout.mask_path(i, use_aug)
            has_image, has_mask = image.is_file(), mask.is_file()
            if not has_image:
                errors.append(f"{source}: id {i!r} has no image {image}")
            if not has_mask:
                errors.append(f"{source}: id {i!r} has no mask {mask}")
            samples.append(Sample(i, image if has_image else None, mask if has_mask else None))

    if ids is not None and splits is not None:
        raise ValueError("pass either ids or splits, not both")
    if ids is not None:
        listed("ids", list(ids), sbd)
    else:
        names = (
            list(splits) if splits is not None else [s for s in layout.split_names() if s != TRAINAUG or sbd]
        )
        for split in names:
            try:
                wanted = layout.split_ids(split)
            except (FileNotFoundError, ValueError) as err:
                errors.append(str(err))
                continue
            name = TRAINAUG if split == TRAINAUG or (split == "train" and sbd) else split
            source = str(layout.sets / f"{name}.txt") if name != TRAINAUG else f"split {TRAINAUG!r}"
            listed(source, wanted, layout.uses_aug(split))
        if splits is None:
            images = {p.stem for p in layout.images.glob("*.jpg")}
            for folder in [layout.masks] + ([layout.aug] if sbd and layout.aug.is_dir() else []):
                for p in sorted(folder.glob("*.png")):
                    if p.stem not in images:
                        errors.append(f"mask {p} has no image {layout.image_path(p.stem)}")
    return Scan(
        samples=dedupe_samples(samples),
        class_names=list(VOC_CLASSES),
        ignore_index=DEFAULT_IGNORE_INDEX,
        read_image=read_rgb,
        read_mask=read_index_mask,
        errors=errors,
    )

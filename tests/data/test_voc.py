"""Tests for the PASCAL VOC 2012 reader (with and without SBD)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataset_layouts import VOCFixture, voc_mask
from PIL import Image

from pixcon.data.voc import VOC_CLASSES, VOC_PALETTE, VOCSegmentation, voc_colormap, voc_split_ids


def test_classes_and_colormap() -> None:
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[-1] == "tvmonitor"
    assert VOC_PALETTE[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert VOC_PALETTE[15] == (192, 128, 128)  # person
    assert voc_colormap()[255] == (224, 224, 192)  # the boundary colour


def test_reads_palette_masks_as_class_ids(voc: VOCFixture) -> None:
    ds = VOCSegmentation(voc.root, split="train")
    assert ds.ids == voc.train and len(ds) == 3
    assert ds.num_classes == 21 and ds.ignore_index == 255 and ds.in_channels == 3
    assert ds.palette is not None and ds.palette[1] == (128, 0, 0)
    image, mask = ds[1]
    assert image.shape == (3, 40, 56) and image.dtype == torch.float32
    np.testing.assert_array_equal(mask.numpy(), voc_mask(1))  # indices, not colours
    assert set(mask.unique().tolist()) == {0, 2, 255}
    with Image.open(voc.voc2012 / "JPEGImages" / f"{voc.train[1]}.jpg") as img:
        expected = np.asarray(img.convert("RGB"))
    torch.testing.assert_close(image, torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(ds.mask(1), mask)


@pytest.mark.parametrize("where", ["VOCdevkit/VOC2012", "VOCdevkit", "."])
def test_root_may_be_voc2012_devkit_or_parent(voc: VOCFixture, where: str) -> None:
    root = {"VOCdevkit/VOC2012": voc.voc2012, "VOCdevkit": voc.root, ".": voc.root.parent}[where]
    assert VOCSegmentation(root, split="val").ids == voc.val


def test_splits_and_ids(voc: VOCFixture) -> None:
    assert voc_split_ids(voc.root, "trainval") == voc.train + voc.val
    assert VOCSegmentation(voc.root, ids=[voc.val[1]]).ids == [voc.val[1]]
    assert VOCSegmentation(voc.root).ids == sorted(voc.train + voc.val)  # neither: every split
    with pytest.raises(FileNotFoundError, match=r"Segmentation/test\.txt.*available"):
        VOCSegmentation(voc.root, split="test")
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/nope\.jpg"):
        VOCSegmentation(voc.root, ids=["nope"])
    with pytest.raises(FileNotFoundError, match="no VOC2012 folder"):
        VOCSegmentation(voc.root / "JPEGImages", split="train")


def test_trainaug_is_sbd_minus_val(voc: VOCFixture) -> None:
    expected = sorted(voc.train + voc.aug_only)  # val[0] has an SBD mask but is a VOC val id
    assert voc_split_ids(voc.root, "trainaug") == expected
    ds = VOCSegmentation(voc.root, split="trainaug")
    assert ds.ids == expected
    k = [*voc.train, *voc.val, *voc.aug_only].index(ds.ids[0])
    np.testing.assert_array_equal(
        ds.mask(0).numpy(), np.where(voc_mask(k) == 255, 255, (voc_mask(k) + 1) % 21)
    )
    # sbd=True: "train" means trainaug, val keeps the VOC masks.
    assert VOCSegmentation(voc.root, split="train", sbd=True).ids == expected
    val = VOCSegmentation(voc.root, split="val", sbd=True)
    np.testing.assert_array_equal(val.mask(0).numpy(), voc_mask(3))


def test_trainaug_needs_sbd_masks(voc: VOCFixture) -> None:
    for p in (voc.voc2012 / "SegmentationClassAug").iterdir():
        p.unlink()
    (voc.voc2012 / "SegmentationClassAug").rmdir()
    with pytest.raises(FileNotFoundError, match="SegmentationClassAug"):
        VOCSegmentation(voc.root, split="trainaug")

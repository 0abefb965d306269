"""Tests for the Cityscapes reader: labelId -> trainId mapping, ids and splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataset_layouts import (
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_TRAIN_IDS,
    CityscapesFixture,
    cityscapes_label_ids,
)

from pixcon.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    LABEL_TO_TRAIN_ID,
    Cityscapes,
    cityscapes_split_ids,
)


def test_official_table() -> None:
    assert len(CITYSCAPES_CLASSES) == 19 and len(CITYSCAPES_PALETTE) == 19
    assert sorted(LABEL_TO_TRAIN_ID.values()) == list(range(19))
    assert LABEL_TO_TRAIN_ID[7] == 0 and LABEL_TO_TRAIN_ID[26] == 13 and LABEL_TO_TRAIN_ID[33] == 18
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_CLASSES[13] == "car"


def test_masks_are_mapped_to_train_ids(cityscapes: CityscapesFixture) -> None:
    ds = Cityscapes(cityscapes.root, split="train")
    assert ds.ids == cityscapes.ids["train"] and ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.ids[0] == "aachen/aachen_000000_000019"
    image, mask = ds[0]
    assert image.shape == (3, 40, 56) and mask.dtype == torch.int64
    lut = dict(zip(CITYSCAPES_LABEL_IDS.tolist(), CITYSCAPES_TRAIN_IDS.tolist(), strict=True))
    expected = np.vectorize(lut.get)(cityscapes_label_ids(0))
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert set(mask.unique().tolist()) == {0, 1, 11, 13, 18, 255}  # parking, unlabeled, out of roi -> 255
    torch.testing.assert_close(ds.mask(0), mask)


def test_splits_and_explicit_ids(cityscapes: CityscapesFixture) -> None:
    assert cityscapes_split_ids(cityscapes.root, "val") == cityscapes.ids["val"]
    ds = Cityscapes(cityscapes.root, ids=["lindau/lindau_000000_000019", "aachen/aachen_000001_000019"])
    assert len(ds) == 2 and ds[0][1].shape == (40, 56)
    everything = Cityscapes(cityscapes.root)
    assert len(everything) == 6
    with pytest.raises(FileNotFoundError, match="no image ulm/ulm_000000_000000_leftImg8bit.png"):
        Cityscapes(cityscapes.root, ids=["ulm/ulm_000000_000000"])
    with pytest.raises(
        FileNotFoundError, match=r"leftImg8bit/train_extra.*available: \['test', 'train', 'val'\]"
    ):
        Cityscapes(cityscapes.root, split="train_extra")


def test_missing_mask_names_file(cityscapes: CityscapesFixture) -> None:
    (cityscapes.root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"lindau_000000_000019_gtFine_labelIds\.png"):
        Cityscapes(cityscapes.root, split="val")

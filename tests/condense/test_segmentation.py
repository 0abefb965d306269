"""Segmentation condensation (pixcon's extension) on the tiny folder dataset: the pixel class losses,
the condensed folder dataset, resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pixcon.condense.common import MatchingConfig
from pixcon.condense.segmentation import (
    SegmentationConfig,
    condense_segmentation,
    load_labeled_set,
    pixel_class_losses,
    shared_classes,
)
from pixcon.config import DataConfig
from pixcon.data.folder import SegmentationFolder, read_ids


def _cfg(method: str = "dcc", **matching: object) -> SegmentationConfig:
    base = dict(
        method=method, iterations=2, matching_steps=2, net_steps=1, warmup_iterations=1, warmup_steps=1
    )
    base.update(matching)
    return SegmentationConfig(
        num_images=2,
        batch_real=2,
        batch_train=2,
        arch="fpn",
        encoder="tu-resnet10t",
        matching=MatchingConfig(**base),
    )


def test_pixel_class_losses_match_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 4, (2, 3, 3), generator=g)
    masks[0, 0, 0] = 255
    classes = shared_classes(masks, torch.tensor([[[1, 2], [255, 3]]]), 255)
    assert classes == sorted({1, 2, 3} & set(masks.unique().tolist()))
    got = pixel_class_losses(logits, masks, classes, 255)
    for c, loss in zip(classes, got, strict=True):
        terms = [
            -F.log_softmax(logits[b, :, y, x], dim=0)[c].item()
            for b in range(2)
            for y in range(3)
            for x in range(3)
            if masks[b, y, x] == c
        ]
        assert loss.item() == pytest.approx(float(np.mean(terms)))


def test_load_labeled_set(tiny_dataset: Path, tmp_path: Path) -> None:
    data = DataConfig(root=str(tiny_dataset))
    labeled = load_labeled_set(data)
    assert labeled.images.shape == (8, 3, 32, 32) and labeled.masks.shape == (8, 32, 32)
    assert labeled.class_names == ["c0", "c1", "c2"] and labeled.ignore_index == 255
    split = tmp_path / "labeled.txt"
    split.write_text("train_001\ntrain_004\n")
    small = load_labeled_set(data, split, image_size=16)
    assert small.ids == ["train_001", "train_004"] and small.images.shape == (2, 3, 16, 16)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no labeled image"):
        load_labeled_set(data, empty)


def test_condensed_folder_dataset(tiny_dataset: Path, tmp_path: Path) -> None:
    data = DataConfig(root=str(tiny_dataset))
    labeled = load_labeled_set(data)
    out = tmp_path / "condensed"
    result = condense_segmentation(labeled, _cfg("dc", iterations=1), out, data=data, progress=False)
    assert result.images.shape == (2, 3, 32, 32) and 0 <= result.images.min() <= result.images.max() <= 1
    chosen = [labeled.ids.index(i) for i in result.source_ids]
    assert torch.equal(result.masks, labeled.masks[chosen])  # the masks are the real ones, fixed
    assert not torch.equal(result.images, labeled.images[chosen])  # the images were learned

    ds = SegmentationFolder(out, split="train")
    assert ds.ids == ["condensed_000", "condensed_001"] and ds.class_names == ["c0", "c1", "c2"]
    image, mask = ds[1]
    assert torch.equal(mask, result.masks[1])
    assert (image - result.images[1]).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
    assert read_ids(out / "splits" / "val.txt") == read_ids(tiny_dataset / "splits" / "val.txt")
    assert read_ids(out / "splits" / "test.txt") == read_ids(tiny_dataset / "splits" / "test.txt")
    val = SegmentationFolder(out, split="val")
    source_val = SegmentationFolder(tiny_dataset, split="val")
    assert torch.equal(val[0][1], source_val[0][1]) and torch.allclose(val[0][0], source_val[0][0])
    assert Image.open(out / "synthetic_grid.png").size == (2 * 34 + 2, 2 * 34 + 2)  # images over masks


def test_segmentation_resume_equals_uninterrupted(tiny_dataset: Path, tmp_path: Path) -> None:
    data = DataConfig(root=str(tiny_dataset))
    labeled = load_labeled_set(data)
    three = _cfg("dcc", iterations=2, dsa=True)
    whole = condense_segmentation(labeled, three, tmp_path / "whole", progress=False)
    one = SegmentationConfig(
        **{**three.__dict__, "matching": MatchingConfig(**{**three.matching.__dict__, "iterations": 1})}
    )
    condense_segmentation(labeled, one, tmp_path / "cut", progress=False)
    resumed = condense_segmentation(labeled, three, tmp_path / "cut", resume=True, progress=False)
    assert torch.equal(resumed.images, whole.images)
    with pytest.raises(ValueError, match="num_images: checkpoint 2, now 3"):
        other = SegmentationConfig(**{**three.__dict__, "num_images": 3})
        condense_segmentation(labeled, other, tmp_path / "cut", resume=True, progress=False)


def test_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    labeled = load_labeled_set(DataConfig(root=str(tiny_dataset)))
    with pytest.raises(ValueError, match="num_images=9 but the labeled set has only 8"):
        condense_segmentation(labeled, SegmentationConfig(num_images=9), tmp_path, progress=False)
    with pytest.raises(ValueError, match="num_images must be an integer >= 1"):
        SegmentationConfig(num_images=0)

"""Tests for colour-coded masks and explicit classes files in SegmentationFolder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixcon.data.base import UnknownColorError
from pixcon.data.folder import SegmentationFolder

PALETTE = [(0, 0, 0), (255, 0, 0), (0, 128, 255)]


def _color_folder(
    root: Path, n: int = 2, classes_name: str = "classes.yaml"
) -> tuple[Path, list[np.ndarray]]:
    """n RGB images with RGB masks (PALETTE colours, a white ignore row); returns the class ids."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = []
    for i in range(n):
        ids = rng.integers(0, 3, (12, 18))
        ids[0] = 255
        colors = np.array([*PALETTE, *[(255, 255, 255)] * 253], dtype=np.uint8)[np.where(ids == 255, 3, ids)]
        Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(colors).save(root / "masks" / f"c{i}.png")
        truth.append(ids)
    info = {
        "classes": ["bg", "red", "blue"],
        "palette": [list(c) for c in PALETTE],
        "ignore_colors": [[255, 255, 255]],
    }
    (root / classes_name).write_text(yaml.safe_dump(info))
    return root, truth


def test_color_masks_are_decoded_exactly(tmp_path: Path) -> None:
    root, truth = _color_folder(tmp_path / "d")
    ds = SegmentationFolder(root, mask_type="color")
    assert ds.class_names == ["bg", "red", "blue"] and ds.palette == PALETTE and ds.in_channels == 3
    for i in range(2):
        np.testing.assert_array_equal(ds[i][1].numpy(), truth[i])
        np.testing.assert_array_equal(ds.mask(i).numpy(), truth[i])


def test_unknown_color_names_file_color_and_pixel(tmp_path: Path) -> None:
    root, _ = _color_folder(tmp_path / "d")
    with Image.open(root / "masks" / "c1.png") as img:
        mask = np.array(img)
    mask[7, 11] = (9, 8, 7)
    Image.fromarray(mask).save(root / "masks" / "c1.png")
    ds = SegmentationFolder(root, mask_type="color")
    with pytest.raises(UnknownColorError, match=r"\(9, 8, 7\) at pixel \(y=7, x=11\) in .*masks/c1\.png"):
        ds.mask(1)


def test_explicit_classes_file(tmp_path: Path) -> None:
    root, truth = _color_folder(tmp_path / "d", classes_name="../my_classes.yml")
    assert not (root / "classes.yaml").exists()
    ds = SegmentationFolder(root, mask_type="color", classes_file=tmp_path / "my_classes.yml")
    np.testing.assert_array_equal(ds.mask(0).numpy(), truth[0])
    with pytest.raises(FileNotFoundError, match=r"classes file .*nope\.yaml not found"):
        SegmentationFolder(root, classes_file=tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="mask_type='color' needs a 'palette'"):
        SegmentationFolder(root, mask_type="color")


def test_color_masks_need_distinct_colours(tmp_path: Path) -> None:
    root, _ = _color_folder(tmp_path / "d")
    info = yaml.safe_load((root / "classes.yaml").read_text())
    info["palette"][2] = [255, 0, 0]
    (root / "classes.yaml").write_text(yaml.safe_dump(info))
    with pytest.raises(ValueError, match=r"distinct.*\(255, 0, 0\)"):
        SegmentationFolder(root, mask_type="color")

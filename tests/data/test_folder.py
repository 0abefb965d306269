"""Tests for SegmentationFolder and the id-list helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import Tensor

from pixcon.data.folder import SegmentationFolder, read_ids, write_ids


def _make_folder(root: Path, n: int = 3, size: tuple[int, int] = (20, 16), classes: bool = True) -> Path:
    """n RGB images (W, H) = size with masks of values 0..2 and a few ignore pixels."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        w, h = size
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        mask = rng.integers(0, 3, (h, w), dtype=np.uint8)
        mask[0, 0] = 255
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    if classes:
        info = {
            "classes": ["a", "b", "c", "d"],
            "palette": [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]],
            "ignore_index": 255,
        }
        (root / "classes.yaml").write_text(yaml.safe_dump(info))
    return root


def test_reads_images_and_masks(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    ds = SegmentationFolder(root)
    assert ds.ids == ["s0", "s1", "s2"] and len(ds) == 3
    assert ds.class_names == ["a", "b", "c", "d"] and ds.num_classes == 4 and ds.ignore_index == 255
    assert ds.palette is not None and ds.palette[3] == (3, 3, 3)
    image, mask = ds[1]
    assert image.dtype == torch.float32 and image.shape == (3, 16, 20)
    assert mask.dtype == torch.int64 and mask.shape == (16, 20)
    assert image.min() >= 0.0 and image.max() <= 1.0
    expected = np.array(Image.open(root / "images" / "s1.png"))
    torch.testing.assert_close(image, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    np.testing.assert_array_equal(mask.numpy(), np.asarray(Image.open(root / "masks" / "s1.png")))


def test_ids_and_split(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    write_ids(root / "splits" / "val.txt", ["s2", "s0"])
    assert SegmentationFolder(root, split="val").ids == ["s2", "s0"]
    assert SegmentationFolder(root, ids=["s1"]).ids == ["s1"]
    with pytest.raises(ValueError, match="either ids or split"):
        SegmentationFolder(root, ids=["s1"], split="val")
    with pytest.raises(FileNotFoundError, match=r"test\.txt"):
        SegmentationFolder(root, split="test")


def test_other_image_extensions_and_palette_masks(tmp_path: Path) -> None:
    root = _make_folder(tmp_path, n=1)
    image = Image.open(root / "images" / "s0.png")
    (root / "images" / "s0.png").unlink()
    image.save(root / "images" / "s0.jpg", quality=95)
    mask = Image.open(root / "masks" / "s0.png").convert("P")
    mask.save(root / "masks" / "s0.png")
    img, m = SegmentationFolder(root)[0]
    assert img.shape == (3, 16, 20)
    np.testing.assert_array_equal(m.numpy(), np.asarray(mask))


def test_missing_mask_names_file(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    (root / "masks" / "s1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks/s1\.png"):
        SegmentationFolder(root)


def test_missing_image_names_id(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="'ghost'"):
        SegmentationFolder(root, ids=["s0", "ghost"])


def test_size_mismatch_names_files(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    Image.fromarray(np.zeros((16, 19), dtype=np.uint8)).save(root / "masks" / "s2.png")
    ds = SegmentationFolder(root)
    ds[0]
    with pytest.raises(ValueError, match=r"size mismatch.*images/s2\.png.*masks/s2\.png"):
        ds[2]


def test_unreadable_image_names_file(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    (root / "images" / "s0.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match=r"images/s0\.png"):
        SegmentationFolder(root)[0]


def test_rgb_mask_is_rejected(tmp_path: Path) -> None:
    root = _make_folder(tmp_path, n=1)
    Image.fromarray(np.zeros((16, 20, 3), dtype=np.uint8)).save(root / "masks" / "s0.png")
    with pytest.raises(ValueError, match=r"masks/s0\.png.*single-channel"):
        SegmentationFolder(root)[0]


def test_without_classes_yaml_infers_classes(tmp_path: Path) -> None:
    ds = SegmentationFolder(_make_folder(tmp_path, classes=False))
    assert ds.num_classes == 3 and ds.class_names == ["class_0", "class_1", "class_2"]
    assert ds.ignore_index == 255 and ds.palette is None


def test_transform_is_applied_jointly(tmp_path: Path) -> None:
    calls: list[tuple[torch.Size, torch.Size]] = []

    def flip(image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        calls.append((image.shape, mask.shape))
        return image.flip(-1), mask.flip(-1)

    root = _make_folder(tmp_path)
    plain = SegmentationFolder(root)[0]
    flipped = SegmentationFolder(root, transform=flip)[0]
    assert calls == [((3, 16, 20), (16, 20))]
    torch.testing.assert_close(flipped[0], plain[0].flip(-1))
    torch.testing.assert_close(flipped[1], plain[1].flip(-1))


def test_ids_roundtrip(tmp_path: Path) -> None:
    path = write_ids(tmp_path / "sub" / "ids.txt", ["b", "a", "c_01"])
    assert path.read_text() == "b\na\nc_01\n"
    assert read_ids(path) == ["b", "a", "c_01"]
    path.write_text("x\n\n  y  \n")
    assert read_ids(path) == ["x", "y"]
    with pytest.raises(ValueError, match="whitespace"):
        write_ids(tmp_path / "bad.txt", ["has space"])
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        read_ids(tmp_path / "missing.txt")

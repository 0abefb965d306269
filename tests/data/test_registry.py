"""Tests for open_dataset / split_ids / check_dataset over every format."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from dataset_layouts import (
    TILE_H,
    TILE_W,
    CityscapesFixture,
    ISPRSFixture,
    VOCFixture,
    isprs_colors,
)
from PIL import Image

from pixcon.config import DataConfig
from pixcon.data.base import SegmentationDataset
from pixcon.data.cityscapes import Cityscapes
from pixcon.data.folder import SegmentationFolder
from pixcon.data.isprs import ISPRS_CLASSES, ISPRSPatches
from pixcon.data.registry import DatasetError, DatasetReport, check_dataset, open_dataset, split_ids
from pixcon.data.voc import VOCSegmentation


def _folder(root: Path, n: int = 8, size: tuple[int, int] = (20, 16)) -> Path:
    """n RGB PNG images s0.. with index masks (values 0..3, one ignore pixel) and a train split."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    w, h = size
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        mask = rng.integers(0, 4, (h, w), dtype=np.uint8)
        mask[0, 0] = 255
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    (root / "splits" / "train.txt").write_text("".join(f"s{i}\n" for i in range(n)))
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": ["a", "b", "c", "d"], "ignore_index": 255}))
    return root


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_open_dataset_and_split_ids_for_every_format(
    tmp_path: Path,
    voc: VOCFixture,
    cityscapes: CityscapesFixture,
    potsdam: ISPRSFixture,
    vaihingen: ISPRSFixture,
) -> None:
    cases: list[tuple[DataConfig, type, str, int, int]] = [
        (DataConfig(format="folder", root=str(_folder(tmp_path / "f"))), SegmentationFolder, "train", 8, 4),
        (DataConfig(format="voc", root=str(voc.root)), VOCSegmentation, "val", 2, 21),
        (DataConfig(format="voc", root=str(voc.root), sbd=True), VOCSegmentation, "train", 5, 21),
        (DataConfig(format="cityscapes", root=str(cityscapes.root)), Cityscapes, "val", 2, 19),
        (DataConfig(format="potsdam", root=str(potsdam.root), bands="rgbir", patch_size=32), ISPRSPatches, "train", 18, 6),
        (DataConfig(format="vaihingen", root=str(vaihingen.root), patch_size=64, patch_stride=32), ISPRSPatches, "test", 4, 6),
    ]  # fmt: skip
    for cfg, cls, split, n, num_classes in cases:
        ds = open_dataset(cfg, split=split)
        assert type(ds) is cls and isinstance(ds, SegmentationDataset)
        assert len(ds) == n and ds.num_classes == num_classes and ds.ignore_index == 255
        assert ds.ids == split_ids(cfg, split)
        assert all(not any(c.isspace() for c in i) for i in ds.ids)
        sub = open_dataset(cfg, ids=ds.ids[-1:])
        image, mask = sub[0]
        assert image.shape[0] == ds.in_channels and mask.shape == image.shape[1:]
        assert mask.dtype.is_floating_point is False and image.max() <= 1.0
    assert open_dataset(cases[4][0], split="test").in_channels == 4


@pytest.mark.parametrize("fmt", ["folder", "voc", "cityscapes", "potsdam", "vaihingen"])
def test_clean_datasets_pass(
    tmp_path: Path,
    fmt: str,
    voc: VOCFixture,
    cityscapes: CityscapesFixture,
    potsdam: ISPRSFixture,
    vaihingen: ISPRSFixture,
) -> None:
    roots = {
        "folder": _folder(tmp_path / "f"),
        "voc": voc.root,
        "cityscapes": cityscapes.root,
        "potsdam": potsdam.root,
        "vaihingen": vaihingen.root,
    }
    report = check_dataset(DataConfig(format=fmt, root=str(roots[fmt]), patch_size=32))  # type: ignore[arg-type]
    assert report.ok, report.format()
    report.raise_if_errors()
    assert report.num_images == {"folder": 8, "voc": 5, "cityscapes": 6, "potsdam": 3, "vaihingen": 3}[fmt]
    assert sum(report.class_pixels.values()) > 0
    assert (report.ignored_pixels > 0) == (fmt in ("folder", "voc", "cityscapes"))  # full ISPRS labels: none
    text = report.format()
    assert "errors: 0" in text and text.endswith("OK")
    if fmt in ("potsdam", "vaihingen"):
        assert report.height_range == (TILE_H, TILE_H) and report.width_range == (TILE_W, TILE_W)
        assert set(report.class_pixels) == set(ISPRS_CLASSES)


def test_folder_report_counts_and_histogram(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f", n=2, size=(5, 3))
    mask = np.array([[0, 0, 1, 1, 1], [2, 2, 2, 2, 2], [255, 255, 0, 0, 0]], dtype=np.uint8)
    for i in range(2):
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    report = check_dataset(DataConfig(format="folder", root=str(root)))
    assert report.class_pixels == {"a": 10, "b": 6, "c": 10, "d": 0} and report.ignored_pixels == 4
    assert report.height_range == (3, 3) and report.width_range == (5, 5)
    text = report.format()
    assert "2 images checked" in text and "size: H 3-3, W 5-5" in text
    assert re.search(r"a\s+10\s+38\.46%", text) and re.search(r"d\s+0\s+0\.00%", text)


def test_folder_without_classes_file_names_classes_by_value(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f", n=3)
    (root / "classes.yaml").unlink()
    report = check_dataset(DataConfig(format="folder", root=str(root)))
    assert report.ok and list(report.class_pixels) == ["class_0", "class_1", "class_2", "class_3"]
    assert report.ignored_pixels == 3


def test_every_folder_problem_is_reported_with_its_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f")
    (root / "masks" / "s1.png").unlink()  # image without mask
    Image.fromarray(np.zeros((16, 20), dtype=np.uint8)).save(
        root / "masks" / "orphan.png"
    )  # mask without image
    Image.fromarray(np.zeros((16, 19), dtype=np.uint8)).save(root / "masks" / "s2.png")  # size mismatch
    Image.fromarray(np.full((16, 20), 7, dtype=np.uint8)).save(root / "masks" / "s3.png")  # id out of range
    _truncate(root / "images" / "s4.png")  # truncated PNG
    noise = np.random.default_rng(1).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    (root / "images" / "s5.png").unlink()
    Image.fromarray(noise).save(root / "images" / "s5.jpg", quality=95)
    _truncate(root / "images" / "s5.jpg", keep=0.9)  # truncated JPEG: cut in the scan data
    (root / "masks" / "s6.png").write_bytes(b"this is not a png")  # unreadable
    (root / "splits" / "val.txt").write_text("s0\nghost\n")  # id without files

    report = check_dataset(DataConfig(format="folder", root=str(root)))
    assert not report.ok
    expected = [
        r"image .*images/s1\.png has no mask .*masks/s1\.png",
        r"mask .*masks/orphan\.png has no image",
        r"size mismatch: image .*images/s2\.png is 20x16 \(WxH\) but mask .*masks/s2\.png is 19x16",
        r"mask .*masks/s3\.png has class ids \[7\] outside 0\.\.3 .*\(320 pixels\)",
        r"cannot read image .*images/s4\.png: .*truncated",
        r"cannot read image .*images/s5\.jpg: .*(?i:truncated)",
        r"cannot read image .*masks/s6\.png",
        r"splits/val\.txt: id 'ghost' has no image and mask",
        r"splits/train\.txt: id 's1' has no mask",  # the split file refers to the image without mask
    ]
    for pattern in expected:
        assert sum(bool(re.search(pattern, e)) for e in report.errors) == 1, (pattern, report.errors)
    assert len(report.errors) == len(expected), report.errors
    text = report.format()
    assert f"errors: {len(expected)}" in text and "FAILED" in text
    assert all(f"  {e}" in text for e in report.errors)
    with pytest.raises(DatasetError, match=r"9 problems in the folder dataset .*\n  .*s1\.png"):
        report.raise_if_errors()


def test_split_and_id_selection(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f")
    (root / "masks" / "s1.png").unlink()
    (root / "splits" / "small.txt").write_text("s0\ns2\n")
    cfg = DataConfig(format="folder", root=str(root))
    small = check_dataset(cfg, splits=["small"])
    assert small.ok and small.num_images == 2
    assert not check_dataset(cfg, splits=["train"]).ok
    by_id = check_dataset(cfg, ids=["s1", "nope"])
    assert any("ids: id 's1' has no mask" in e for e in by_id.errors)
    assert any("ids: id 'nope' has no image" in e for e in by_id.errors)
    assert any(
        "split file" in e and "missing.txt" in e for e in check_dataset(cfg, splits=["missing"]).errors
    )


def test_unknown_colour_in_colour_masks(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    mask = np.zeros((6, 8, 3), dtype=np.uint8)
    mask[2:, 4:] = (255, 0, 0)
    mask[5, 1] = (1, 2, 3)
    Image.fromarray(mask).save(root / "masks" / "a.png")
    (root / "classes.yaml").write_text(
        yaml.safe_dump({"classes": ["bg", "red"], "palette": [[0, 0, 0], [255, 0, 0]]})
    )
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a\n")  # without a train split, data check fails too
    report = check_dataset(DataConfig(format="folder", root=str(root), mask_type="color"))
    assert len(report.errors) == 1
    assert re.search(r"unknown colour \(1, 2, 3\) at pixel \(y=5, x=1\) in .*masks/a\.png", report.errors[0])


def test_raise_caps_the_listing(tmp_path: Path) -> None:
    report = DatasetReport(dataset_format="folder", root="r", errors=[f"problem {k}" for k in range(27)])
    with pytest.raises(DatasetError) as info:
        report.raise_if_errors()
    lines = str(info.value).splitlines()
    assert lines[0] == "27 problems in the folder dataset at r:"
    assert lines[1:21] == [f"  problem {k}" for k in range(20)] and lines[21] == "  ... and 7 more"
    assert isinstance(info.value, ValueError)


def test_voc_problems(voc: VOCFixture) -> None:
    base = voc.voc2012
    (base / "SegmentationClass" / f"{voc.val[1]}.png").unlink()
    save = base / "SegmentationClass" / "2013_000001.png"
    save.write_bytes((base / "SegmentationClass" / f"{voc.val[0]}.png").read_bytes())
    (base / "ImageSets/Segmentation/train.txt").write_text(
        "".join(f"{i}\n" for i in [*voc.train, "2014_000001"])
    )
    report = check_dataset(DataConfig(format="voc", root=str(voc.root)))
    assert any(
        re.search(rf"val\.txt: id '{voc.val[1]}' has no mask .*{voc.val[1]}\.png", e) for e in report.errors
    )
    assert any(
        re.search(r"mask .*2013_000001\.png has no image .*2013_000001\.jpg", e) for e in report.errors
    )
    assert any(re.search(r"train\.txt: id '2014_000001' has no image", e) for e in report.errors)


def test_cityscapes_problems(cityscapes: CityscapesFixture) -> None:
    (cityscapes.root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png").unlink()
    (cityscapes.root / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png").unlink()
    report = check_dataset(
        DataConfig(format="cityscapes", root=str(cityscapes.root)), splits=["train", "val"]
    )
    assert len(report.errors) == 2, report.errors
    assert re.search(
        r"image .*aachen_000001_000019_leftImg8bit\.png has no mask .*_gtFine_labelIds\.png", report.errors[0]
    )
    assert re.search(r"mask .*lindau_000000_000019_gtFine_labelIds\.png has no image", report.errors[1])


def test_isprs_problems(potsdam: ISPRSFixture) -> None:
    root = potsdam.root
    _truncate(root / "2_Ortho_RGB/top_potsdam_2_11_RGB.tif")
    labels = isprs_colors(potsdam.classes["top_potsdam_2_13"])
    labels[9, 4] = (255, 0, 255)
    tifffile.imwrite(root / "5_Labels_all/top_potsdam_2_13_label.tif", labels, photometric="rgb")
    tifffile.imwrite(
        root / "2_Ortho_RGB/top_potsdam_3_10_RGB.tif", np.zeros((20, 30, 3), np.uint8), photometric="rgb"
    )
    tifffile.imwrite(
        root / "5_Labels_all/top_potsdam_3_10_label.tif", np.zeros((20, 30, 3), np.uint8), photometric="rgb"
    )
    tifffile.imwrite(
        root / "2_Ortho_RGB/top_potsdam_4_10_RGB.tif", np.zeros((70, 90, 3), np.uint8), photometric="rgb"
    )
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("2_10\n7_7\n")
    report = check_dataset(DataConfig(format="potsdam", root=str(root), patch_size=32))
    expected = [
        r"cannot read TIFF .*top_potsdam_2_11_RGB\.tif",
        r"unknown colour \(255, 0, 255\) at pixel \(y=9, x=4\) in .*top_potsdam_2_13_label\.tif",
        r"tile top_potsdam_3_10 \(.*top_potsdam_3_10_RGB\.tif\) is 30x20 \(WxH\), smaller than the patch size 32x32",
        r"image .*top_potsdam_4_10_RGB\.tif \(tile top_potsdam_4_10\) has no label",
        r"splits/val\.txt: tile top_potsdam_7_7 has no RGB image",
    ]
    for pattern in expected:
        assert sum(bool(re.search(pattern, e)) for e in report.errors) == 1, (pattern, report.errors)
    assert len(report.errors) == len(expected), report.errors
    assert report.unit == "tile" and "tiles checked" in report.format()
    eroded = check_dataset(
        DataConfig(format="potsdam", root=str(root), patch_size=32, eroded_labels=True), ids=["2_10"]
    )
    assert eroded.ok and eroded.num_images == 1 and eroded.ignored_pixels > 0

"""Ids, split files, class inventories, ignored-only crops and paths: errors instead of silent damage."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from dataset_layouts import write_potsdam, write_voc
from PIL import Image

from pixcon.cli import main
from pixcon.config import DataConfig
from pixcon.data.folder import SegmentationFolder, load_class_info, read_ids, scan_folder
from pixcon.data.inventory import count_ignored_only_crops, crop_box, find_stray_classes
from pixcon.data.isprs import ISPRSPatches
from pixcon.data.pseudo import PseudoMasks
from pixcon.data.registry import check_dataset, split_ids
from pixcon.data.splits import nested_label_splits
from pixcon.data.transforms import train_transform
from pixcon.data.voc import VOCSegmentation


def _folder(root: Path, n: int = 6, masks: dict[str, np.ndarray] | None = None, classes: bool = True) -> Path:
    """n 8-bit images s0.. (16x16) with masks of classes 0..2, splits train (s0..s3), val (s4), test (s5)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        mask = (masks or {}).get(f"s{i}", np.arange(16 * 16, dtype=np.uint8).reshape(16, 16) % 3)
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"s{i}.png")
    (root / "splits" / "train.txt").write_text("".join(f"s{i}\n" for i in range(n - 2)))
    (root / "splits" / "val.txt").write_text(f"s{n - 2}\n")
    (root / "splits" / "test.txt").write_text(f"s{n - 1}\n")
    if classes:
        (root / "classes.yaml").write_text(yaml.safe_dump({"classes": ["a", "b", "c"]}))
    return root


def _errors(report_errors: list[str], pattern: str) -> int:
    return sum(bool(re.search(pattern, e)) for e in report_errors)


# ---------------------------------------------------------------------------------------------- ids


def test_repeated_ids_in_a_split_file_are_an_error_naming_file_and_id(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    (root / "splits" / "train.txt").write_text("s0\ns1\ns0\ns2\ns0\n")
    with pytest.raises(ValueError, match=r"splits/train\.txt: ids must be unique; 's0' is listed 3 times"):
        read_ids(root / "splits" / "train.txt")
    with pytest.raises(ValueError, match=r"train\.txt.*'s0' is listed 3 times"):
        SegmentationFolder(root, split="train")
    with pytest.raises(ValueError, match=r"train\.txt.*'s0'"):
        split_ids(DataConfig(root=str(root)), "train")
    report = check_dataset(DataConfig(root=str(root)))  # reported once, not a traceback
    assert _errors(report.errors, r"train\.txt: ids must be unique; 's0' is listed 3 times") == 1
    assert _errors(check_dataset(DataConfig(root=str(root)), splits=["train"]).errors, r"'s0' is listed") == 1


def test_repeated_ids_in_a_labeled_split_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    labeled = tmp_path / "labeled.txt"
    labeled.write_text("s1\ns2\ns1\n")
    report = check_dataset(DataConfig(root=str(root), labeled_split=str(labeled)))
    assert report.errors == [f"{labeled}: ids must be unique; 's1' is listed 2 times"]


def test_pixcon_split_and_read_ids_share_one_uniqueness_check() -> None:
    with pytest.raises(ValueError, match=r"^ids: ids must be unique; 'a' is listed 2 times$"):
        nested_label_splits(["a", "b", "a"], [0.5], seed=0)
    with pytest.raises(
        ValueError, match=r"^ids: ids must be unique; 'b' is listed 2 times \(repeated ids: 2, e"
    ):
        nested_label_splits(["b", "b", "c", "c"], [0.5], seed=0)


def test_explicit_repeated_ids_are_refused_by_every_reader(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    with pytest.raises(ValueError, match=r"ids: ids must be unique; 's1'"):
        SegmentationFolder(root, ids=["s1", "s2", "s1"])
    voc = write_voc(tmp_path / "voc")
    with pytest.raises(ValueError, match=rf"'{voc.train[0]}' is listed 2"):
        VOCSegmentation(voc.root, ids=[voc.train[0], voc.train[0]])
    potsdam = write_potsdam(tmp_path / "potsdam")
    with pytest.raises(ValueError, match=r"'top_potsdam_2_10_0_0' is listed 2"):
        ISPRSPatches(potsdam.root, "potsdam", ids=["top_potsdam_2_10_0_0"] * 2, patch_size=32)
    (potsdam.root / "splits").mkdir()
    (potsdam.root / "splits" / "mine.txt").write_text("2_10\ntop_potsdam_2_10\n")  # one tile, two spellings
    with pytest.raises(ValueError, match=r"mine\.txt \(tile names\): .*'top_potsdam_2_10' is listed 2"):
        ISPRSPatches(potsdam.root, "potsdam", split="mine", patch_size=32)


def test_an_id_with_two_image_files_is_an_error_in_reader_and_check(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "images" / "s1.tif")
    both = r"id 's1' has 2 image files: .*images/s1\.png, .*images/s1\.tif"
    with pytest.raises(ValueError, match=both):
        SegmentationFolder(root, split="train")
    with pytest.raises(ValueError, match=both):
        SegmentationFolder(root)  # every image of the folder
    assert SegmentationFolder(root, ids=["s0", "s2"]).ids == ["s0", "s2"]  # the others still open
    for selection in ({}, {"splits": ["train"]}, {"ids": ["s1", "s2"]}):
        report = check_dataset(DataConfig(root=str(root)), **selection)  # type: ignore[arg-type]
        assert _errors(report.errors, both) == 1, (selection, report.errors)
    (root / "images" / "s1.tif").unlink()
    (root / "images" / "s1.JPG").write_bytes((root / "images" / "s1.png").read_bytes())  # any case
    with pytest.raises(ValueError, match=r"s1\.JPG"):
        SegmentationFolder(root, split="train")


def test_reader_and_check_resolve_the_same_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    # A mixed-case extension: the reader once tried ".tif"/".TIF" only while the check took any case.
    tif = root / "images" / "s2.Tif"
    Image.open(root / "images" / "s2.png").save(tif, format="TIFF")
    (root / "images" / "s2.png").unlink()
    assert SegmentationFolder(root, ids=["s2"])._images == [tif]
    assert [s.image for s in scan_folder(root, ids=["s2"]).samples] == [tif]
    assert check_dataset(DataConfig(root=str(root))).ok


# ----------------------------------------------------------------------------------------- splits


def test_clean_folder_passes_with_its_splits(tmp_path: Path) -> None:
    report = check_dataset(DataConfig(root=str(_folder(tmp_path / "d"))))
    assert report.ok and report.warnings == [], report.format()


def test_missing_splits_folder_or_train_split_fails_the_check(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    (root / "splits" / "train.txt").unlink()
    report = check_dataset(DataConfig(root=str(root)))
    assert report.errors == [
        f"data.train_split 'train': id list {root}/splits/train.txt not found; training needs it "
        "(write it, one id per line, or set data.train_split)"
    ]
    for name in ("val.txt", "test.txt"):
        (root / "splits" / name).unlink()
    (root / "splits").rmdir()
    report = check_dataset(DataConfig(root=str(root)))
    assert _errors(report.errors, r"data\.train_split 'train': .* has no splits/ folder") == 1
    assert _errors(report.warnings, r"data\.val_split 'val': .*training will run without validation") == 1
    assert _errors(report.warnings, r"data\.test_split 'test': .*`pixcon evaluate`") == 1
    assert not report.ok


def test_empty_split_files_fail_the_check(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    (root / "splits" / "train.txt").write_text("\n\n")
    (root / "splits" / "val.txt").write_text("")
    report = check_dataset(DataConfig(root=str(root)))
    assert _errors(report.errors, r"^data\.train_split 'train' is empty") == 1
    assert _errors(report.errors, r"^data\.val_split 'val' is empty") == 1


def test_identical_and_overlapping_splits(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    for name in ("val.txt", "test.txt"):
        (root / "splits" / name).write_text((root / "splits" / "train.txt").read_text())
    report = check_dataset(DataConfig(root=str(root)))
    assert (
        _errors(report.errors, r"data\.train_split 'train' and data\.val_split 'val' list the same 4 ids")
        == 1
    )
    assert _errors(report.errors, r"data\.train_split 'train' and data\.test_split 'test' list the same") == 1
    assert _errors(report.warnings, r"data\.val_split 'val' and data\.test_split 'test' list the same") == 1
    (root / "splits" / "val.txt").write_text("s4\ns1\n")
    (root / "splits" / "test.txt").write_text("s5\n")
    report = check_dataset(DataConfig(root=str(root)))
    assert report.ok
    assert report.warnings == ["data.train_split 'train' and data.val_split 'val' share 1 ids, e.g. ['s1']"]


def test_labeled_split_outside_the_train_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    labeled = tmp_path / "labeled.txt"
    labeled.write_text("s0\ns5\n")
    report = check_dataset(DataConfig(root=str(root), labeled_split=str(labeled)))
    assert report.errors == [
        f"data.labeled_split {labeled}: 1 ids are not in the 'train' split (data.train_split), e.g. ['s5']"
    ]
    labeled.write_text("")
    assert check_dataset(DataConfig(root=str(root), labeled_split=str(labeled))).errors == [
        f"data.labeled_split {labeled} is empty"
    ]
    labeled.write_text("s0\ns3\n")
    assert check_dataset(DataConfig(root=str(root), labeled_split=str(labeled))).ok


def test_split_checks_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path / "d")
    (root / "splits" / "train.txt").write_text("")
    assert main(["data", "check", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "data.train_split 'train' is empty" in out and out.rstrip().endswith("FAILED: 1 errors")


def test_isprs_val_is_the_test_split_by_default_a_warning(tmp_path: Path) -> None:
    fx = write_potsdam(tmp_path / "potsdam")
    report = check_dataset(DataConfig(format="potsdam", root=str(fx.root), patch_size=32))
    assert report.ok
    assert (
        _errors(report.warnings, r"data\.val_split 'val' and data\.test_split 'test' list the same 14 ids")
        == 1
    )


# ------------------------------------------------------------------------------ class inventories


def _inventory(values: dict[int, int]) -> np.ndarray:
    counts = np.zeros(max(values) + 1, dtype=np.int64)
    for v, n in values.items():
        counts[v] = n
    return counts


NINE = {c: 1000 for c in range(9)}  # classes 0..8, 9,000 pixels


@pytest.mark.parametrize(
    ("values", "strays"),
    [
        ({**NINE, 200: 5}, [200]),  # the stray 200 of a 9-class dataset: a 201-class head
        ({**NINE, 200: 1000}, []),  # 10 % of the pixels: a class with an odd id, not a stray
        ({**NINE, 200: 91}, []),  # 1.0 % of 9,091 pixels: at the share limit, kept
        ({**NINE, 200: 90}, [200]),  # 0.99 %: a stray
        ({**NINE, 18: 5}, [18]),  # 9 unused ids (9..17) and 9 used: just far enough
        ({**NINE, 17: 5}, []),  # 8 unused ids below 9 used: not far
        ({0: 500, 1: 500, 2: 500, 11: 5}, [11]),  # 8 unused ids: the minimum gap
        ({0: 500, 1: 500, 2: 500, 10: 5}, []),  # 7 unused ids
        ({**NINE, 150: 3, 200: 5}, [200, 150]),  # two strays, largest first
        ({**NINE, 20: 5, 200: 5}, [200, 20]),  # 11 unused ids below 20
        ({**NINE, 30: 1000, 200: 5}, [200]),  # 30 is a class (11 % of the pixels), 200 a stray above it
        ({0: 1000, 1: 1000, 250: 3}, [250]),
        ({7: 10}, []),  # a single id is never a stray
    ],
)
def test_find_stray_classes_rule(values: dict[int, int], strays: list[int]) -> None:
    assert find_stray_classes(_inventory(values)) == strays


def _stray_masks(stray_pixels: int, value: int = 200) -> dict[str, np.ndarray]:
    """Six 16x16 masks of classes 0..8 (every class present); s1 holds `stray_pixels` of `value`."""
    base = (np.arange(256).reshape(16, 16) // 29).astype(np.uint8)  # 0..8
    masks = {f"s{i}": base.copy() for i in range(6)}
    masks["s1"].reshape(-1)[:stray_pixels] = value
    return masks


def test_a_stray_mask_value_is_refused_without_a_classes_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", masks=_stray_masks(5), classes=False)
    with pytest.raises(
        ValueError,
        match=r"suspicious class inventory in .*masks: mask value\(s\) 200 \(5 pixels, first in .*masks/s1\.png\)"
        r".*0\.\.8.*201-class head.*Fix those masks.*declare the classes in .*classes\.yaml \(or data\.classes_file\)",
    ):
        SegmentationFolder(root, split="train")
    report = check_dataset(DataConfig(root=str(root)))
    assert _errors(report.errors, r"^mask value 200 \(5 pixels, .*first in .*s1\.png\).*201-class head") == 1
    assert not report.ok
    assert list(report.class_pixels) == [*(f"class_{c}" for c in range(9)), "class_200"]  # no 191 empty rows


def test_a_classes_file_settles_the_inventory(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", masks=_stray_masks(5), classes=False)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": [f"c{k}" for k in range(9)]}))
    assert SegmentationFolder(root, split="train").num_classes == 9
    report = check_dataset(DataConfig(root=str(root)))  # the stray is now a value outside the classes
    assert report.errors == [
        f"mask {root}/masks/s1.png has class ids [200] outside 0..8 and not the ignore index 255 (5 pixels)"
    ]


def test_a_large_region_of_an_odd_id_is_a_class(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", masks=_stray_masks(100), classes=False)  # 100 of 1,536 pixels: 6.5 %
    assert SegmentationFolder(root, split="train").num_classes == 201
    assert check_dataset(DataConfig(root=str(root))).ok


# --------------------------------------------------------------------------- ignored-only crops


def test_crop_estimate_matches_the_training_transform() -> None:
    mask = np.full((40, 40), 255, dtype=np.uint8)
    mask[:9, :9] = 1  # the only labelled pixels: a corner
    size, scale_min = 32, 0.1
    rng = np.random.default_rng(0)
    n = 3000
    estimate = sum(
        count_ignored_only_crops(mask, 255, size, scale_min, rng, samples=100) for _ in range(n // 100)
    )
    torch.manual_seed(0)
    transform = train_transform(size, scale=(scale_min, 1.0), hflip=False, color_jitter=0.0)
    image, target = torch.zeros(3, 40, 40), torch.from_numpy(mask.astype(np.int64))
    actual = sum(bool((transform(image, target)[1] == 255).all()) for _ in range(n))
    assert 0.3 < actual / n < 0.8  # a case where the estimate matters
    assert abs(estimate / n - actual / n) < 0.04


def test_crop_box_is_inside_the_image_and_keeps_the_area_fraction() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        top, left, h, w = crop_box(30, 50, 0.3, rng)
        assert top >= 0 and top + h <= 30 and left >= 0 and left + w <= 50
        assert 0.3 * 1500 * 0.85 <= h * w <= 1500


def _mostly_ignored(n: int = 6) -> dict[str, np.ndarray]:
    mask = np.full((16, 16), 255, dtype=np.uint8)
    mask[:3, :3] = 1
    mask[3, 3] = 2
    return {f"s{i}": mask for i in range(n)}


def test_data_check_warns_when_many_crops_hold_only_ignored_pixels(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", masks=_mostly_ignored())
    report = check_dataset(DataConfig(root=str(root), image_size=16, scale_min=0.1))
    fraction = report.ignored_crop_fraction
    assert fraction is not None and fraction > 0.2 and report.ignored_crops == (round(fraction * 64), 64)
    (warning,) = [w for w in report.warnings if "ignored pixels" in w]
    assert warning.startswith(f"{100 * fraction:.1f}% of training crops would hold only ignored pixels")
    assert (
        "data.scale_min 0.1" in warning
        and "Raise data.scale_min" in warning
        and "data.image_size 16" in warning
    )
    assert f"training crops with only ignored pixels: {100 * fraction:.1f}%" in report.format()
    whole = check_dataset(DataConfig(root=str(root), image_size=16, scale_min=1.0))  # the whole image
    assert whole.ignored_crop_fraction == 0.0 and not any("ignored pixels" in w for w in whole.warnings)


def test_only_training_masks_count_for_the_crop_estimate(tmp_path: Path) -> None:
    empty = np.full((16, 16), 255, dtype=np.uint8)  # e.g. Cityscapes' placeholder test masks
    root = _folder(tmp_path / "d", masks={"s4": empty, "s5": empty})
    report = check_dataset(DataConfig(root=str(root), image_size=16))
    assert report.ignored_crops == (0, 4 * 16) and report.ok and report.warnings == []
    assert check_dataset(DataConfig(root=str(root)), splits=["val"]).ignored_crops is None
    by_ids = check_dataset(DataConfig(root=str(root)), ids=["s4"])  # what training checks: its own ids
    assert by_ids.ignored_crops == (16, 16) and any("100.0% of training crops" in w for w in by_ids.warnings)


# ----------------------------------------------------------------------------- folder vs file


def test_a_folder_where_a_file_belongs_is_named_as_such(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    (tmp_path / "ids").mkdir()
    with pytest.raises(IsADirectoryError, match=r"id list .*ids is a folder, not a file"):
        read_ids(tmp_path / "ids")
    with pytest.raises(IsADirectoryError, match=r"classes file .*ids is a folder, not a file"):
        load_class_info(root, tmp_path / "ids")
    report = check_dataset(DataConfig(root=str(root), labeled_split=str(tmp_path / "ids")))
    assert report.errors == [f"id list {tmp_path / 'ids'} is a folder, not a file"]
    (root / "splits" / "val.txt").unlink()
    (root / "splits" / "val.txt").mkdir()
    assert (
        _errors(check_dataset(DataConfig(root=str(root))).errors, r"splits/val\.txt is a folder, not a file")
        == 1
    )
    from pixcon.data.images import open_image, read_rgb

    with pytest.raises(IsADirectoryError, match=r"image .*splits/val\.txt is a folder"):
        read_rgb(root / "splits" / "val.txt")
    with pytest.raises(IsADirectoryError, match=r"is a folder"):
        open_image(root / "splits" / "val.txt")


def test_a_file_where_a_folder_belongs_is_named_as_such(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    stray = tmp_path / "file.txt"
    stray.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"dataset folder .*file\.txt is a file, not a folder"):
        SegmentationFolder(stray)
    with pytest.raises(NotADirectoryError, match=r"dataset folder .*file\.txt is a file, not a folder"):
        check_dataset(DataConfig(root=str(stray)))
    for fmt in ("voc", "cityscapes", "potsdam"):
        with pytest.raises(NotADirectoryError, match=r"file\.txt is a file, not a folder"):
            check_dataset(DataConfig(format=fmt, root=str(stray)))  # type: ignore[arg-type]
    ds = SegmentationFolder(root, split="train")
    with pytest.raises(NotADirectoryError, match=r"data\.pseudo_masks: .*file\.txt is a file, not a folder"):
        PseudoMasks(ds, stray)
    masks = root / "masks"
    for p in masks.iterdir():
        p.unlink()
    masks.rmdir()
    masks.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"mask folder .*masks is a file, not a folder"):
        SegmentationFolder(root, split="train")
    assert _errors(check_dataset(DataConfig(root=str(root))).errors, r"mask folder .*masks is a file") == 1

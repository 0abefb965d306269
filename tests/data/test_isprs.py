"""Tests for the ISPRS Potsdam / Vaihingen patch reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from dataset_layouts import (
    POTSDAM_TILES,
    TILE_H,
    TILE_W,
    ISPRSFixture,
    isprs_colors,
    write_potsdam,
    write_vaihingen,
)

from pixcon.data.base import UnknownColorError
from pixcon.data.isprs import (
    ISPRS_CLASSES,
    POTSDAM_TEST,
    POTSDAM_TRAIN,
    VAIHINGEN_TEST,
    VAIHINGEN_TRAIN,
    ISPRSPatches,
    find_tiles,
    normalize_tile,
    patch_starts,
    split_tiles,
)


def test_benchmark_tile_lists() -> None:
    assert len(POTSDAM_TRAIN) == 24 and len(POTSDAM_TEST) == 14 and not set(POTSDAM_TRAIN) & set(POTSDAM_TEST)
    assert len(VAIHINGEN_TRAIN) == 16 and len(VAIHINGEN_TEST) == 17
    assert not set(VAIHINGEN_TRAIN) & set(VAIHINGEN_TEST)
    assert "top_potsdam_7_13" in POTSDAM_TEST and "top_mosaic_09cm_area37" in VAIHINGEN_TRAIN
    assert ISPRS_CLASSES[0] == "impervious surfaces" and len(ISPRS_CLASSES) == 6


def test_tile_names() -> None:
    assert normalize_tile("potsdam", "2_10") == "top_potsdam_2_10"
    assert normalize_tile("potsdam", "top_potsdam_02_10") == "top_potsdam_2_10"
    assert normalize_tile("vaihingen", "area7") == "top_mosaic_09cm_area7"
    assert normalize_tile("vaihingen", "top_potsdam_2_10") is None


@pytest.mark.parametrize(
    ("length", "size", "stride", "starts"),
    [(70, 32, 32, [0, 32, 38]), (64, 32, 32, [0, 32]), (90, 32, 16, [0, 16, 32, 48, 58]), (32, 32, 8, [0])],
)
def test_patch_starts_cover_the_axis(length: int, size: int, stride: int, starts: list[int]) -> None:
    assert patch_starts(length, size, stride) == starts


def _assemble(ds: ISPRSPatches, tile: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pastes every patch of `tile` back; returns (image, mask, coverage count)."""
    image = np.zeros((TILE_H, TILE_W, ds.in_channels), dtype=np.float32)
    mask = np.full((TILE_H, TILE_W), -1, dtype=np.int64)
    count = np.zeros((TILE_H, TILE_W), dtype=np.int64)
    for k, sample_id in enumerate(ds.ids):
        name, y, x = sample_id.rsplit("_", 2)
        if name != tile:
            continue
        y, x, p = int(y), int(x), ds.patch_size
        patch, patch_mask = ds[k]
        assert patch.shape == (ds.in_channels, p, p) and patch_mask.shape == (p, p)
        image[y : y + p, x : x + p] = patch.permute(1, 2, 0).numpy()
        mask[y : y + p, x : x + p] = patch_mask.numpy()
        count[y : y + p, x : x + p] += 1
    return image, mask, count


@pytest.mark.parametrize(
    ("bands", "channels"), [("rgb", [0, 1, 2]), ("irrg", [3, 0, 1]), ("rgbir", [0, 1, 2, 3])]
)
def test_potsdam_patches_match_the_tile(potsdam: ISPRSFixture, bands: str, channels: list[int]) -> None:
    ds = ISPRSPatches(potsdam.root, "potsdam", split="train", bands=bands, patch_size=32, patch_stride=24)  # type: ignore[arg-type]
    assert ds.tiles == ["top_potsdam_2_10", "top_potsdam_2_11"]
    assert ds.in_channels == len(channels)
    assert ds.ids[:2] == ["top_potsdam_2_10_0_0", "top_potsdam_2_10_0_24"]
    assert len(ds) == 2 * len(patch_starts(TILE_H, 32, 24)) * len(patch_starts(TILE_W, 32, 24))
    for tile in ds.tiles:
        image, mask, count = _assemble(ds, tile)
        assert (count >= 1).all()  # the whole tile is covered
        np.testing.assert_array_equal(image, potsdam.rgbir[tile][..., channels].astype(np.float32) / 255)
        np.testing.assert_array_equal(mask, potsdam.classes[tile])


def test_rgbir_has_four_channels(potsdam: ISPRSFixture) -> None:
    ds = ISPRSPatches(potsdam.root, "potsdam", split="test", bands="rgbir", patch_size=64)
    image, _ = ds[0]
    assert ds.in_channels == 4 and image.shape == (4, 64, 64) and image.dtype == torch.float32
    assert ds.ids == [f"top_potsdam_2_13_{y}_{x}" for y in (0, 6) for x in (0, 26)]
    torch.testing.assert_close(ds.mask(3), ds[3][1])


def test_eroded_labels_ignore_boundaries(potsdam: ISPRSFixture) -> None:
    ds = ISPRSPatches(potsdam.root, "potsdam", ids=["top_potsdam_2_11_10_20"], patch_size=32, eroded=True)
    expected = potsdam.eroded["top_potsdam_2_11"][10:42, 20:52]
    np.testing.assert_array_equal(ds.mask(0).numpy(), expected)
    assert 255 in expected and set(np.unique(expected)) - {255} <= set(range(6))


def test_splits_val_and_split_files(potsdam: ISPRSFixture) -> None:
    assert split_tiles(potsdam.root, "potsdam", "val") == ["top_potsdam_2_13"]  # val = test tiles
    (potsdam.root / "splits").mkdir()
    (potsdam.root / "splits" / "val.txt").write_text("2_11\n")
    assert split_tiles(potsdam.root, "potsdam", "val") == ["top_potsdam_2_11"]
    (potsdam.root / "splits" / "holdout.txt").write_text("top_potsdam_2_10\ntop_potsdam_3_10\n")
    with pytest.raises(FileNotFoundError, match=r"holdout\.txt: tile top_potsdam_3_10"):
        ISPRSPatches(potsdam.root, "potsdam", split="holdout", patch_size=32)
    with pytest.raises(ValueError, match="unknown potsdam split 'extra'.*'holdout'"):
        ISPRSPatches(potsdam.root, "potsdam", split="extra", patch_size=32)


def test_explicit_ids(potsdam: ISPRSFixture) -> None:
    ds = ISPRSPatches(
        potsdam.root, "potsdam", ids=["top_potsdam_2_13_38_58", "top_potsdam_2_10_1_2"], patch_size=32
    )
    np.testing.assert_array_equal(
        ds[0][0].permute(1, 2, 0).numpy(), potsdam.rgbir["top_potsdam_2_13"][38:, 58:, :3] / np.float32(255)
    )
    with pytest.raises(ValueError, match="outside tile top_potsdam_2_13"):
        ISPRSPatches(potsdam.root, "potsdam", ids=["top_potsdam_2_13_39_0"], patch_size=32)
    with pytest.raises(ValueError, match="invalid potsdam patch id 'x_1'"):
        ISPRSPatches(potsdam.root, "potsdam", ids=["x_1"], patch_size=32)


def test_tile_smaller_than_patch_names_tile(potsdam: ISPRSFixture) -> None:
    with pytest.raises(
        ValueError, match=r"tile top_potsdam_2_10 .* is 90x70 \(WxH\), smaller than patch_size 80"
    ):
        ISPRSPatches(potsdam.root, "potsdam", split="train", patch_size=80)


def test_unknown_label_colour_names_file_and_pixel(potsdam: ISPRSFixture) -> None:
    labels = isprs_colors(potsdam.classes["top_potsdam_2_13"])
    labels[40, 30] = (250, 3, 252)
    labels[3, 3] = (250, 252, 253)  # near-pure white: thresholded, accepted
    tifffile.imwrite(potsdam.root / "5_Labels_all/top_potsdam_2_13_label.tif", labels, photometric="rgb")
    ds = ISPRSPatches(potsdam.root, "potsdam", split="test", patch_size=32)
    assert ds.mask(0)[3, 3] == 0
    k = ds.ids.index("top_potsdam_2_13_32_0")
    with pytest.raises(
        UnknownColorError, match=r"\(250, 3, 252\) at pixel \(y=40, x=30\) in .*top_potsdam_2_13_label\.tif"
    ):
        ds.mask(k)


def test_vaihingen_zip_and_flat_layouts(tmp_path: Path) -> None:
    for flat in (False, True):
        fx = write_vaihingen(tmp_path / f"v{flat}", flat=flat)
        index = find_tiles(fx.root, "vaihingen", "irrg")
        assert sorted(index.images) == sorted(index.labels) == sorted(fx.classes)
        ds = ISPRSPatches(fx.root, "vaihingen", split="train", bands="irrg", patch_size=32)
        assert ds.tiles == ["top_mosaic_09cm_area1", "top_mosaic_09cm_area3"] and ds.in_channels == 3
        image, mask, _ = _assemble(ds, "top_mosaic_09cm_area3")
        np.testing.assert_array_equal(image, fx.rgbir["top_mosaic_09cm_area3"] / np.float32(255))
        np.testing.assert_array_equal(mask, fx.classes["top_mosaic_09cm_area3"])
        eroded = ISPRSPatches(fx.root, "vaihingen", split="test", patch_size=32, eroded=True)
        assert eroded.tiles == ["top_mosaic_09cm_area2"]
        np.testing.assert_array_equal(eroded.mask(0).numpy(), fx.eroded["top_mosaic_09cm_area2"][:32, :32])
    with pytest.raises(ValueError, match="IRRG tiles only"):
        ISPRSPatches(fx.root, "vaihingen", bands="rgbir", patch_size=32)


def test_compressed_tiles_use_the_cache_and_pickle(tmp_path: Path) -> None:
    fx = write_potsdam(tmp_path / "p", tiles=POTSDAM_TILES[:1])
    path = fx.root / "2_Ortho_RGB/top_potsdam_2_10_RGB.tif"
    tifffile.imwrite(path, fx.rgbir["top_potsdam_2_10"][..., :3], photometric="rgb", compression="zlib")
    ds = ISPRSPatches(fx.root, "potsdam", patch_size=32, cache_tiles=1)
    image, _ = ds[4]  # (y, x) = (32, 32)
    np.testing.assert_array_equal(
        image.permute(1, 2, 0).numpy(), fx.rgbir["top_potsdam_2_10"][32:64, 32:64, :3] / np.float32(255)
    )
    assert ds._reader._maps[path] is None and path in ds._reader._cache  # not mappable: decoded and cached
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers: caches are not pickled
    assert not clone._reader._maps and not clone._reader._cache
    torch.testing.assert_close(clone[4][0], image)


def test_missing_label_names_tile(potsdam: ISPRSFixture) -> None:
    (potsdam.root / "5_Labels_all/top_potsdam_2_11_label.tif").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"no label for tile top_potsdam_2_11 .*top_potsdam_2_11_RGB\.tif"
    ):
        ISPRSPatches(potsdam.root, "potsdam", split="train", patch_size=32)

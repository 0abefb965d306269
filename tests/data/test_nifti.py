"""data.format: nifti — volumes sliced into 2-D samples, windows, resampling, splits, checks."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml
from dataset_layouts import NIFTI_AFFINE, NIFTI_SHAPE, nifti_image, nifti_label, save_nifti, write_nifti
from torch.utils.data import DataLoader

from pixcon.cli import main
from pixcon.config import ConfigError, DataConfig, load_config
from pixcon.data.base import SegmentationDataset
from pixcon.data.nifti import CACHE_FILE, NiftiOptions, NiftiSlices, read_split
from pixcon.data.registry import check_dataset, open_dataset, split_ids
from pixcon.data.transforms import train_transform

nib = pytest.importorskip("nibabel")


def _cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(format="nifti", root=str(root), **kw)  # type: ignore[arg-type]


def _windowed(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """The module docstring's window, in float64 from the whole volume."""
    lo, hi = np.percentile(volume.astype(np.float64), [low, high])
    return np.clip((volume - lo) / (hi - lo), 0.0, 1.0)


def _splits(root: Path, **files: str) -> None:
    (root / "splits").mkdir(exist_ok=True)
    for name, text in files.items():
        (root / "splits" / f"{name}.txt").write_text(text)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_along_each_axis(tmp_path: Path, axis: int) -> None:
    fx = write_nifti(tmp_path / "d")
    ds = open_dataset(_cfg(fx.root, nifti_axis=axis))
    assert isinstance(ds, NiftiSlices) and isinstance(ds, SegmentationDataset)
    letter = "ijk"[axis]
    assert len(ds) == 3 * NIFTI_SHAPE[axis]
    assert ds.ids[:2] == [f"case_a_{letter}000", f"case_a_{letter}001"]
    assert (
        ds.class_names == ["background", "organ", "lesion"] and ds.ignore_index == 255 and ds.in_channels == 1
    )
    for name in ("case_a", "case_b"):
        expected = _windowed(fx.images[name])
        for k in (0, NIFTI_SHAPE[axis] - 1, NIFTI_SHAPE[axis] // 2):
            image, mask = ds[ds.ids.index(f"{name}_{letter}{k:03d}")]
            ref_image = np.take(expected, k, axis=axis)  # (H, W): the other two axes in order
            ref_mask = np.take(fx.labels[name], k, axis=axis)
            assert image.dtype == torch.float32 and mask.dtype == torch.int64
            assert image.shape == (1, *ref_image.shape) and mask.shape == ref_mask.shape
            np.testing.assert_allclose(image[0].numpy(), ref_image, atol=1e-6)
            np.testing.assert_array_equal(mask.numpy(), ref_mask)
            np.testing.assert_array_equal(ds.mask(ds.ids.index(f"{name}_{letter}{k:03d}")).numpy(), ref_mask)


def test_window_is_per_volume_and_reads_the_header_scaling(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d")
    ds = open_dataset(_cfg(fx.root, nifti_window_low=2.0, nifti_window_high=90.0))
    for name, volume in fx.images.items():  # case_b is int16 * 0.5 on disk
        np.testing.assert_allclose(ds.windows[name][0], np.percentile(volume.astype(np.float64), [2, 90]))
    # One window for the whole volume, not one per slice: each slice's own range is not [0, 1].
    k = ds.ids.index("case_c_k004")
    image = ds[k][0][0].numpy()
    np.testing.assert_allclose(image, _windowed(fx.images["case_c"], 2.0, 90.0)[:, :, 4], atol=1e-6)
    assert image.max() == 1.0 and (image == 1.0).mean() < 0.5  # the 90th percentile clips some voxels


def test_constant_and_nan_voxels(tmp_path: Path) -> None:
    root = tmp_path / "d"
    image = nifti_image(0)
    image[0] = np.nan
    save_nifti(image, root / "images" / "v.nii")
    save_nifti(np.full(NIFTI_SHAPE, 7.0, np.float32), root / "images" / "flat.nii")
    for name in ("v", "flat"):
        save_nifti(nifti_label(), root / "labels" / f"{name}.nii")
    ds = open_dataset(_cfg(root, nifti_axis=0))
    assert torch.equal(ds[ds.ids.index("v_i000")][0], torch.zeros(1, 10, 8))  # NaN -> 0
    assert torch.equal(ds[ds.ids.index("flat_i005")][0], torch.zeros(1, 10, 8))  # empty window -> 0
    assert torch.isfinite(ds[ds.ids.index("v_i001")][0]).all()
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("v\nflat\n")  # a whole-dataset check validates the splits
    report = check_dataset(_cfg(root))
    assert report.ok and any("flat.nii: channels [0] are constant" in w for w in report.warnings)


def test_multichannel_volumes_window_each_channel(tmp_path: Path) -> None:
    root = tmp_path / "msd"
    image = nifti_image(1, channels=2)
    image[..., 1] *= 50.0
    save_nifti(image, root / "imagesTr" / "case.nii.gz")
    save_nifti(nifti_label(), root / "labelsTr" / "case.nii.gz")
    ds = open_dataset(_cfg(root, nifti_image_dir="imagesTr", nifti_label_dir="labelsTr"))
    assert ds.in_channels == 2 and ds.num_classes == 3  # inferred up to the largest id; 255 is ignore
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    got = ds[3][0]  # (2, X, Y) slice k = 3
    for c in range(2):
        np.testing.assert_allclose(got[c].numpy(), _windowed(image[..., c])[:, :, 3], atol=1e-6)


def test_resampling_images_bilinear_labels_nearest(tmp_path: Path) -> None:
    root = tmp_path / "d"
    x = np.arange(NIFTI_SHAPE[0], dtype=np.float32)
    ramp = np.broadcast_to(x[:, None, None], NIFTI_SHAPE).copy()  # intensity = i
    save_nifti(ramp, root / "images" / "v.nii")
    save_nifti(nifti_label(), root / "labels" / "v.nii")
    ds = open_dataset(_cfg(root, nifti_slice_size=[24, 20], nifti_window_low=0.0, nifti_window_high=100.0))
    image, mask = ds[ds.ids.index("v_k003")]
    assert image.shape == (1, 24, 20) and mask.shape == (24, 20)
    # Twice the size on both axes: nearest repeats every voxel 2x2 times; bilinear keeps a ramp a
    # ramp between the first and last output pixel centres (a step of 1/2 voxel).
    label = torch.from_numpy(nifti_label()[:, :, 3].astype(np.int64))
    assert torch.equal(mask, label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    expected = (np.arange(24) + 0.5) / 2 - 0.5  # source coordinate of each output row
    expected = np.clip(expected, 0, NIFTI_SHAPE[0] - 1) / (NIFTI_SHAPE[0] - 1)
    np.testing.assert_allclose(image[0].numpy(), np.broadcast_to(expected[:, None], (24, 20)), atol=1e-6)
    torch.testing.assert_close(ds.mask(ds.ids.index("v_k003")), mask)
    shrunk = open_dataset(_cfg(root, nifti_slice_size=[6, 5]))
    assert shrunk[0][0].shape == (1, 6, 5) and set(shrunk.mask(4).unique().tolist()) <= {0, 1, 2}


def test_skip_empty_keeps_slices_with_foreground(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d", volumes=("v",))
    assert len(open_dataset(_cfg(fx.root))) == 8
    ds = open_dataset(_cfg(fx.root, nifti_skip_empty=True))
    assert ds.ids == ["v_k002", "v_k003", "v_k004", "v_k005"]  # z 7 holds only 0 and ignore
    along_i = open_dataset(_cfg(fx.root, nifti_skip_empty=True, nifti_axis=0))
    assert along_i.ids == [f"v_i{k:03d}" for k in range(3, 9)]
    explicit = open_dataset(_cfg(fx.root, nifti_skip_empty=True), ids=["v_k000"])  # named ids stay
    assert explicit.ids == ["v_k000"] and explicit.mask(0).sum() == 0


def test_split_by_volume(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d")
    _splits(fx.root, train="case_a\ncase_c  # comment\n\n", val="case_b\n")
    cfg = _cfg(fx.root)
    train = open_dataset(cfg, split="train")
    assert train.volumes == ["case_a", "case_c"] and len(train) == 16
    assert split_ids(cfg, "val") == [f"case_b_k{k:03d}" for k in range(8)]
    assert split_ids(_cfg(fx.root, nifti_skip_empty=True), "val") == [f"case_b_k{k:03d}" for k in range(2, 6)]
    with pytest.raises(FileNotFoundError, match=r"splits/test\.txt"):
        open_dataset(cfg, split="test")


def test_split_by_slice_ranges_with_a_gap(tmp_path: Path) -> None:
    root = tmp_path / "d"
    save_nifti(nifti_image(0, shape=(6, 5, 40)), root / "images" / "brain.nii")
    label = np.ones((6, 5, 40), dtype=np.uint8)
    save_nifti(label, root / "labels" / "brain.nii")
    _splits(root, train="brain[:10]\nbrain[30:]\n", val="brain[14:18]\n", test="brain[22:26]\n")
    cfg = _cfg(root, nifti_min_gap=4)
    assert split_ids(cfg, "train") == [f"brain_k{k:03d}" for k in [*range(10), *range(30, 40)]]
    assert split_ids(cfg, "val") == ["brain_k014", "brain_k015", "brain_k016", "brain_k017"]
    assert open_dataset(cfg, split="test").ids == ["brain_k022", "brain_k023", "brain_k024", "brain_k025"]
    assert [str(e) for e in read_split(root / "splits" / "train.txt")] == ["brain[:10]", "brain[30:]"]
    _splits(root, train="brain[k=:10]\nbrain[k=30:40]\n")  # ranges may name their axis
    assert split_ids(cfg, "train") == [f"brain_k{k:03d}" for k in [*range(10), *range(30, 40)]]
    with pytest.raises(
        ValueError, match=r"train\.txt:1: range brain\[k=:10\] is along axis k, but data.nifti_axis is 0"
    ):
        open_dataset(_cfg(root, nifti_axis=0), split="train")
    assert check_dataset(cfg).ok
    # A split outside train/val/test is not held to the gap.
    _splits(root, everything="brain\n")
    assert len(split_ids(cfg, "everything")) == 40


@pytest.mark.parametrize(
    ("val", "match"),
    [
        ("brain[12:18]", r"leave 2 slices of volume 'brain' between them .* at least data.nifti_min_gap=4"),
        ("brain[10:18]", r"leave 0 slices"),  # touching ranges: no gap at all
        ("brain[8:18]", r"splits overlap: .* share slices 8\.\.9"),
        ("brain", r"splits overlap"),  # the whole volume in val
    ],
)
def test_splits_without_a_gap_are_refused(tmp_path: Path, val: str, match: str) -> None:
    root = tmp_path / "d"
    save_nifti(nifti_image(0, shape=(6, 5, 40)), root / "images" / "brain.nii")
    save_nifti(np.ones((6, 5, 40), dtype=np.uint8), root / "labels" / "brain.nii")
    _splits(root, train="brain[0:10]\n", val=f"# held out\n{val}\n")
    cfg = _cfg(root, nifti_min_gap=4)
    for split in ("train", "val"):  # either side refuses: the pair is what is wrong
        with pytest.raises(ValueError, match=match) as info:
            open_dataset(cfg, split=split)
        message = str(info.value)
        assert (
            f"{root / 'splits' / 'train.txt'}:1" in message and f"{root / 'splits' / 'val.txt'}:2" in message
        )
    report = check_dataset(cfg)
    assert not report.ok and any(re.search(match, e) for e in report.errors)


def test_split_line_and_range_errors(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d", volumes=("v",))
    _splits(fx.root, train="v[0:3]\nv[2:1]\n", val="v[5:40]\n", test="bad line here\n")
    cfg = _cfg(fx.root, nifti_min_gap=1)
    with pytest.raises(ValueError, match=r"train\.txt:2: range \[2:1\] of volume 'v' is empty"):
        open_dataset(cfg, split="train")
    with pytest.raises(ValueError, match=r"val\.txt:1: range \[5:40\] .* outside its 8 slices"):
        open_dataset(cfg, split="val")
    with pytest.raises(ValueError, match=r"test\.txt:1: cannot read 'bad line here'"):
        open_dataset(cfg, split="test")
    errors = check_dataset(cfg).errors
    assert len([e for e in errors if "splits/" in e]) == 3
    _splits(fx.root, train="v[0:3]\nnope[0:1]\n", val="v[5:8]\n", test="v[4:4]\n")
    with pytest.raises(FileNotFoundError, match=r"no image for volume 'nope'"):
        open_dataset(cfg, split="train")
    assert any("train.txt:2: unknown volume 'nope'" in e for e in check_dataset(cfg, splits=["train"]).errors)


def test_ids_round_trip(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d")
    cfg = _cfg(fx.root, nifti_axis=1)
    ds = open_dataset(cfg)
    picked = [ds.ids[k] for k in (17, 3, 29)]
    sub = open_dataset(cfg, ids=picked)
    assert sub.ids == picked and sub.volumes == ["case_b", "case_a", "case_c"]
    for k, i in enumerate(picked):
        a, b = sub[k], ds[ds.ids.index(i)]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert open_dataset(cfg, ids=["case_a_j7"]).ids == ["case_a_j007"]  # any number of digits
    with pytest.raises(
        ValueError, match=r"'case_a_k001' is a slice along axis k \(2\), but data.nifti_axis is 1"
    ):
        open_dataset(cfg, ids=["case_a_k001"])
    with pytest.raises(ValueError, match=r"invalid NIfTI slice id 'case_a'"):
        open_dataset(cfg, ids=["case_a"])
    with pytest.raises(ValueError, match=r"'case_a_j010': volume 'case_a' has 10 slices along axis j"):
        open_dataset(cfg, ids=["case_a_j010"])
    with pytest.raises(FileNotFoundError, match=r"no image for volume 'case_x'"):
        open_dataset(cfg, ids=["case_x_j001"])
    with pytest.raises(ValueError, match="either ids or split"):
        open_dataset(cfg, split="train", ids=picked)


def test_shape_and_affine_mismatches_name_both_files(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d")
    short_label = save_nifti(nifti_label()[:, :, :7], fx.root / "labels" / "case_a.nii.gz")
    moved = NIFTI_AFFINE.copy()
    moved[0, 3] += 0.5  # half a voxel along x
    moved_label = save_nifti(nifti_label(), fx.root / "labels" / "case_b.nii.gz", affine=moved)
    images = {n: fx.root / "images" / f"{n}.nii.gz" for n in ("case_a", "case_b")}
    report = check_dataset(_cfg(fx.root))
    assert not report.ok
    shape = [e for e in report.errors if e.startswith("shape mismatch")]
    affine = [e for e in report.errors if e.startswith("affine mismatch")]
    assert shape == [
        f"shape mismatch: image {images['case_a']} is 12x10x8 but label {short_label} is 12x10x7 (voxels)"
    ]
    assert len(affine) == 1 and str(images["case_b"]) in affine[0] and str(moved_label) in affine[0]
    assert "largest difference 0.5" in affine[0]
    assert report.num_images == 8 and report.unit == "slice"  # the good volume is still checked
    with pytest.raises(ValueError, match="shape mismatch") as info:
        open_dataset(_cfg(fx.root), ids=["case_a_k000"])
    assert str(images["case_a"]) in str(info.value) and str(short_label) in str(info.value)
    with pytest.raises(ValueError, match="affine mismatch"):
        open_dataset(_cfg(fx.root), ids=["case_b_k000"])
    with pytest.raises(ValueError, match="shape mismatch"):
        open_dataset(_cfg(fx.root))  # every volume
    assert open_dataset(_cfg(fx.root), ids=["case_c_k000"]).ids == ["case_c_k000"]


def test_check_counts_and_reports_problems(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d", suffix=".nii")
    report = check_dataset(_cfg(fx.root))
    assert report.ok, report.format()
    voxels = sum(np.bincount(label.ravel(), minlength=256) for label in fx.labels.values())
    assert report.class_pixels == {"background": voxels[0], "organ": voxels[1], "lesion": voxels[2]}
    assert report.ignored_pixels == 3 and report.num_images == 24
    assert (report.height_range, report.width_range) == ((12, 12), (10, 10))
    assert check_dataset(_cfg(fx.root, nifti_slice_size=[32, 32])).height_range == (32, 32)

    bad = fx.labels["case_b"].astype(np.float32)
    bad[1, 1, 1] = 1.5
    save_nifti(bad, fx.root / "labels" / "case_b.nii")
    wrong = fx.labels["case_c"].copy()
    wrong[2, 2, 6] = 7
    save_nifti(wrong.astype(np.uint8), fx.root / "labels" / "case_c.nii")
    save_nifti(nifti_label(), fx.root / "labels" / "orphan.nii")
    save_nifti(nifti_image(3), fx.root / "images" / "lonely.nii")
    report = check_dataset(_cfg(fx.root))
    text = "\n".join(report.errors)
    assert f"label {fx.root / 'labels' / 'case_b.nii'} has non-integer values (e.g. 1.5" in text
    assert f"mask {fx.root / 'labels' / 'case_c.nii'}[k=6] has class ids [7] outside 0..2" in text
    assert f"label {fx.root / 'labels' / 'orphan.nii'} has no image" in text
    assert "no label for volume 'lonely'" in text
    with pytest.raises(ValueError, match="non-integer values"):
        open_dataset(_cfg(fx.root), ids=["case_b_k001"])[0]


def test_truncated_volume_is_one_error(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d")
    path = fx.root / "images" / "case_a.nii.gz"
    path.write_bytes(path.read_bytes()[:600])
    report = check_dataset(_cfg(fx.root))
    assert [e for e in report.errors if str(path) in e] == [e for e in report.errors]
    assert len(report.errors) == 1 and "cannot read NIfTI" in report.errors[0]
    assert report.num_images == 16


def test_window_cache(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d", volumes=("v",))
    cache = tmp_path / "cache"
    cfg = _cfg(fx.root, nifti_cache_dir=str(cache))
    first = open_dataset(cfg)
    stored = json.loads((cache / CACHE_FILE).read_text())
    (key,) = [k for k in stored["entries"] if k.startswith("window|")]
    np.testing.assert_allclose(stored["entries"][key], first.windows["v"])
    stored["entries"][key] = [[0.0, 1000.0]]  # a later open reads the stored window
    (cache / CACHE_FILE).write_text(json.dumps(stored))
    np.testing.assert_array_equal(open_dataset(cfg).windows["v"], [[0.0, 1000.0]])
    image = fx.root / "images" / "v.nii.gz"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # "edited"
    np.testing.assert_allclose(open_dataset(cfg).windows["v"], first.windows["v"])
    # Other settings are other entries.
    assert (
        open_dataset(_cfg(fx.root, nifti_cache_dir=str(cache), nifti_window_high=90.0)).windows["v"][0, 1]
        < 1000
    )


def test_options_and_config_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.nifti_axis: 3 is out of range; allowed: 0, 1 or 2"):
        load_config(None, ["data.format=nifti", "data.nifti_axis=3"])
    with pytest.raises(ConfigError, match=r"data.nifti_min_gap: 0 is out of range"):
        load_config(None, ["data.nifti_min_gap=0"])
    with pytest.raises(ConfigError, match=r"data.nifti_slice_size"):
        load_config(None, ["data.nifti_slice_size=[32]"])
    assert load_config(
        None, ["data.format=nifti", "data.nifti_slice_size=[32, 48]"]
    ).data.nifti_slice_size == [32, 48]
    fx = write_nifti(tmp_path / "d", volumes=("v",))
    with pytest.raises(ValueError, match=r"nifti_window_low \(60.0\) and data.nifti_window_high \(40.0\)"):
        open_dataset(_cfg(fx.root, nifti_window_low=60.0, nifti_window_high=40.0))
    with pytest.raises(ValueError, match="nifti_min_gap must be >= 1"):
        NiftiOptions(min_gap=0)


def test_open_dataset_into_a_dataloader(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d")
    _splits(fx.root, train="case_a\ncase_b\n", val="case_c\n")
    cfg = _cfg(fx.root, nifti_skip_empty=True)
    ds = open_dataset(cfg, split="train", transform=train_transform(16, scale=(0.5, 1.0), color_jitter=0.4))
    torch.manual_seed(0)
    images, masks = next(iter(DataLoader(ds, batch_size=4, shuffle=True, num_workers=0)))
    assert images.shape == (4, 1, 16, 16) and images.dtype == torch.float32
    assert masks.shape == (4, 16, 16) and masks.dtype == torch.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(masks.unique().tolist()) <= {0, 1, 2, 255} and (masks > 0).any()


def test_pickled_dataset_reads_the_same(tmp_path: Path) -> None:
    import pickle

    fx = write_nifti(tmp_path / "d")
    ds = open_dataset(_cfg(fx.root))
    _ = ds[0]  # fills the decoded-volume cache, which is not pickled
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._reader._cache == {} and torch.equal(clone[5][0], ds[5][0])


def test_cli_data_check_names_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = write_nifti(tmp_path / "d")
    data = ["--root", str(fx.root), "--set", "data.format=nifti"]
    assert main(["data", "check", *data]) == 0
    assert f"nifti dataset at {fx.root}: 24 slices checked" in capsys.readouterr().out
    label = save_nifti(nifti_label()[:11], fx.root / "labels" / "case_b.nii.gz")
    assert main(["data", "check", *data]) == 1
    out = capsys.readouterr().out
    assert f"image {fx.root / 'images' / 'case_b.nii.gz'} is 12x10x8 but label {label} is 11x10x8" in out


def _script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "mni152_tissue.py"
    spec = importlib.util.spec_from_file_location("mni152_tissue", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mni152_script_on_a_tiny_wheel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The script end to end, offline: a wheel-shaped zip holding tiny template volumes."""
    script = _script()
    shape = (6, 5, 34)
    rng = np.random.default_rng(0)
    t1 = rng.integers(1, 256, shape).astype(np.uint8)
    t1[0] = 0  # outside the brain mask
    t1[:, :, 30:] = 0  # slices 30..33 hold no brain
    gm = rng.integers(0, 256, shape).astype(np.uint8)
    wm = (255 - gm) // 2  # p_other = 1 - p_gm - p_wm >= 0
    wheel = tmp_path / "nilearn-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for part, array in (("t1", t1), ("gm", gm), ("wm", wm)):
            path = save_nifti(array, tmp_path / f"{part}.nii.gz")
            zf.write(path, script.MEMBER.format(part))
    out = tmp_path / "mni"
    assert script.main(["--out", str(out), "--wheel", str(wheel), "--gap", "2", "--blocks", "2"]) == 0
    assert "OK" in capsys.readouterr().out
    labels = np.asarray(nib.load(out / "labels" / "mni152.nii").dataobj)
    p = np.stack([gm / 255, wm / 255, 1 - gm / 255 - wm / 255])  # (3, X, Y, Z)
    expected = np.where(t1 > 0, p.argmax(0) + 1, 0)
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels[1:, :, :30])) == {1, 2, 3} and (labels[0] == 0).all()
    np.testing.assert_array_equal(np.asarray(nib.load(out / "images" / "mni152.nii").dataobj), t1)
    cfg = load_config(out / "mni152.yaml").data
    assert (cfg.format, cfg.nifti_axis, cfg.nifti_min_gap) == ("nifti", 2, 2)
    ids = {s: split_ids(cfg, s) for s in ("train", "val", "test")}
    slices = {s: sorted(int(i[-3:]) for i in v) for s, v in ids.items()}
    assert slices["train"][0] == 0 and max(max(v) for v in slices.values()) == 29
    assert [len(v) for v in slices.values()] == [12, 4, 4]  # (30 - 5 gaps x 2) slices, 0.6 / 0.2 / 0.2
    for a in slices:
        for b in slices:
            if a != b:
                assert min(abs(x - y) for x in slices[a] for y in slices[b]) > 2  # >= 2 slices between


@pytest.mark.parametrize(("blocks", "gap"), [(1, 0), (2, 3), (3, 5)])
def test_interleaved_ranges_keep_the_gap(blocks: int, gap: int) -> None:
    ranges = _script().interleaved_ranges(10, 110, {"train": 0.6, "val": 0.2, "test": 0.2}, blocks, gap)
    spans = sorted((a, b, name) for name, v in ranges.items() for a, b in v)
    assert spans[0][0] == 10 and spans[-1][1] == 110
    assert all(nxt[0] - cur[1] == gap for cur, nxt in itertools.pairwise(spans))
    assert [name for *_, name in spans] == ["train", "val", "test"] * blocks
    usable = 100 - gap * (3 * blocks - 1)
    assert sum(b - a for a, b in ranges["train"]) == round(0.6 * usable)


def test_a_slice_size_of_one_number_is_refused(tmp_path: Path) -> None:
    fx = write_nifti(tmp_path / "d", volumes=("v",))
    with pytest.raises(ValueError, match=r"data.nifti_slice_size must be None or \[H, W\]"):
        open_dataset(_cfg(fx.root, nifti_slice_size=[32]))  # not through load_config: no silent [32, 32]


def test_train_and_evaluate_a_nifti_dataset_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reader windows intensities itself: training measures no value range, and evaluate scores
    the checkpoint on the dataset's validation volume."""
    fx = write_nifti(tmp_path / "d")
    run = tmp_path / "run"
    tiny = ["--set", "data.format=nifti", "--set", "data.nifti_slice_size=[32, 32]"]
    tiny += [
        "--set",
        "data.image_size=32",
        "--set",
        "data.batch_size=2",
        "--set",
        "model.proj_dim=8",
        "--quiet",
    ]
    assert main(["train", "--data-root", str(fx.root), "--out", str(run), "--steps", "1", *tiny]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["value_range"] is None and saved["data"]["format"] == "nifti"
    capsys.readouterr()
    assert main(["evaluate", str(run / "last.pt"), "--split", "val", "--json", "--quiet"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores["iou_per_class"]) == {"background", "organ", "lesion"}

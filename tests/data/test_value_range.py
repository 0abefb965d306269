"""Images keep their dynamic range: 8-bit exactly as before, deeper images scaled by a value range."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from dataset_layouts import write_potsdam
from PIL import Image

from pixcon.cli import main
from pixcon.config import ConfigError, DataConfig, load_config
from pixcon.data.images import image_dtype, image_to_tensor, read_rgb
from pixcon.data.isprs import ISPRSPatches
from pixcon.data.registry import check_dataset, measure_value_range, open_dataset, resolve_value_range

MRI_LEVELS = (0, 37, 410, 1290, 2047, 3001, 4095)  # 12-bit grey levels of the phantom's tissues


def mri_slice(seed: int = 0, size: int = 48) -> np.ndarray:
    """(size, size) uint16: nested ellipses at the 12-bit `MRI_LEVELS`, like a T1 head slice."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1  # (size, size) each, in [-1, 1]
    out = np.zeros((size, size), dtype=np.uint16)
    rng = np.random.default_rng(seed)
    for k, level in enumerate(MRI_LEVELS[1:], start=1):
        r = 1.0 - 0.14 * k + rng.uniform(-0.02, 0.02)
        out[(yy / r) ** 2 + (xx / (0.8 * r)) ** 2 <= 1] = level
    return out


def write_png16_colour(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit-per-sample RGB PNG (Pillow cannot write one), chunk by chunk."""
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_folder(root: Path, images: dict[str, np.ndarray], ext: str = "png", splits: bool = True) -> Path:
    """A folder dataset: the given images (saved as `ext`), a two-class mask each, train = all ids."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for sid, image in images.items():
        path = root / "images" / f"{sid}.{ext}"
        if ext in ("tif", "tiff"):
            tifffile.imwrite(path, image)
        else:
            Image.fromarray(image).save(path)
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        mask[image.shape[0] // 2 :] = 1
        Image.fromarray(mask).save(root / "masks" / f"{sid}.png")
    if splits:
        (root / "splits").mkdir()
        (root / "splits" / "train.txt").write_text("".join(f"{i}\n" for i in images))
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": ["background", "foreground"]}))
    return root


def test_16bit_mri_slice_keeps_its_grey_levels(tmp_path: Path) -> None:
    slices = {f"slice{k}": mri_slice(seed=k) for k in range(3)}
    root = write_folder(tmp_path / "mri", slices)
    raw = slices["slice0"]
    # What Pillow's RGB conversion, the reading path before value ranges, made of it: every level from
    # 255 up clipped to white, five of the seven tissues merged into one silhouette.
    assert set(np.unique(np.asarray(Image.open(root / "images" / "slice0.png").convert("RGB")))) == {
        0,
        37,
        255,
    }

    data = resolve_value_range(DataConfig(root=str(root)), ids=list(slices))
    assert data.value_range == [0.0, 4095.0]
    image, mask = open_dataset(data, ids=["slice0"])[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and mask.shape == (48, 48)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])  # grey repeated to RGB
    expected = torch.from_numpy((raw.astype(np.float64) / 4095).astype(np.float32))
    assert torch.equal(image[0], expected)
    # Every tissue keeps its own grey level, in the same order: nothing is binarised or merged.
    present = np.unique(raw)
    assert len(present) == len(MRI_LEVELS)
    values = [float(image[0][torch.from_numpy(raw == level)].unique().item()) for level in present]
    assert values == sorted(values) and len(set(values)) == len(present)
    assert values[0] == 0.0 and values[-1] == 1.0


@pytest.mark.parametrize("kind", ["RGB", "L", "P", "RGBA", "jpeg", "tiff-rgb", "tiff-grey"])
def test_8bit_images_are_read_exactly_as_before(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (12, 17), dtype=np.uint8)
    path = tmp_path / {"jpeg": "x.jpg", "tiff-rgb": "x.tif", "tiff-grey": "x.tiff"}.get(kind, "x.png")
    if kind == "RGB":
        Image.fromarray(rgb).save(path)
    elif kind == "L":
        Image.fromarray(grey).save(path)
    elif kind == "P":
        Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=17).save(path)
    elif kind == "RGBA":
        Image.fromarray(np.dstack([rgb, grey])).save(path)
    elif kind == "jpeg":
        Image.fromarray(rgb).save(path, quality=80)
    elif kind == "tiff-rgb":
        tifffile.imwrite(path, rgb, photometric="rgb")
    else:
        tifffile.imwrite(path, grey)
    # The reading path before value ranges: Pillow's RGB conversion, then float32 / 255.
    before = np.asarray(Image.open(path).convert("RGB"))
    reference = torch.from_numpy(before.copy()).permute(2, 0, 1).float().div_(255.0)
    assert image_dtype(path) == np.uint8
    array = read_rgb(path)
    assert array.dtype == np.uint8 and np.array_equal(array, before)
    assert torch.equal(image_to_tensor(array), reference)
    assert torch.equal(image_to_tensor(array, value_range=[0, 1000]), reference)  # 8-bit ignores the range


def test_8bit_datasets_are_unchanged_and_need_no_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = write_folder(
        tmp_path / "d", {f"s{i}": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(3)}
    )
    data = DataConfig(root=str(root))
    assert measure_value_range(data) is None
    assert resolve_value_range(data) is data  # nothing to fill in: the very same config
    image, _ = open_dataset(data, split="train")[1]
    expected = np.asarray(Image.open(root / "images" / "s1.png").convert("RGB"))
    assert torch.equal(image, torch.from_numpy(expected.copy()).permute(2, 0, 1).float().div_(255.0))


def test_float_tiff_is_scaled_by_the_declared_range_and_never_clipped(tmp_path: Path) -> None:
    values = np.array([[-1.0, 0.0, 1.5], [3.0, 5.0, -3.0]], dtype=np.float32)  # (2, 3)
    root = write_folder(tmp_path / "f", {"a": values}, ext="tif")
    data = DataConfig(root=str(root), value_range=[-1.0, 3.0])
    assert resolve_value_range(data) is data  # a declared range is kept as it is
    image, _ = open_dataset(data, ids=["a"])[0]
    expected = torch.tensor([[0.0, 0.25, 0.625], [1.0, 1.5, -0.5]])
    assert torch.equal(image, expected.expand(3, 2, 3))  # 5 -> 1.5 and -3 -> -0.5: not clipped
    measured = resolve_value_range(DataConfig(root=str(root)))
    assert measured.value_range == [-3.0, 5.0]


def test_int16_ct_values_below_zero(tmp_path: Path) -> None:
    hu = np.array([[-1024, -100, 0], [40, 400, 3071]], dtype=np.int16)  # Hounsfield units
    image = image_to_tensor(hu[..., None], value_range=[-1024, 3071])  # (1, 2, 3)
    assert torch.equal(image[0], torch.from_numpy(((hu + 1024) / 4095).astype(np.float32)))


def test_channel_policy_for_deep_images(tmp_path: Path) -> None:
    rgb16 = np.random.default_rng(0).integers(0, 60000, (6, 7, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb16, photometric="rgb")
    assert image_dtype(tmp_path / "rgb.tif") == np.uint16
    assert np.array_equal(read_rgb(tmp_path / "rgb.tif"), rgb16)  # all 16 bits of all 3 channels
    tifffile.imwrite(tmp_path / "grey.tif", rgb16[..., 0])
    assert np.array_equal(read_rgb(tmp_path / "grey.tif"), np.repeat(rgb16[..., :1], 3, axis=-1))
    four = np.random.default_rng(1).integers(0, 60000, (6, 7, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "four.tif", four, photometric="rgb", extrasamples=["unspecified"])
    with pytest.raises(ValueError, match=r"four\.tif has 4 channels of 16-bit \(uint16\).*1 \(greyscale"):
        read_rgb(tmp_path / "four.tif")


def test_16bit_colour_png_is_refused_not_truncated(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 4096, (5, 6, 3), dtype=np.uint16)
    write_png16_colour(tmp_path / "c.png", rgb)
    for read in (read_rgb, image_dtype):
        with pytest.raises(ValueError, match=r"c\.png is a 16-bit colour PNG.*16-bit TIFF"):
            read(tmp_path / "c.png")


def test_a_deep_image_without_a_range_is_an_error_naming_file_and_key(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "m", {"a": mri_slice()})
    ds = open_dataset(DataConfig(root=str(root)), ids=["a"])
    with pytest.raises(ValueError, match=r"images/a\.png is 16-bit \(uint16\), not 8-bit.*data\.value_range"):
        ds[0]


def test_measure_value_range_over_the_given_ids_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = {
        "a": np.array([[100, 200]], dtype=np.uint16),
        "b": np.array([[50, 300]], dtype=np.uint16),
        "c": rng.integers(0, 256, (1, 2, 3), dtype=np.uint8),  # 8-bit: scaled by 1/255, not measured
    }
    root = write_folder(tmp_path / "d", images)
    data = DataConfig(root=str(root))
    assert measure_value_range(data, ids=["a"]) == (100.0, 200.0)
    assert measure_value_range(data, ids=["a", "c"]) == (100.0, 200.0)
    assert measure_value_range(data) == (50.0, 300.0)  # None: the train split
    assert measure_value_range(data, ids=["c"]) is None
    report = check_dataset(data)
    assert any("mixed bit depths: 2 16-bit (uint16), 1 8-bit (uint8) images" in w for w in report.warnings)


def test_constant_images_have_no_measurable_range(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", {"a": np.full((3, 3), 7, dtype=np.uint16)})
    with pytest.raises(ValueError, match=r"single value 7.*data\.value_range"):
        resolve_value_range(DataConfig(root=str(root)))


def test_isprs_uint16_tiles_are_scaled_by_the_value_range(tmp_path: Path) -> None:
    fx = write_potsdam(tmp_path / "potsdam")
    tile16 = np.random.default_rng(5).integers(0, 2048, (70, 90, 3), dtype=np.uint16)  # 11-bit orthophoto
    tifffile.imwrite(fx.root / "2_Ortho_RGB/top_potsdam_2_10_RGB.tif", tile16, photometric="rgb")
    data = DataConfig(format="potsdam", root=str(fx.root), patch_size=32)
    resolved = resolve_value_range(data, ids=["top_potsdam_2_10_0_0"])
    assert resolved.value_range == [float(tile16.min()), float(tile16.max())]
    lo, hi = resolved.value_range
    image, _ = open_dataset(resolved, ids=["top_potsdam_2_10_32_0"])[0]
    window = tile16[32:64, 0:32].astype(np.float64)
    assert torch.equal(
        image, torch.from_numpy(((window - lo) / (hi - lo)).astype(np.float32)).permute(2, 0, 1)
    )
    with pytest.raises(ValueError, match=r"top_potsdam_2_10_RGB\.tif is 16-bit"):
        ISPRSPatches(fx.root, "potsdam", ids=["top_potsdam_2_10_0_0"], patch_size=32)[0]
    report = check_dataset(data)
    assert "mixed bit depths" in " ".join(report.warnings)  # one 16-bit tile among 8-bit ones


def test_data_check_reports_depth_and_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "m", {f"s{k}": mri_slice(seed=k) for k in range(2)})
    assert main(["data", "check", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "bit depth: 16-bit (uint16): 2 images, values 0 to 4095" in out
    assert "measured over the training images at training start" in out
    assert main(["data", "check", "--root", str(root), "--set", "data.value_range=[0, 1000]"]) == 0
    out = capsys.readouterr().out
    assert "scaled by data.value_range [0, 1000]" in out
    assert "have values outside data.value_range [0.0, 1000.0]" in out


def test_data_check_flags_unused_ranges_and_non_finite_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    eight = write_folder(tmp_path / "e", {"a": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)})
    report = check_dataset(DataConfig(root=str(eight), value_range=[0.0, 10.0]))
    assert report.ok and any(
        "data.value_range [0.0, 10.0] is not used: every image is 8-bit" in w for w in report.warnings
    )
    nan = np.ones((4, 4), dtype=np.float32)
    nan[1, 2] = np.nan
    floats = write_folder(tmp_path / "n", {"a": nan}, ext="tif")
    report = check_dataset(DataConfig(root=str(floats)))
    assert any(
        e.endswith("images/a.tif has 1 pixels with non-finite values (NaN or inf)") for e in report.errors
    )


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("[0, 4095]", True),
        ("[-1.5, 2]", True),
        ("null", True),
        ("[5, 1]", False),
        ("[0]", False),
        ("[0, inf]", False),
    ],
)
def test_config_value_range(value: str, ok: bool) -> None:
    override = [f"data.value_range={value}"]
    if ok:
        data = load_config(None, override).data
        assert data.value_range is None or len(data.value_range) == 2
    else:
        with pytest.raises(ConfigError, match=r"data\.value_range"):
            load_config(None, override)

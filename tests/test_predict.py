"""Sliding-window prediction: blending is exact where it must be, outputs and errors of `pixcon predict`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import Tensor, nn

from pixcon.checkpoint import save_checkpoint
from pixcon.cli import main
from pixcon.config import load_config, to_dict
from pixcon.models import segmenter_from_config
from pixcon.predict import (
    predict_image,
    read_image,
    sliding_window,
    tile_starts,
    window_weight,
)


class Pointwise(nn.Module):
    """A 1x1 convolution: translation-equivariant with a one-pixel receptive field."""

    stride = 32

    def __init__(self, in_channels: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return 5 * self.conv(x)


class Constant(nn.Module):
    """The same logits everywhere, whatever the input."""

    stride = 32

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone(), requires_grad=False)  # (K,)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return self.logits.view(1, -1, 1, 1).expand(b, -1, h, w)


def test_window_weight_is_smooth_positive_and_centred() -> None:
    w = window_weight(64)
    assert w.shape == (64, 64) and (w > 0).all()
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.T)
    assert w.max() == pytest.approx(w[31:33, 31:33].min().item())
    assert w.min() == pytest.approx(np.exp(-4 * (63 / 64) ** 2), rel=1e-4)  # corners: exp(-2 * 2^2 / 2)


def test_tile_starts_cover_the_axis_and_end_flush() -> None:
    assert tile_starts(64, 64, 48) == [0]
    assert tile_starts(200, 64, 48) == [0, 48, 96, 136]
    with pytest.raises(ValueError, match="shorter than the window"):
        tile_starts(10, 64, 48)


def test_image_of_window_size_equals_plain_forward() -> None:
    cfg = load_config(overrides=["model.proj_dim=8"])
    model = segmenter_from_config(cfg.model, num_classes=3).eval()
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(image[None]).softmax(1)[0]
    torch.testing.assert_close(predict_image(model, image, window=64, overlap=0.5), expected)


@pytest.mark.parametrize("size, overlap", [((100, 150), 0.5), ((64, 200), 0.25), ((97, 33), 0.0)])
def test_blending_is_exact_for_a_pointwise_model(size: tuple[int, int], overlap: float) -> None:
    model = Pointwise().eval()
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(image[None]).softmax(1)[0]  # (K, H, W)
    got = sliding_window(model, image, window=32, overlap=overlap, batch_size=3)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_weights_sum_correctly_for_a_constant_model() -> None:
    logits = torch.tensor([0.3, -1.0, 2.0, 0.0])
    image = torch.rand(3, 150, 170, generator=torch.Generator().manual_seed(2))
    got = sliding_window(Constant(logits), image, window=64, overlap=0.6, batch_size=5)
    expected = logits.softmax(0).view(-1, 1, 1).expand(-1, 150, 170)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_bad_window_and_overlap_name_the_value() -> None:
    image = torch.rand(3, 100, 100)
    with pytest.raises(ValueError, match="window 100 is not a multiple of 32"):
        predict_image(Pointwise(), image, window=100)
    with pytest.raises(ValueError, match="overlap 1.0"):
        sliding_window(Pointwise(), image, window=64, overlap=1.0)
    with pytest.raises(ValueError, match="4 bands but the model takes 3"):
        predict_image(Pointwise(), torch.rand(4, 64, 64))


def test_read_image_scales_png_and_multiband_tiff(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png", 3)
    assert img.shape == (3, 20, 30) and img.dtype == torch.float32
    torch.testing.assert_close(img, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    four = np.random.default_rng(1).integers(0, 65536, (4, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", four, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "inter.tif", np.moveaxis(four, 0, -1), photometric="rgb", extrasamples=[0])
    for name in ("planar.tif", "inter.tif"):
        # 16-bit images are scaled by the checkpoint's data.value_range (here the full uint16 range),
        # never by a guess: without a range they are refused, naming the file
        torch.testing.assert_close(
            read_image(tmp_path / name, 4, value_range=[0, 65535]),
            torch.from_numpy(four.astype(np.float32)) / 65535,
        )
        with pytest.raises(ValueError, match=rf"{name} is 16-bit \(uint16\), not 8-bit.*data.value_range"):
            read_image(tmp_path / name, 4)
    with pytest.raises(ValueError, match=r"a.png has 3 band\(s\) but the checkpoint takes 4"):
        read_image(tmp_path / "a.png", 4)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png", 3)


def _checkpoint(path: Path, in_channels: int = 3, num_classes: int = 3) -> Path:
    cfg = load_config(
        overrides=["model.proj_dim=8", f"model.in_channels={in_channels}", f"data.root={path.parent}"]
    )
    torch.manual_seed(0)
    model = segmenter_from_config(cfg.model, num_classes, in_channels)
    state = {
        "model": model.state_dict(),
        "step": 0,
        "config": to_dict(cfg),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "class_names": [f"c{k}" for k in range(num_classes)],
    }
    return save_checkpoint(state, path)


def test_predict_cli_writes_masks_and_overlays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path / "rgb.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)).save(tmp_path / "large.jpg")
    out = tmp_path / "pred"
    argv = ["predict", str(ckpt), str(tmp_path / "small.png"), str(tmp_path / "large.jpg")]
    assert main([*argv, "--out", str(out), "--window", "64", "--overlap", "0.5", "--quiet"]) == 0
    for stem, (h, w) in (("small", (40, 50)), ("large", (100, 130))):
        mask = Image.open(out / f"{stem}_mask.png")
        assert mask.mode == "P" and mask.size == (w, h)
        assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == (w, h)
    assert "large_overlay.png" in capsys.readouterr().out


def test_predict_cli_takes_a_four_band_tiff_and_quiet_hides_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path / "rgbir.pt", in_channels=4, num_classes=6)
    tile = np.random.default_rng(0).integers(0, 256, (70, 90, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tile.tif", tile, photometric="rgb", extrasamples=[0])
    argv = ["predict", str(ckpt), str(tmp_path / "tile.tif"), "--out", str(tmp_path), "--window", "64"]
    assert main(argv) == 0
    assert "tiles:" in capsys.readouterr().err  # the sliding window's progress bar
    assert logging.getLogger("pixcon").level == logging.INFO
    assert main(["-q", *argv]) == 0  # the global --quiet goes before the command
    assert "tiles" not in capsys.readouterr().err
    assert logging.getLogger("pixcon").level == logging.WARNING
    assert Image.open(tmp_path / "tile_mask.png").size == (90, 70)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "image not found: {tmp}/nope.png"),
        ("bands", "{tmp}/gray.png has 1 band(s) but the checkpoint takes 4"),
        ("window", "window 100 is not a multiple of 32"),
        ("checkpoint", "checkpoint not found: {tmp}/none.pt"),
    ],
)
def test_predict_cli_errors_name_the_file_or_value(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", in_channels=4 if case == "bands" else 3)
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "gray.png")
    image = {"missing": "nope.png"}.get(case, "gray.png")
    argv = ["predict", str(ckpt if case != "checkpoint" else tmp_path / "none.pt"), str(tmp_path / image)]
    argv += ["--out", str(tmp_path / "o"), "--window", "100" if case == "window" else "64", "--quiet"]
    assert main(argv) in (1, 2)
    assert message.format(tmp=tmp_path) in capsys.readouterr().err

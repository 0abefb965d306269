"""Every dataset format through the CLI: check, split, train one step, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dataset_layouts import write_cityscapes, write_potsdam, write_vaihingen, write_voc

from pixcon.cli import main
from pixcon.data.folder import read_ids

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16", "--quiet"]


def _write(fmt: str, root: Path) -> tuple[Path, list[str]]:
    """(data.root, extra CLI args) of a fixture in the exact layout of `fmt`."""
    if fmt == "voc":
        return write_voc(root).root, []
    if fmt == "cityscapes":
        return write_cityscapes(root).root, []
    if fmt == "potsdam":  # RGBIR: 4 bands end to end
        return write_potsdam(root).root, ["--set", "data.bands=rgbir", "--set", "data.patch_size=32"]
    return write_vaihingen(root).root, ["--set", "data.patch_size=32", "--set", "data.patch_stride=24"]


@pytest.mark.parametrize("fmt", ["voc", "cityscapes", "potsdam", "vaihingen"])
def test_check_split_train_evaluate(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, extra = _write(fmt, tmp_path / fmt)
    data = ["--format", fmt, "--root", str(root), *extra]

    assert main(["data", "check", *data]) == 0
    report = capsys.readouterr().out
    assert f"{fmt} dataset at {root}" in report

    assert main(["split", *data, "--fractions", "0.5,1", "--seeds", "0", "--stratify", "--out", str(tmp_path / "s")]) == 0  # fmt: skip
    half = read_ids(tmp_path / "s" / "labeled_50pct_seed0.txt")
    assert set(half) <= set(read_ids(tmp_path / "s" / "labeled_100pct_seed0.txt"))

    out = tmp_path / "run"
    run = [
        "train",
        "--format",
        fmt,
        "--data-root",
        str(root),
        "--out",
        str(out),
        "--steps",
        "1",
        *extra,
        *TINY,
    ]
    assert main([*run, "--labeled-split", str(tmp_path / "s" / "labeled_100pct_seed0.txt")]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["in_channels"] == (4 if fmt == "potsdam" else 3)
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), "--split", "val", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert len(scores["iou_per_class"]) == {"voc": 21, "cityscapes": 19, "potsdam": 6, "vaihingen": 6}[fmt]


def test_check_reports_problems_and_training_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx = write_voc(tmp_path / "voc")
    broken = fx.voc2012 / "SegmentationClass" / f"{fx.train[1]}.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    (fx.voc2012 / "JPEGImages" / f"{fx.val[0]}.jpg").unlink()
    assert main(["data", "check", "--format", "voc", "--root", str(fx.root)]) == 1
    out = capsys.readouterr().out
    assert str(broken) in out and fx.val[0] in out
    run = [
        "train",
        "--format",
        "voc",
        "--data-root",
        str(fx.root),
        "--out",
        str(tmp_path / "r"),
        "--steps",
        "1",
        *TINY,
    ]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and not (tmp_path / "r" / "last.pt").exists()

"""``pixcon condense`` through its own argparse parser (`add_arguments` + `run`), for both tasks; the
condensed segmentation folder is then trained on by ``pixcon train``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from pixcon.condense.cli import add_arguments, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixcon condense")
    add_arguments(parser)
    return parser


def _condense(argv: list[str]) -> int:
    return run(_parser().parse_args(argv))


CLASSIFICATION = [
    "--task",
    "classification",
    "--ipc",
    "1",
    "--iterations",
    "2",
    "--width",
    "8",
    "--depth",
    "2",
    "--batch-real",
    "4",
    "--quiet",
]


def test_classification_end_to_end(
    fake_fashion: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dcc"
    argv = [*CLASSIFICATION, "--fashion-path", str(fake_fashion), "--out", str(out), "--method", "dcc"]
    assert _condense([*argv, "--eval-runs", "2", "--eval-epochs", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["task"] == "classification"
    m = summary["config"]["matching"]
    # unset loops are the papers' for DCC at 1 image per class; the warm-up is a quarter of K
    assert (m["matching_steps"], m["net_steps"], m["warmup_iterations"], m["warmup_steps"]) == (10, 5, 0, 10)
    assert m["lr_images"] == 0.1
    ev = summary["evaluation"]
    assert len(ev["test_acc"]) == 2 and 0 <= ev["mean"] <= 1 and ev["eval"]["epochs"] == 2
    assert (out / "synthetic_grid.png").is_file() and (out / "checkpoint.pt").is_file()
    assert torch.load(out / "synthetic.pt", weights_only=True)["images"].shape == (10, 1, 28, 28)
    printed = capsys.readouterr().out
    assert "test accuracy over 2 fresh ConvNets" in printed and "summary:" in printed

    # resume through the CLI: the run grows to 3 iterations; without --resume it refuses
    with pytest.raises(FileExistsError, match="--resume"):
        _condense(argv)
    assert _condense([*argv, "--iterations", "3", "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == 3


def test_classification_dc_with_dsa_and_explicit_loops(fake_fashion: Path, tmp_path: Path) -> None:
    out = tmp_path / "dc"
    argv = [*CLASSIFICATION, "--fashion-path", str(fake_fashion), "--out", str(out), "--method", "dc"]
    argv += ["--dsa", "--dsa-strategy", "crop_flip", "--matching-steps", "2", "--net-steps", "1"]
    assert _condense(argv) == 0
    cfg = json.loads((out / "summary.json").read_text())["config"]
    assert cfg["matching"]["dsa"] and cfg["matching"]["dsa_strategy"] == ["crop", "flip"]
    assert (cfg["matching"]["matching_steps"], cfg["matching"]["net_steps"]) == (2, 1)


def test_argument_errors(fake_fashion: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs --data-root"):
        _condense(["--task", "segmentation", "--out", str(tmp_path / "s")])
    with pytest.raises(ValueError, match="unknown DSA transformation"):
        _condense(
            [
                *CLASSIFICATION,
                "--fashion-path",
                str(fake_fashion),
                "--out",
                str(tmp_path),
                "--dsa-strategy",
                "blur",
            ]
        )
    with pytest.raises(ValueError, match="--iterations must be >= 1"):
        _condense([*CLASSIFICATION, "--out", str(tmp_path), "--iterations", "0"])
    with pytest.raises(ValueError, match="loop lengths for"):
        _condense(
            [*CLASSIFICATION, "--fashion-path", str(fake_fashion), "--out", str(tmp_path), "--ipc", "3"]
        )
    with pytest.raises(SystemExit):
        _parser().parse_args(["--task", "detection", "--out", "x"])


def test_segmentation_end_to_end_then_pixcon_train(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "condensed"
    argv = ["--task", "segmentation", "--data-root", str(tiny_dataset), "--out", str(out), "--quiet"]
    argv += ["--num-images", "2", "--iterations", "1", "--matching-steps", "2", "--net-steps", "1"]
    argv += ["--batch-real", "2", "--arch", "fpn", "--encoder", "tu-resnet10t", "--method", "dcc"]
    assert _condense(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "segmentation" and len(summary["source_ids"]) == 2
    assert summary["config"]["matching"]["lr_images"] == 1e-4  # the segmentation default, not 0.1
    assert summary["next"] == f"pixcon train --data-root {out}"

    from pixcon.cli import main

    run_dir = tmp_path / "train"
    train = ["train", "--data-root", str(out), "--out", str(run_dir), "--steps", "2", "--quiet"]
    train += ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16"]
    assert main(train) == 0
    assert (run_dir / "last.pt").is_file()
    scores = tmp_path / "scores.json"
    assert (
        main(["evaluate", str(run_dir / "last.pt"), "--split", "test", "--out", str(scores), "--quiet"]) == 0
    )
    assert 0.0 <= json.loads(scores.read_text())["miou"] <= 1.0


def test_cli_module_does_not_import_torch() -> None:
    """`pixcon --help` builds this parser: it must stay torch-free to stay fast."""
    import subprocess

    code = (
        "import argparse, sys; from pixcon.condense.cli import add_arguments; "
        "add_arguments(argparse.ArgumentParser()); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"

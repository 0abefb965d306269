"""The single commands (`pixcon train`, `pretrain` -> `finetune`, `evaluate`) and `pixcon study` give
the same numbers for the same settings: both take their defaults from the recipe records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixcon.cli import main

SET = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16"]
SET += ["--set", "model.encoder=mobilenet_v2"]  # checkpoints of 9 MB, not 50


@pytest.fixture(scope="module")
def study(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("single")
    data = tiny_dataset
    out = root / "study"
    argv = ["study", "--data-root", str(data), "--out", str(out), "--fractions", "0.5", "--seeds", "1"]
    argv += ["--methods", "ce,contrast", "--pretrain-steps", "2", "--finetune-steps", "3", *SET]
    assert main([*argv, "--quiet", "--no-report"]) == 0
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    return data, out, runs


def _test_miou(checkpoint: Path, tmp_path: Path) -> float:
    scores = tmp_path / f"{checkpoint.parent.name}.json"
    assert main(["evaluate", str(checkpoint), "--split", "test", "--out", str(scores), "--quiet"]) == 0
    return float(json.loads(scores.read_text())["miou"])


def test_train_equals_the_studys_ce_run(study: tuple[Path, Path, dict], tmp_path: Path) -> None:
    data, out, runs = study
    split = out / "label_splits" / "labeled_50pct_seed1.txt"
    argv = ["train", "--data-root", str(data), "--labeled-split", str(split), "--seed", "1"]
    argv += ["--steps", "5", "--out", str(tmp_path / "ce"), "--quiet", *SET]
    assert main(argv) == 0
    assert _test_miou(tmp_path / "ce" / "last.pt", tmp_path) == runs["ce"]["test_miou"]


def test_pretrain_finetune_equals_the_studys_contrast_run(
    study: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    data, out, runs = study
    split = out / "label_splits" / "labeled_50pct_seed1.txt"
    common = ["--data-root", str(data), "--labeled-split", str(split), "--seed", "1", "--quiet", *SET]
    assert main(["pretrain", *common, "--steps", "2", "--out", str(tmp_path / "pre")]) == 0
    ft = ["finetune", *common, "--steps", "3", "--init-from", str(tmp_path / "pre" / "last.pt")]
    assert main([*ft, "--out", str(tmp_path / "ft")]) == 0
    assert _test_miou(tmp_path / "ft" / "last.pt", tmp_path) == runs["contrast"]["test_miou"]

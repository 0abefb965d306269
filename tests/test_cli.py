"""End to end through the CLI on a tiny generated dataset: pretrain -> finetune -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixcon.cli import main

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=4", "--set", "model.proj_dim=16", "--quiet"]


def _args(data: Path, out: Path, steps: int = 3) -> list[str]:
    return ["--data-root", str(data), "--out", str(out), "--steps", str(steps), *TINY]


def test_pretrain_finetune_evaluate(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tmp_path / "labeled.txt"
    split.write_text("train_000\ntrain_001\ntrain_002\ntrain_003\n")
    assert main(["pretrain", *_args(tiny_dataset, tmp_path / "pre"), "--labeled-split", str(split)]) == 0
    pre = torch.load(tmp_path / "pre" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "step", "config", "metrics", "rng"} <= pre.keys()
    assert pre["step"] == 3 and pre["kind"] == "contrast"
    assert (tmp_path / "pre" / "config.yaml").is_file()
    csv_text = (tmp_path / "pre" / "metrics.csv").read_text()
    assert "train/contrast" in csv_text

    ft_args = [
        "finetune",
        *_args(tiny_dataset, tmp_path / "ft"),
        "--init-from",
        str(tmp_path / "pre" / "last.pt"),
    ]
    assert main(ft_args) == 0
    ft = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    # fine-tuning started from the pretrained encoder, not from a fresh one
    key = "net.encoder.conv1.weight"
    assert not torch.equal(ft["model"][key], pre["model"][key])
    assert 0.0 <= ft["metrics"]["miou"] <= 1.0 and ft["kind"] == "ce"

    out_json = tmp_path / "scores.json"
    assert (
        main(["evaluate", str(tmp_path / "ft" / "last.pt"), "--split", "test", "--out", str(out_json)]) == 0
    )
    scores = json.loads(out_json.read_text())
    assert set(scores["iou_per_class"]) == {"c0", "c1", "c2"}
    assert 0.0 <= scores["miou"] <= 1.0
    assert "miou" in capsys.readouterr().out


def test_joint_baseline_logs_both_terms(tiny_dataset: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "train",
                *_args(tiny_dataset, tmp_path / "joint", steps=2),
                "--joint",
                "--set",
                "train.log_every=1",
            ]
        )
        == 0
    )
    text = (tmp_path / "joint" / "metrics.csv").read_text()
    assert "train/ce" in text and "train/contrast" in text and "val/miou" in text


def test_resume_after_interruption_matches_uninterrupted(
    tiny_dataset: Path, tmp_path: Path, crash_after_first_checkpoint: list[int]
) -> None:
    common = ["--set", "train.eval_every=2", "--set", "data.color_jitter=0.2"]
    assert main(["train", *_args(tiny_dataset, tmp_path / "full", steps=4), *common]) == 0

    calls = crash_after_first_checkpoint.arm()
    with pytest.raises(KeyboardInterrupt):
        main(["train", *_args(tiny_dataset, tmp_path / "cut", steps=4), *common])
    assert calls == [2]  # died right after the step-2 checkpoint
    calls.restore()
    assert main(["train", *_args(tiny_dataset, tmp_path / "cut", steps=4), *common, "--resume"]) == 0

    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert cut["step"] == 4
    for k, v in full["model"].items():
        torch.testing.assert_close(cut["model"][k], v, rtol=0, atol=0, msg=k)
    assert cut["metrics"]["miou"] == full["metrics"]["miou"]


def test_resume_refuses_a_different_config(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *_args(tiny_dataset, tmp_path / "r", steps=1)]) == 0
    assert (
        main(["train", *_args(tiny_dataset, tmp_path / "r", steps=2), "--resume", "--set", "optim.lr=0.5"])
        == 1
    )
    assert "optim section differs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "--set", "loss.temprature=0.1"], "unknown key loss.temprature"),
        (["pretrain", "--set", "loss.temperature=-1"], "loss.temperature: -1.0 is out of range"),
        (["finetune"], "--init-from"),
        (["train", "--data-root", "/nonexistent/folder"], "/nonexistent/folder"),
    ],
)
def test_clear_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_split_rejects_fraction_outside_unit_interval(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["split", "--root", str(tiny_dataset), "--fractions", "0.5,1.5", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1.5" in err and "(0, 1]" in err


def test_unlabeled_pool_is_the_rest_of_the_train_split(tiny_dataset: Path, tmp_path: Path) -> None:
    from pixcon.config import load_config
    from pixcon.train.data import build_datasets

    split = tmp_path / "labeled.txt"
    split.write_text("train_005\ntrain_002\n")
    cfg = load_config(overrides=[f"data.root={tiny_dataset}", f"data.labeled_split={split}"])
    data = build_datasets(cfg)
    assert data.train.ids == ["train_005", "train_002"]
    assert data.unlabeled_ids == [f"train_{i:03d}" for i in range(8) if i not in (2, 5)]


@pytest.mark.parametrize(
    "argv, objective",
    [
        (["pretrain"], "contrast"),
        (["pretrain", "--set", "train.objective=glcnet"], "glcnet"),
        (["pretrain", "--objective", "hcsc", "--set", "train.objective=glcnet"], "hcsc"),
        (["finetune", "--init-from", "PRE", "--set", "train.objective=glcnet"], "ce"),
        (["train", "--joint"], "joint"),
    ],
)
def test_objective_from_command_flag_and_config(argv: list[str], objective: str, tmp_path: Path) -> None:
    from pixcon.cli import _run_config, build_parser

    argv = [_init_checkpoint(tmp_path) if a == "PRE" else a for a in argv]
    assert _run_config(build_parser().parse_args(argv)).train.objective == objective


def _init_checkpoint(tmp_path: Path) -> str:
    """A contrast checkpoint file with no weights: finetune reads its config for its defaults."""
    from pixcon.checkpoint import save_checkpoint
    from pixcon.config import load_config, to_dict

    cfg = to_dict(load_config(overrides=["train.objective=contrast", "model.proj_layers=1"]))
    return str(save_checkpoint({"model": {}, "step": 1, "config": cfg}, tmp_path / "pre.pt"))


def test_head_init_flag_sets_the_config_and_needs_init_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixcon.cli import _run_config, build_parser

    argv = ["finetune", "--init-from", _init_checkpoint(tmp_path), "--head-init", "random"]
    assert (
        _run_config(build_parser().parse_args(argv)).train.head_init == "random"
    )  # the recipe's: prototypes
    assert main(["train", "--head-init", "prototypes", "--steps", "1", "--quiet"]) == 2
    assert "train.head_init" in capsys.readouterr().err


def test_unsupported_precision_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--precision", "bf16-true", "--steps", "1"]) == 2
    assert "train.precision: must be one of" in capsys.readouterr().err


def test_help_does_not_import_torch() -> None:
    # `pixcon --help` and argument errors answer at once: building the parser imports no torch
    import subprocess
    import sys

    code = "import sys, pixcon.cli as c; c.build_parser(); print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

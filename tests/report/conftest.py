"""A tiny demo-like directory (results.json and runs/ in the demo's layout) trained on the tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixcon.cli import main
from pixcon.inference import evaluate_checkpoint
from pixcon.report.tables import summarize

TINY = [
    "--set", "data.image_size=32", "--set", "data.batch_size=4", "--set", "model.proj_dim=16",
    "--set", "train.log_every=1", "--quiet",
]  # fmt: skip


def _train(command: str, data: Path, out: Path, steps: int, *extra: str) -> Path:
    argv = [command, "--data-root", str(data), "--out", str(out), "--steps", str(steps), *TINY, *extra]
    assert main(argv) == 0
    return out / "last.pt"


def make_demo_dir(root: Path, data: Path, steps: int = 3) -> Path:
    """OUT/runs/{ce,contrast}_f1_s0 and OUT/results.json as `pixcon demo` writes them (one seed)."""
    runs_dir = root / "runs"
    ce = _train("train", data, runs_dir / "ce_f1_s0", 2 * steps)
    pre = _train("pretrain", data, runs_dir / "contrast_f1_s0" / "pretrain", steps)
    ft = _train("finetune", data, runs_dir / "contrast_f1_s0" / "finetune", steps, "--init-from", str(pre))
    runs = []
    for method, ckpt in (("ce", ce), ("contrast", ft)):
        scores = evaluate_checkpoint(ckpt, split="test")
        runs.append(
            {
                "method": method,
                "fraction": 1.0,
                "seed": 0,
                "num_labeled": 8,
                "test_miou": scores["miou"],
                "iou_per_class": scores["iou_per_class"],
                "checkpoint": str(ckpt),
            }
        )
    results = {
        "options": {"methods": ["ce", "contrast"]},
        "runs": runs,
        "summary": summarize(runs, (1.0,), ("ce", "contrast")),
    }
    (root / "results.json").write_text(json.dumps(results, indent=2))
    return root


@pytest.fixture(scope="session")
def demo_dir(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dir(tmp_path_factory.mktemp("demo"), tiny_dataset)


@pytest.fixture(scope="session")
def demo_report(demo_dir: Path) -> Path:
    """The report of the tiny demo directory (few t-SNE pixels to stay fast)."""
    from pixcon.report import ReportOptions, build_report

    return build_report([demo_dir], demo_dir / "report.html", ReportOptions(tsne_pixels=150))

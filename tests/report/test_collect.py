"""Finding runs and picking the checkpoints to compare, on directory trees without real checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pixcon.report.collect import collect, find_run_dirs, pick_predictors, pick_pretrained


def _run(path: Path, objective: str, init_from: str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "last.pt").write_bytes(b"")
    cfg = {"train": {"objective": objective, "init_from": init_from}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return path


def test_demo_layout_roles_and_picks(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for f in ("0.05", "0.25"):
        for s in (0, 1):
            _run(runs / f"ce_f{f}_s{s}", "ce")
            _run(runs / f"joint_f{f}_s{s}", "joint")
            pre = _run(runs / f"contrast_f{f}_s{s}" / "pretrain", "contrast")
            _run(runs / f"contrast_f{f}_s{s}" / "finetune", "ce", init_from=str(pre / "last.pt"))
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "results.json").write_text('{"runs": [], "summary": []}')
    col = collect([tmp_path])
    assert len(col.demos) == 1 and len(col.runs) == 16
    roles = {r.name: r.role for r in col.runs}
    assert roles["runs/ce_f0.05_s0"] == "ce" and roles["runs/joint_f0.25_s1"] == "joint"
    assert roles["runs/contrast_f0.05_s1/pretrain"] == "pretrain"
    assert roles["runs/contrast_f0.05_s1/finetune"] == "contrast"
    predictors = pick_predictors(col.runs)
    assert [(label, r.name) for label, r in predictors] == [
        ("CE only", "runs/ce_f0.05_s0"),
        ("contrastive", "runs/contrast_f0.05_s0/finetune"),
    ]
    pre = pick_pretrained(col.runs, predictors)
    assert pre is not None and pre.name == "runs/contrast_f0.05_s0/pretrain" and pre.trains_projection


def test_single_run_dirs(tmp_path: Path) -> None:
    ce = _run(tmp_path / "ce", "ce")
    col = collect([ce])
    assert [r.name for r in col.runs] == ["ce"] and not col.demos
    assert [label for label, _ in pick_predictors(col.runs)] == ["CE only"]
    pre_only = collect([_run(tmp_path / "pre", "glcnet")])
    assert pick_predictors(pre_only.runs) == []
    picked = pick_pretrained(pre_only.runs, [])
    assert picked is not None and picked.role == "pretrain" and not picked.trains_projection


def test_inputs_without_runs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        collect([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no results.json and no run"):
        collect([tmp_path / "empty"])
    assert find_run_dirs(tmp_path) == []

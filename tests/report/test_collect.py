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


def test_all_methods_layout_picks_ce_and_contrast(tmp_path: Path) -> None:
    """`pixcon demo --methods all`: every recipe has a CE fine-tune stage; only the method
    ``contrast`` is the contrastive model, however the folders sort."""
    runs = tmp_path / "runs"
    for method, objective in (("dense_simclr", "dense_simclr"), ("ariel", "ariel"), ("contrast", "contrast")):
        for f in ("0.05", "0.25"):
            pre = _run(runs / f"{method}_f{f}_s0" / "pretrain", objective)
            _run(runs / f"{method}_f{f}_s0" / "finetune", "ce", init_from=str(pre / "last.pt"))
    ssl = _run(runs / "ssl_contrast_f0.05_s0" / "ssl", "dense_simclr")
    con = _run(runs / "ssl_contrast_f0.05_s0" / "contrast", "contrast", init_from=str(ssl / "last.pt"))
    _run(runs / "ssl_contrast_f0.05_s0" / "finetune", "ce", init_from=str(con / "last.pt"))
    _run(runs / "ce_f0.05_s0", "ce")
    _run(runs / "ce_f1e-05_s12", "ce")
    (tmp_path / "results.json").write_text('{"runs": [], "summary": []}')
    col = collect([tmp_path])
    by_name = {r.name: r for r in col.runs}
    assert len(by_name) == 17
    parsed = {(r.method, r.fraction, r.seed, r.stage) for r in col.runs}
    assert ("dense_simclr", 0.05, 0, "pretrain") in parsed and ("dense_simclr", 0.25, 0, "finetune") in parsed
    assert ("ssl_contrast", 0.05, 0, "contrast") in parsed and ("ariel", 0.05, 0, "finetune") in parsed
    assert ("ce", 0.05, 0, None) in parsed and ("ce", 1e-05, 12, None) in parsed
    roles = {name: r.role for name, r in by_name.items()}
    assert roles["runs/ce_f0.05_s0"] == "ce"
    assert roles["runs/contrast_f0.05_s0/finetune"] == "contrast"
    assert roles["runs/contrast_f0.05_s0/pretrain"] == "pretrain"
    for other in ("ariel", "dense_simclr", "ssl_contrast"):  # fine-tuned from a checkpoint, not "contrast"
        assert roles[f"runs/{other}_f0.05_s0/finetune"] == "other"
    assert roles["runs/ariel_f0.05_s0/pretrain"] == roles["runs/ssl_contrast_f0.05_s0/ssl"] == "pretrain"
    # heads from the objective registry
    assert by_name["runs/dense_simclr_f0.05_s0/pretrain"].trains_projection
    assert not by_name["runs/dense_simclr_f0.05_s0/pretrain"].predicts
    assert by_name["runs/ariel_f0.05_s0/finetune"].predicts
    predictors = pick_predictors(col.runs)
    assert [(label, r.name) for label, r in predictors] == [
        ("CE only", "runs/ce_f0.05_s0"),
        ("contrastive", "runs/contrast_f0.05_s0/finetune"),
    ]
    pre = pick_pretrained(col.runs, predictors)
    assert pre is not None and pre.name == "runs/contrast_f0.05_s0/pretrain" and pre.trains_projection
    # without the contrastive fine-tune, its pretraining is still the one whose embeddings are shown
    shown = [r for r in col.runs if not (r.method == "contrast" and r.stage == "finetune")]
    predictors = pick_predictors(shown)
    assert [label for label, _ in predictors] == ["CE only"]
    pre = pick_pretrained(shown, predictors)
    assert pre is not None and pre.name == "runs/contrast_f0.05_s0/pretrain"


def test_plain_run_dirs_fall_back_on_the_config(tmp_path: Path) -> None:
    """Outside a demo layout (or a name that is no recipe) the role comes from the config."""
    pre = _run(tmp_path / "mypre", "contrast")
    _run(tmp_path / "myft", "ce", init_from=str(pre / "last.pt"))
    _run(tmp_path / "scratch_f1_s0", "ce")  # looks like a demo run, but "scratch" is no recipe
    _run(tmp_path / "odd", "no_such_objective")
    col = collect([tmp_path])
    roles = {r.name: r.role for r in col.runs}
    assert roles == {"mypre": "pretrain", "myft": "contrast", "scratch_f1_s0": "ce", "odd": "pretrain"}
    odd = next(r for r in col.runs if r.name == "odd")
    assert not odd.predicts and not odd.trains_projection
    predictors = pick_predictors(col.runs)
    assert [(label, r.name) for label, r in predictors] == [
        ("CE only", "scratch_f1_s0"),
        ("contrastive", "myft"),
    ]
    pre = pick_pretrained(col.runs, predictors)
    assert pre is not None and pre.name == "mypre"


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


def test_multidomain_trains_the_projection_head_only_at_the_pixel_level(tmp_path: Path) -> None:
    from pixcon.report.collect import RunInfo

    def run(**md: object) -> RunInfo:
        return RunInfo("md", tmp_path, objective="multidomain", config={"multidomain": md})

    assert not run().trains_projection  # default: image level
    assert run(level="pixel").trains_projection
    assert not run(level="pixel", weight=0.0).trains_projection  # regulariser off
    assert run().predicts
    # runs of this version: any objective on several domains (multidomain.domains)
    ce = RunInfo("md", tmp_path, objective="ce", config={"multidomain": {"level": "pixel", "domains": [{}]}})
    assert ce.trains_projection and ce.predicts
    single = RunInfo("one", tmp_path, objective="ce", config={"multidomain": {"level": "pixel"}})
    assert not single.trains_projection  # one domain: no regulariser

"""`pixcon demo` end to end at tiny sizes (needs the Fashion-MNIST files of dataset-fashion-mnist)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pixcon.cli import main
from pixcon.data.fashion import find_fashion_mnist
from pixcon.experiments.demo import DemoOptions
from pixcon.report.tables import format_table, summarize

try:
    find_fashion_mnist()
    HAVE_FASHION = True
except FileNotFoundError:
    HAVE_FASHION = False


@pytest.mark.skipif(
    not HAVE_FASHION, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)
def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "demo", "--out", str(tmp_path), "--quick", "--quiet", "--fractions", "0.25", "--seeds", "0,1",
        "--methods", "ce,contrast", "--steps", "2", "--pretrain-steps", "2", "--num-train", "12", "--num-test", "4",
        "--image-size", "32", "--batch-size", "2", "--set", "model.proj_dim=16",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| method | 25% (3 img) |" in out and "| contrast -> CE (Zhao) |" in out
    result = json.loads((tmp_path / "results.json").read_text())
    assert len(result["runs"]) == 4
    assert {(r["method"], r["seed"]) for r in result["runs"]} == {
        ("ce", 0),
        ("ce", 1),
        ("contrast", 0),
        ("contrast", 1),
    }
    assert all(0.0 <= r["test_miou"] <= 1.0 for r in result["runs"])
    assert (tmp_path / "miou_vs_fraction.png").stat().st_size > 1000
    assert (tmp_path / "results.csv").read_text().count("\n") == 5
    # the coarse style by default: the dataset the demo's budget can learn
    assert (
        yaml.safe_load((tmp_path / "data" / "meta.yaml").read_text())["name"]
        == "pixcon-fashion-scenes-coarse"
    )
    # the pretrain stage ran and fed the fine-tuning stage
    assert (tmp_path / "runs" / "contrast_f0.25_s0" / "pretrain" / "last.pt").is_file()


@pytest.mark.skipif(
    not HAVE_FASHION, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)
def test_demo_contrast_joint_ft_fine_tunes_with_the_joint_objective(tmp_path: Path) -> None:
    argv = [
        "demo", "--out", str(tmp_path), "--quick", "--quiet", "--no-report", "--fractions", "0.25", "--seeds", "0",
        "--methods", "contrast_joint_ft", "--steps", "2", "--pretrain-steps", "2", "--num-train", "12",
        "--num-test", "4", "--image-size", "32", "--batch-size", "2", "--set", "model.proj_dim=16",
    ]  # fmt: skip
    assert main(argv) == 0
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert run["method"] == "contrast_joint_ft" and 0.0 <= run["test_miou"] <= 1.0
    stage = tmp_path / "runs" / "contrast_joint_ft_f0.25_s0"
    ckpt = torch.load(stage / "finetune" / "last.pt", map_location="cpu", weights_only=False)
    train = ckpt["config"]["train"]
    assert (train["objective"], train["head_init"]) == ("joint", "prototypes")
    assert train["init_from"] == str(stage / "pretrain" / "last.pt")


def test_summary_and_table_from_known_runs() -> None:
    runs = [
        {"method": m, "fraction": 0.1, "seed": s, "num_labeled": 5, "test_miou": v}
        for m, s, v in [("ce", 0, 0.20), ("ce", 1, 0.30), ("contrast", 0, 0.40), ("contrast", 1, 0.44)]
    ]
    summary = summarize(runs, (0.1,), ("ce", "contrast"))
    assert summary[0]["ce"]["mean"] == pytest.approx(0.25)
    assert summary[0]["ce"]["std"] == pytest.approx(0.0707106781)
    assert summary[0]["gain"]["mean"] == pytest.approx(0.17)  # paired by seed: (0.20, 0.14)
    assert summary[0]["gains"]["contrast"] == summary[0]["gain"]
    table = format_table(summary, ("ce", "contrast"))
    assert "| CE only | 25.0 ± 7.1 |" in table
    assert "| contrast -> CE (Zhao) | 42.0 ± 2.8 (+17.0 ± 4.2) |" in table


def test_bad_demo_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--methods", "ce,simclr9"]) == 2
    assert "unknown ['simclr9']" in capsys.readouterr().err
    assert main(["demo", "--fractions", "0.1,abc"]) == 2
    assert "--fractions" in capsys.readouterr().err
    assert DemoOptions.quick().pretrain_steps < DemoOptions().pretrain_steps


def test_methods_all_means_every_recipe() -> None:
    from pixcon.cli import _demo_options, build_parser
    from pixcon.recipes import RECIPES

    args = build_parser().parse_args(["demo", "--methods", "all"])
    assert _demo_options(args).methods == tuple(RECIPES)
    args = build_parser().parse_args(["demo", "--methods", "ce,glcnet,pseudo"])
    assert _demo_options(args).methods == ("ce", "glcnet", "pseudo")


def test_demo_configs_are_the_recipe_records_under_the_demo_settings(tmp_path: Path) -> None:
    from pixcon.experiments.demo import _base_configs
    from pixcon.recipes import recipe_defaults

    configs = _base_configs(DemoOptions(methods=("ce", "contrast", "joint")), tmp_path)
    for method, cfg in configs.items():
        record = recipe_defaults(method)
        assert cfg.optim.lr == record["optim"]["lr"] and cfg.optim.name == record["optim"]["name"]
        assert (cfg.loss.temperature, cfg.loss.variant) == (
            record["loss"]["temperature"],
            record["loss"]["variant"],
        )
        assert cfg.model.proj_layers == record["model"]["proj_layers"], method
        # the demo's own data and budget settings
        assert (cfg.data.root, cfg.data.color_jitter, cfg.loss.max_pixels) == (str(tmp_path), 0.0, 1024)
    # the values the recipe sweep chose (docs/experiments/recipe_sweep.md), as the demo runs them
    assert (configs["ce"].optim.lr, configs["contrast"].optim.lr, configs["joint"].optim.lr) == (
        3e-3,
        1e-2,
        3e-3,
    )
    assert configs["contrast"].loss.project_sampled and configs["contrast"].model.proj_layers == 1
    assert (DemoOptions().pretrain_steps, DemoOptions().finetune_steps) == (20, 60)


def test_demo_flags_and_set_overrides_win_over_the_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixcon.cli import _demo_options, build_parser
    from pixcon.experiments.demo import _base_configs

    extra = ["data.color_jitter=0.4", "model.proj_layers=2", "optim.lr=0.01"]
    cfg = _base_configs(DemoOptions(lr=3e-4, extra=extra), tmp_path)["contrast"]
    assert (cfg.data.color_jitter, cfg.model.proj_layers, cfg.optim.lr) == (0.4, 2, 0.01)
    cfg = _base_configs(DemoOptions(lr=3e-4, temperature=0.2), tmp_path)["ce"]
    assert (cfg.optim.lr, cfg.loss.temperature) == (3e-4, 0.2)
    args = build_parser().parse_args(["demo", "--variant", "batch"])
    assert _base_configs(_demo_options(args), tmp_path)["contrast"].loss.variant == "batch"
    args = build_parser().parse_args(["demo", "--data-seed", "1", "--style", "default"])
    assert (_demo_options(args).data_seed, _demo_options(args).style) == (1, "default")
    assert (DemoOptions().data_seed, DemoOptions().style) == (0, "coarse")
    opts = DemoOptions(variant="batch", extra=["loss.variant=within"])
    assert _base_configs(opts, tmp_path)["contrast"].loss.variant == "within"  # --set wins
    assert main(["demo", "--variant", "pairs"]) == 2  # argparse's exit status, returned
    assert "invalid choice: 'pairs'" in capsys.readouterr().err
    assert main(["demo", "--style", "aux"]) == 2  # the multi-domain auxiliary dataset is no demo
    assert "invalid choice: 'aux'" in capsys.readouterr().err


@pytest.mark.skipif(
    not HAVE_FASHION, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)
def test_demo_multidomain_row_trains_with_the_aux_dataset(tmp_path: Path) -> None:
    argv = [
        "demo", "--out", str(tmp_path / "demo"), "--quick", "--quiet", "--no-report", "--fractions", "0.25",
        "--seeds", "0", "--methods", "multidomain", "--steps", "1", "--pretrain-steps", "1", "--num-train", "12",
        "--num-test", "4", "--image-size", "32", "--batch-size", "2", "--set", "model.proj_dim=16",
    ]  # fmt: skip
    assert main(argv) == 0
    aux = tmp_path / "demo" / "data-aux"
    assert yaml.safe_load((aux / "meta.yaml").read_text())["style"] == "aux"
    state = torch.load(tmp_path / "demo" / "runs" / "multidomain_f0.25_s0" / "last.pt", weights_only=False)
    assert [d["name"] for d in state["domains"]] == ["data", "aux"]
    assert state["domains"][1]["data"]["root"] == str(aux)
    result = json.loads((tmp_path / "demo" / "results.json").read_text())
    (run,) = result["runs"]
    assert run["method"] == "multidomain" and len(run["iou_per_class"]) == 8  # the demo's (coarse) classes


@pytest.mark.skipif(
    not HAVE_FASHION, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)
def test_demo_class_frequencies_reach_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from PIL import Image

    from pixcon.data.synthetic import FASHION_CLASSES, NUM_STUFF

    kept = ("trouser", "bag")
    freqs = ",".join(f"{name}=0" for name in FASHION_CLASSES if name not in kept)
    argv = [
        "demo", "--out", str(tmp_path / "demo"), "--quick", "--quiet", "--no-report", "--fractions", "0.25",
        "--seeds", "0", "--methods", "ce", "--steps", "1", "--pretrain-steps", "1", "--num-train", "12",
        "--num-test", "4", "--image-size", "32", "--batch-size", "2", "--class-frequencies", freqs,
        "--style", "default",
    ]  # fmt: skip
    assert main(argv) == 0
    data = tmp_path / "demo" / "data"
    weights = yaml.safe_load((data / "meta.yaml").read_text())["class_frequencies"]
    assert {name for name, w in weights.items() if w > 0} == set(kept)
    present = set()
    for mask in (data / "masks").glob("*.png"):
        present |= {int(c) for c in np.unique(np.asarray(Image.open(mask)))}
    things = {FASHION_CLASSES[c - NUM_STUFF] for c in present if c >= NUM_STUFF}
    assert things and things <= set(kept)
    # the same --data-dir with other weights is refused, naming the difference
    argv[argv.index("--class-frequencies") + 1] = "bag=0.5"
    argv += ["--data-dir", str(data)]
    assert main(argv) == 2
    assert "generated with other arguments (class_frequencies" in capsys.readouterr().err


def test_demo_class_frequencies_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--class-frequencies", "bag"]) == 2
    assert "'bag' must look like name=weight" in capsys.readouterr().err
    assert main(["demo", "--class-frequencies", "hat=1", "--out", "/nonexistent/never"]) == 2
    assert "unknown clothing class 'hat'" in capsys.readouterr().err


@pytest.mark.skipif(
    not HAVE_FASHION, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)
def test_demo_jobs_give_the_runs_of_one_process(tmp_path: Path) -> None:
    # worker processes get 1/jobs of the parent's threads: with one thread in both, every run of
    # --jobs 2 equals the run of --jobs 1, in the same order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for jobs in (1, 2):
            argv = [
                "demo", "--out", str(tmp_path / f"j{jobs}"), "--data-dir", str(tmp_path / "data"), "--quick",
                "--quiet", "--no-report", "--fractions", "0.25", "--seeds", "0", "--methods", "ce,contrast",
                "--steps", "2", "--pretrain-steps", "2", "--num-train", "12", "--num-test", "4",
                "--image-size", "32", "--batch-size", "2", "--set", "model.proj_dim=16", "--jobs", str(jobs),
            ]  # fmt: skip
            assert main(argv) == 0
            results[jobs] = json.loads((tmp_path / f"j{jobs}" / "results.json").read_text())["runs"]
    finally:
        torch.set_num_threads(threads)
    keys = ("method", "fraction", "seed", "num_labeled", "test_miou", "test_kappa", "iou_per_class")
    assert [{k: r[k] for k in keys} for r in results[2]] == [{k: r[k] for k in keys} for r in results[1]]
    assert [r["method"] for r in results[2]] == ["ce", "contrast"]


def test_demo_jobs_failure_names_the_run(tmp_path: Path) -> None:
    from pixcon.config import load_config
    from pixcon.study.cell import Job
    from pixcon.study.executors import run_jobs
    from pixcon.study.spec import Cell

    labeled = tmp_path / "labeled.txt"
    labeled.write_text("a\nb\n")
    cfg = load_config(overrides=[f"data.labeled_split={labeled}"])
    job = Job(Cell("no_such_recipe", 0.25, 3), cfg, tmp_path / "run", 1, 1)
    with pytest.raises(RuntimeError, match="study run no_such_recipe @ 0.25 seed 3 failed"):
        run_jobs([job], "local", workers=2)  # worker processes
    assert main(["demo", "--jobs", "0"]) == 2


@pytest.mark.skipif(
    not HAVE_FASHION, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)
def test_demo_runs_twice_into_one_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A second demo into the same folder is the same study: it skips the finished runs and prints
    # the same numbers.
    argv = [
        "demo", "--out", str(tmp_path), "--quick", "--quiet", "--no-report", "--fractions", "0.5", "--seeds", "0",
        "--methods", "ce,contrast", "--steps", "2", "--pretrain-steps", "1", "--num-train", "8", "--num-test", "4",
        "--image-size", "32", "--batch-size", "2", "--set", "model.proj_dim=8",
    ]  # fmt: skip
    assert main(argv) == 0
    first = json.loads((tmp_path / "results.json").read_text())["runs"]
    table = capsys.readouterr().out
    assert main(argv) == 0
    second = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [r["test_miou"] for r in second] == [r["test_miou"] for r in first]
    assert capsys.readouterr().out == table
    assert not list(tmp_path.rglob("pixcon.lock"))

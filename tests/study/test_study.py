"""`pixcon study` end to end at tiny sizes: outputs, tuning on validation only, resuming, refusing
changed settings, parallel and submitit execution, and the dataset formats."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixcon.cli import main

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from dataset_layouts import write_nifti, write_voc

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16"]
SMALL = ["--set", "model.encoder=mobilenet_v2"]  # checkpoints of 9 MB, not 50: the tests write dozens

TINY += [*SMALL, "--quiet", "--no-report"]


def _study(root: Path, out: Path, *extra: str) -> list[str]:
    return ["study", "--data-root", str(root), "--out", str(out), *TINY, *extra]


def _runs(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


def _scores(out: Path) -> list[tuple]:
    return [(r["method"], r["fraction"], r["seed"], r["test_miou"], r["val_miou"]) for r in _runs(out)]


@pytest.fixture(scope="module")
def data(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset (8 train, 4 val, 4 test images) in a copy of its own."""
    root = Path(shutil.copytree(tiny_dataset, tmp_path_factory.mktemp("study") / "data"))
    shutil.copy(root / "splits" / "test.txt", root / "splits" / "same.txt")  # the test images again
    return root


def test_study_writes_the_table_and_skips_finished_runs(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    argv = _study(data, out, "--fractions", "0.5,1", "--seeds", "0,1", "--methods", "ce,contrast")
    argv += ["--pretrain-steps", "2", "--finetune-steps", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| method | 50% (4 img) | 100% (8 img) |" in printed and "| contrast -> CE (Zhao) |" in printed
    runs = _runs(out)
    assert len(runs) == 8 and {r["num_labeled"] for r in runs} == {4, 8}
    assert all(0 <= r["test_miou"] <= 1 and r["val_miou"] is not None for r in runs)
    # the label splits are nested per seed
    half = (out / "label_splits" / "labeled_50pct_seed1.txt").read_text().split()
    assert set(half) < set((out / "label_splits" / "labeled_100pct_seed1.txt").read_text().split())
    for name in ("results.csv", "results.md", "miou_vs_fraction.png", "study.json"):
        assert (out / name).is_file()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    assert len(stamps) == 8
    # a second study with the same settings trains nothing and prints the same table
    assert main(argv) == 0
    assert capsys.readouterr().out == printed
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")} == stamps
    # more seeds only add runs; another step budget would mix incomparable runs
    assert main([*argv[:-4], "--seeds", "0,1,2", "--pretrain-steps", "2", "--finetune-steps", "2"]) == 0
    assert len(_runs(out)) == 12
    assert main([*argv[:-1], "3"]) == 2
    err = capsys.readouterr().err
    assert "holds a study with other settings" in err and "finetune_steps: 2 -> 3" in err


def test_tuning_chooses_on_validation_and_never_reads_the_test_split(data: Path, tmp_path: Path) -> None:
    """Test masks that would reverse the choice (they are the other grid point's predictions) do not
    change it: the choice, and every validation score, are those of the study on the true masks."""
    argv = ["--fractions", "1", "--seeds", "0", "--methods", "ce", "--pretrain-steps", "2"]
    argv += ["--finetune-steps", "2", "--tune", "lr=1e-4,3e-2"]
    assert main(_study(data, tmp_path / "a", *argv)) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    chosen = results["chosen"]["ce"]["1"]["lr"]
    other = 3e-2 if chosen == 1e-4 else 1e-4
    tuning = tmp_path / "a" / "tuning"
    assert "test_miou" not in json.loads((tuning / f"lr={other:g}" / "ce_f1_s0" / "result.json").read_text())

    # the adversarial copy: its test masks are what the rejected learning rate's model predicts
    from pixcon.inference import evaluate_checkpoint
    from pixcon.predict import predict_files

    adversarial = tmp_path / "adversarial"
    shutil.copytree(data, adversarial)
    test_ids = (data / "splits" / "test.txt").read_text().split()
    rejected = tuning / f"lr={other:g}" / "ce_f1_s0" / "last.pt"
    written = predict_files(rejected, [data / "images" / f"{i}.png" for i in test_ids], tmp_path / "pred")
    for i, (mask, _) in zip(test_ids, written, strict=True):
        shutil.copy(mask, adversarial / "masks" / f"{i}.png")
    chosen_ckpt = tuning / f"lr={chosen:g}" / "ce_f1_s0" / "last.pt"
    on_test = {
        lr: evaluate_checkpoint(ckpt, "test", data_root=adversarial)["miou"]
        for lr, ckpt in ((chosen, chosen_ckpt), (other, rejected))
    }
    assert on_test[other] > on_test[chosen]  # choosing on this test split would pick the other rate

    assert main(_study(adversarial, tmp_path / "b", *argv)) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["chosen"] == results["chosen"]
    for lr in (chosen, other):
        a, b = (json.loads((p / "tuning" / f"lr={lr:g}" / "ce_f1_s0" / "result.json").read_text()) for p in (
            tmp_path / "a", tmp_path / "b"))  # fmt: skip
        assert a["val_miou"] == b["val_miou"]


def test_tuning_on_the_test_split_is_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = _study(data, tmp_path / "s", "--tune", "lr=1e-3,1e-2", "--set", "data.val_split=test")
    assert main(argv) == 2
    assert "data.val_split 'test' and data.test_split 'test' hold the same images" in capsys.readouterr().err


def test_a_study_killed_mid_run_finishes_with_the_uninterrupted_table(data: Path, tmp_path: Path) -> None:
    argv = ["--fractions", "1", "--seeds", "0", "--methods", "contrast", "--pretrain-steps", "4"]
    argv += ["--finetune-steps", "12", "--set", "train.checkpoint_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both studies in processes of one thread

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "pixcon.cli", *_study(data, out, *argv)]

    assert subprocess.run(command(tmp_path / "whole"), env=env, capture_output=True).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage = out / "runs" / "contrast_f1_s0" / "finetune"
    deadline = time.monotonic() + 120
    while not (stage / "last.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid fine-tuning: the pretraining stage is finished
    proc.wait()
    assert not (stage / "final.json").exists(), "the study finished before it could be killed"
    assert (out / "runs" / "contrast_f1_s0" / "pretrain" / "final.json").is_file()
    assert subprocess.run(command(out), env=env, capture_output=True).returncode == 0
    assert _scores(out) == _scores(tmp_path / "whole")
    assert _table(out) == _table(tmp_path / "whole")


def _table(out: Path) -> str:
    return (out / "results.md").read_text().split("\n\n")[0]  # the scores; the wall times differ


def test_jobs_2_gives_the_table_of_jobs_1(data: Path, tmp_path: Path) -> None:
    argv = ["--fractions", "0.5", "--seeds", "0,1", "--methods", "ce", "--pretrain-steps", "1"]
    argv += ["--finetune-steps", "1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # each of 2 workers gets one thread, as the single process has
    try:
        assert main(_study(data, tmp_path / "j2", *argv, "--jobs", "2")) == 0
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(1)
    try:
        assert main(_study(data, tmp_path / "j1", *argv)) == 0
    finally:
        torch.set_num_threads(threads)
    assert _scores(tmp_path / "j2") == _scores(tmp_path / "j1")
    assert _table(tmp_path / "j2") == _table(tmp_path / "j1")


def test_submitit_local_executor_runs_a_study(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = ["--fractions", "1", "--seeds", "0", "--methods", "ce", "--pretrain-steps", "1"]
    argv += ["--finetune-steps", "1", "--executor", "submitit-local", "--cluster-param", "timeout_min=5"]
    assert main(_study(data, out, *argv)) == 0
    assert len(_runs(out)) == 1
    assert list((out / "submitit").rglob("*_log.out"))  # submitit's own job logs


def test_voc_layout_study(tmp_path: Path) -> None:
    fx = write_voc(tmp_path / "voc")
    out = tmp_path / "s"
    # VOC's test masks are not public: the val split is scored, so nothing may be selected on it
    argv = ["--format", "voc", "--fractions", "1", "--seeds", "0", "--methods", "ce,contrast"]
    argv += ["--pretrain-steps", "1", "--finetune-steps", "1", "--set", "data.test_split=val"]
    argv += ["--set", "data.eval_size=32"]
    assert main(_study(fx.root, out, *argv)) == 0
    assert {r["num_labeled"] for r in _runs(out)} == {3}


def test_nifti_study(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    fx = write_nifti(tmp_path / "mri", volumes=("case_a", "case_b", "case_c"))
    (fx.root / "splits" / "train.txt").write_text("case_a\n")
    (fx.root / "splits" / "val.txt").write_text("case_b\n")
    (fx.root / "splits" / "test.txt").write_text("case_c\n")
    out = tmp_path / "s"
    argv = ["--format", "nifti", "--fractions", "0.5,1", "--seeds", "0", "--methods", "ce"]
    argv += ["--pretrain-steps", "1", "--finetune-steps", "1", "--set", "data.nifti_slice_size=[32,32]"]
    argv += ["--tune", "lr=1e-3,1e-2"]
    assert main(_study(fx.root, out, *argv)) == 0
    runs = _runs(out)
    assert [r["num_labeled"] for r in runs] == [4, 8]  # 8 slices along z in the training volume


def test_bad_study_arguments_are_one_line_errors(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra, message in [
        (["--methods", "ce,nope"], "--methods: unknown ['nope']"),
        (["--fractions", "0,1"], "--fractions: 0.0 is not in (0, 1]"),
        (["--tune", "momentum=0.9"], "--tune momentum: not tunable"),
        (["--tune", "lr=1e-3,x"], "--tune lr: expected comma-separated numbers"),
        (["--seeds", "0,0"], "--seeds repeats a value"),
        (["--methods", "multidomain"], "give --aux-root"),
        (["--label-splits", "/nonexistent"], "--label-splits /nonexistent: missing"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--pretrain-steps", "0"], "--pretrain-steps must be >= 1"),
        (["--tune", "lr=1e-3,0.001"], "--tune lr repeats a value"),
        (["--tune", "lr=1e-3,1e-2", "--set", "data.val_split=same"], "hold the same images"),
        (
            ["--tune", "lr=1e-3,1e-2", "--set", "data.val_split=nope"],
            "val_split='nope', which cannot be read",
        ),
    ]:
        assert main(["study", "--data-root", str(data), "--out", str(tmp_path / "s"), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    assert not (tmp_path / "s").exists()


def test_predicted_masks_are_index_pngs(tmp_path: Path) -> None:
    """The adversarial test above writes `pixcon predict`'s masks as dataset masks."""
    mask = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    from pixcon.predict import save_mask

    save_mask(mask, tmp_path / "m.png", np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8))
    assert np.array_equal(np.array(Image.open(tmp_path / "m.png")), mask)


def test_select_best_val_scores_the_best_validation_step(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = ["--fractions", "1", "--seeds", "0", "--methods", "ce", "--pretrain-steps", "3"]
    argv += ["--finetune-steps", "3", "--select", "best-val", "--val-every", "1", "--set", "optim.lr=0.2"]
    assert main(_study(data, out, *argv)) == 0
    (run,) = _runs(out)
    assert run["checkpoint"].endswith("best.pt") and run["select"] == "best-val"
    import csv

    rows = csv.DictReader((out / "runs" / "ce_f1_s0" / "metrics.csv").open())  # step,key,value
    vals = [float(r["value"]) for r in rows if r["key"] == "val/miou"]
    assert len(vals) == 6 and run["val_miou"] == max(vals) != vals[-1]  # lr 0.2: the last is not the best


def test_the_settings_table_marks_pretrained_encoders() -> None:
    from pixcon.study.run import settings_table
    from pixcon.study.spec import StudySpec

    spec = StudySpec(
        fractions=(0.5,), seeds=(0,), methods=("ce", "contrast"), pretrain_steps=1, finetune_steps=1
    )
    runs = [
        {"method": "ce", "fraction": 0.5, "seconds": 10.0, "pretrained_encoder": True},
        {"method": "contrast", "fraction": 0.5, "seconds": 30.0, "pretrained_encoder": False},
    ]
    table = settings_table(spec, runs, {"ce": {"0.5": {"lr": 0.003}}})
    assert "| CE only (pretrained encoder) | lr=0.003, 10 s/run |" in table
    assert "| contrast -> CE (Zhao) | 30 s/run |" in table


def test_the_first_seed_tunes_and_the_others_reuse_its_choice(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    argv = ["--fractions", "1", "--seeds", "0,1", "--methods", "ce,contrast", "--pretrain-steps", "1"]
    argv += ["--finetune-steps", "1", "--tune", "lr=1e-3,1e-2", "--tune", "finetune_lr_scale=0.1,1"]
    assert main(_study(data, out, *argv)) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["chosen"]["ce"]["1"]) == {"lr"}  # CE has no fine-tuning stage to scale
    assert set(results["chosen"]["contrast"]["1"]) == {"lr", "finetune_lr_scale"}
    assert len(list((out / "tuning").glob("*/ce_f1_s0"))) == 2
    assert len(list((out / "tuning").glob("*/contrast_f1_s0"))) == 4
    for run in results["runs"]:
        chosen = results["chosen"][run["method"]]["1"]
        assert run["params"] == chosen
        assert run["tuning"] == (run["seed"] == 0)  # the first seed's row is its tuning run
    # the fine-tuning stage of the chosen contrast point trained at lr * scale
    point = results["chosen"]["contrast"]["1"]
    ft = yaml.safe_load((out / "runs" / "contrast_f1_s1" / "finetune" / "config.yaml").read_text())
    assert ft["optim"]["lr"] == pytest.approx(point["lr"] * point["finetune_lr_scale"])
    capsys.readouterr()
    assert main(_study(data, out, *argv[:-1], "finetune_lr_scale=0.1,0.5")) == 2
    assert "tune.finetune_lr_scale: [0.1, 1.0] -> [0.1, 0.5]" in capsys.readouterr().err


def test_a_failed_run_in_a_worker_is_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "--fractions",
        "1",
        "--seeds",
        "0",
        "--methods",
        "ce",
        "--pretrain-steps",
        "1",
        "--finetune-steps",
    ]
    argv += ["1", "--jobs", "2", "--set", "model.encoder=no_such_encoder"]
    assert main(_study(data, tmp_path / "s", *argv)) == 1
    err = capsys.readouterr().err
    assert "study run ce @ 1 seed 0 failed" in err and "no_such_encoder" in err and "Traceback" not in err

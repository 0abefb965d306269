"""A run folder belongs to one run (issue 18): refusal without --resume/--overwrite, --overwrite,
--init-from inside the folder, the lock, metrics.csv on resume, stray temporary files, and
--resume with nothing (or nothing usable, or another objective) to resume."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixcon.checkpoint import load_checkpoint
from pixcon.cli import main
from pixcon.train.folder import LOCK_NAME

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16", "--quiet"]


def _train(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--data-root", str(data), "--out", str(out), "--steps", str(steps), *TINY, *extra]


def _metric_rows(out: Path) -> list[tuple[int, str]]:
    with (out / "metrics.csv").open() as f:
        return [(int(r[0]), r[1]) for r in list(csv.reader(f))[1:]]


def test_a_fresh_run_into_another_runs_folder_is_refused(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_train(tiny_dataset, out, 1)) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(_train(tiny_dataset, out, 2)) == 2
    err = capsys.readouterr().err
    assert f"train.out_dir {out} holds another run (last.pt, metrics.csv, final.json, config.yaml" in err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "last.pt").read_bytes() == before  # nothing was touched
    assert not (out / LOCK_NAME).exists()


def test_overwrite_replaces_the_earlier_run(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(_train(tiny_dataset, out, 3, "--set", "train.log_every=1", "--set", "train.eval_every=3")) == 0
    )
    (out / "notes.txt").write_text("mine")  # not a run file: kept
    assert main(_train(tiny_dataset, out, 1, "--overwrite")) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 1
    assert not (out / "previous.pt").exists()  # the earlier run's backup went with it
    assert {step for step, _ in _metric_rows(out)} == {1}  # no rows of the earlier run
    assert json.loads((out / "final.json").read_text())["step"] == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file: the new run's


def test_resume_and_overwrite_together_is_an_argument_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--out", str(tmp_path), "--resume", "--overwrite"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_init_from_inside_the_output_folder_is_refused(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pre = tmp_path / "pre"
    argv = ["pretrain", "--data-root", str(tiny_dataset), "--out", str(pre), "--steps", "1", *TINY]
    assert main(argv) == 0
    before = (pre / "last.pt").read_bytes()
    capsys.readouterr()
    ft = ["finetune", "--data-root", str(tiny_dataset), "--init-from", str(pre / "last.pt"), *TINY]
    for flag in ([], ["--overwrite"], ["--resume"]):
        assert main([*ft, "--out", str(pre), "--steps", "1", *flag]) == 2
        err = capsys.readouterr().err
        assert f"train.init_from {pre / 'last.pt'} lies inside train.out_dir {pre}" in err
    assert (pre / "last.pt").read_bytes() == before
    assert main([*ft, "--out", str(pre / "ft"), "--steps", "1"]) == 0  # a folder of its own: fine
    assert (pre / "last.pt").read_bytes() == before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(out: Path, host: str, pid: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    lock.write_text(json.dumps({"host": host, "pid": pid, "started": "2024-01-01T00:00:00", "command": "x"}))
    return lock


def test_a_live_lock_stops_a_second_writer(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _write_lock(out, socket.gethostname(), holder.pid)
        assert main(_train(tiny_dataset, out, 1)) == 2
        err = capsys.readouterr().err
        assert f"train.out_dir {out} is being written by process {holder.pid} on host" in err
        assert lock.exists() and not (out / "last.pt").exists()  # the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_this_host_is_replaced_with_a_warning(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    pid = _dead_pid()
    _write_lock(out, socket.gethostname(), pid)
    assert main(_train(tiny_dataset, out, 1)) == 0
    assert f"removing a stale lock of process {pid}" in caplog.text
    assert not (out / LOCK_NAME).exists()  # released at the end
    assert (out / "last.pt").is_file()


def test_a_lock_of_another_host_is_reported_not_broken(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    lock = _write_lock(out, "some-other-node", _dead_pid())
    assert main(_train(tiny_dataset, out, 1)) == 2
    err = capsys.readouterr().err
    assert "is locked by process" in err and "on host some-other-node" in err and f"delete {lock}" in err
    assert lock.exists()


def test_the_lock_is_released_when_the_run_fails(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = _train(tiny_dataset, out, 1, "--set", "data.val_split=vall")  # fails after the lock is taken
    assert main(argv) == 2
    assert "data.val_split 'vall'" in capsys.readouterr().err
    assert not out.exists()  # the folder it created is removed again: empty, nothing was written


def test_resume_truncates_metrics_to_the_checkpoint_and_cleans_temporary_files(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    common = ["--set", "train.log_every=1", "--set", "train.eval_every=2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_train(tiny_dataset, full, 4, *common)) == 0
    assert main(_train(tiny_dataset, cut, 4, *common)) == 0
    # As if killed after logging steps 3 and 4 but before the step-4 checkpoint landed, mid-write:
    shutil.copy(cut / "previous.pt", cut / "last.pt")
    (cut / "final.json").unlink()
    stray = cut / ".last.pt.k1ll3d.tmp"
    stray.write_bytes(b"half a checkpoint")
    assert main([*_train(tiny_dataset, cut, 4, *common), "--resume"]) == 0
    assert not stray.exists()
    rows = _metric_rows(cut)
    assert len(rows) == len(set(rows))  # each (step, key) once
    assert sorted(rows) == sorted(_metric_rows(full))
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)


def test_resume_with_nothing_to_resume_is_an_error(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    assert main([*_train(tiny_dataset, empty, 2), "--resume"]) == 2
    assert f"--resume: no checkpoint in {empty} (last.pt or previous.pt)" in capsys.readouterr().err
    assert not (empty / "last.pt").exists()  # not a fresh start

    out = tmp_path / "run"
    assert main(_train(tiny_dataset, out, 2, "--set", "train.eval_every=1")) == 0
    for name in ("last.pt", "previous.pt"):
        (out / name).write_bytes((out / name).read_bytes()[:100])  # both truncated
    capsys.readouterr()
    assert main([*_train(tiny_dataset, out, 3), "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"--resume: no usable checkpoint in {out}" in err
    assert "last.pt is corrupt or truncated" in err and "previous.pt is corrupt or truncated" in err
    assert "--overwrite" in err and "Traceback" not in err


def test_resume_with_another_objective_names_both(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_train(tiny_dataset, out, 1)) == 0
    argv = [
        "pretrain",
        "--data-root",
        str(tiny_dataset),
        "--out",
        str(out),
        "--steps",
        "2",
        *TINY,
        "--resume",
    ]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"--resume: {out / 'last.pt'} is a run of objective 'ce' (train.objective)" in err
    assert "this run trains 'contrast'" in err and "Traceback" not in err


def test_output_folder_under_a_file_or_being_a_file(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    assert main(_train(tiny_dataset, blocker / "run", 1)) == 2
    assert f"train.out_dir {blocker / 'run'}: {blocker} is a file, not a folder" in capsys.readouterr().err
    assert main(_train(tiny_dataset, blocker, 1)) == 2
    assert f"train.out_dir {blocker} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (see bench/probe_cli.py)")
def test_resume_into_a_read_only_run_folder(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_train(tiny_dataset, out, 1)) == 0
    out.chmod(0o555)
    try:
        capsys.readouterr()
        assert main([*_train(tiny_dataset, out, 2), "--resume"]) == 2
        assert f"train.out_dir {out} is not writable" in capsys.readouterr().err
    finally:
        out.chmod(0o755)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_cuda_without_a_gpu_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "train.accelerator=cuda", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.accelerator: 'cuda' needs a CUDA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_mistyped_val_split_is_an_error_missing_default_a_warning(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(_train(tiny_dataset, tmp_path / "a", 1, "--set", "data.val_split=validation")) == 2
    err = capsys.readouterr().err
    assert "data.val_split 'validation': no such split" in err
    no_val = tmp_path / "noval"
    shutil.copytree(tiny_dataset, no_val)
    (no_val / "splits" / "val.txt").unlink()
    assert main(["-q", *_train(no_val, tmp_path / "b", 1)]) == 0  # --quiet: warnings still shown
    warned = [
        r for r in caplog.records if r.levelname == "WARNING" and "training without validation" in r.message
    ]
    assert warned and "'val'" in warned[0].getMessage()

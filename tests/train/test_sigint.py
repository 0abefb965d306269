"""Ctrl-C (SIGINT): training finishes its step, writes last.pt, prints one line and exits with 130;
resuming from that checkpoint ends bit-identical to an uninterrupted run. Other commands print one
line and exit with 130 too, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixcon.checkpoint import latest_good_checkpoint, load_checkpoint
from pixcon.cli import main
from pixcon.train.logger import MetricsLogger

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16", "--quiet"]


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    # One thread, so float reductions happen in the same order in every run; SIGINT at its default
    # even when the tests run in the background (where a shell starts jobs with SIGINT ignored).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pixcon.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _step(run: Path) -> int:
    found = latest_good_checkpoint([run / "last.pt", run / "previous.pt"])
    return -1 if found is None else int(found[1]["step"])


def _wait_for(condition, proc: subprocess.Popen[bytes], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1].decode()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow  # three CLI processes (about 40 s on 2 cores); the in-process test below is fast
def test_sigint_finishes_the_step_and_a_resume_is_bit_identical(tiny_dataset: Path, tmp_path: Path) -> None:
    steps = 16
    extra = [
        "--set",
        "train.checkpoint_every=4",
        "--set",
        "train.eval_every=8",
        "--set",
        "data.color_jitter=0.3",
    ]

    def argv(out: Path) -> list[str]:
        return [
            "train",
            "--data-root",
            str(tiny_dataset),
            "--out",
            str(out),
            "--steps",
            str(steps),
            *TINY,
            *extra,
        ]

    full = _start(argv(tmp_path / "full"))
    cut = _start(argv(tmp_path / "cut"))
    _wait_for(lambda: _step(tmp_path / "cut") >= 4, cut, "first checkpoint")
    cut.send_signal(signal.SIGINT)
    _, err = cut.communicate(timeout=120)
    text = err.decode()
    assert cut.returncode == 130, text[-2000:]
    assert "Traceback" not in text
    (line,) = [ln for ln in text.splitlines() if ln.strip()]  # one line, nothing else (--quiet)
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    stopped = int(state["step"])
    assert 4 <= stopped < steps and not (tmp_path / "cut" / "final.json").exists()
    assert line == (
        f"pixcon train: interrupted at step {stopped}; {tmp_path / 'cut' / 'last.pt'} holds step "
        f"{stopped}, continue with --resume"
    )
    assert not list((tmp_path / "cut").glob(".*.tmp")) and not (tmp_path / "cut" / "pixcon.lock").exists()

    resumed = _start([*argv(tmp_path / "cut"), "--resume"])
    for proc in (full, resumed):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    for part in ("model", "objective"):
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            torch.testing.assert_close(b[part][k], v, rtol=0, atol=0, msg=k)
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for k in x:
            torch.testing.assert_close(y[k], x[k], rtol=0, atol=0, msg=k)
    assert a["metrics"] == b["metrics"]


def test_sigint_outside_training_prints_one_line_and_exits_130(
    tmp_path: Path, untrained_checkpoint: Path
) -> None:
    ckpt = untrained_checkpoint
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(big)
    out = tmp_path / "pred"
    proc = _start(
        ["predict", str(ckpt), str(big), "--out", str(out), "--window", "64", "--overlap", "0.5", "--quiet"]
    )
    _wait_for(out.exists, proc, "the output folder")  # made after the model is loaded: predicting now
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 130, text[-2000:]
    assert [ln for ln in text.splitlines() if ln.strip()] == ["pixcon predict: interrupted (Ctrl-C)"]
    assert not (out / "big_mask.png").exists()


@pytest.fixture
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler, also where the suite runs with SIGINT ignored (nohup, some CI
    runners: pixcon then leaves it ignored, by design)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_as_in_a_terminal")
def test_sigint_in_process_stops_after_the_step_and_resumes_exactly(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real SIGINT to this process while step 3 logs (no checkpoint is due at step 3): the step
    ends, last.pt holds step 3, main returns 130; the resume ends where an uninterrupted run does."""
    common = ["--steps", "6", *TINY, "--set", "train.log_every=1", "--set", "train.eval_every=4"]
    assert main(["train", "--data-root", str(tiny_dataset), "--out", str(tmp_path / "full"), *common]) == 0
    real_log = MetricsLogger.log

    def log_then_interrupt(self: MetricsLogger, step: int, values: dict[str, float]) -> None:
        real_log(self, step, values)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in a terminal

    monkeypatch.setattr(MetricsLogger, "log", log_then_interrupt)
    cut = ["train", "--data-root", str(tiny_dataset), "--out", str(tmp_path / "cut"), *common]
    capsys.readouterr()
    assert main(cut) == 130
    err = capsys.readouterr().err
    assert f"pixcon train: interrupted at step 3; {tmp_path / 'cut' / 'last.pt'} holds step 3" in err
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    monkeypatch.setattr(MetricsLogger, "log", real_log)
    assert main([*cut, "--resume"]) == 0
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)
    assert a["metrics"] == b["metrics"]


def test_a_keyboard_interrupt_raised_by_code_is_not_taken_for_ctrl_c(
    tiny_dataset: Path, tmp_path: Path, crash_after_first_checkpoint: list[int]
) -> None:
    crash_after_first_checkpoint.arm()
    argv = ["train", "--data-root", str(tiny_dataset), "--out", str(tmp_path / "r"), "--steps", "4", *TINY]
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--set", "train.eval_every=2"])
    assert not (tmp_path / "r" / "pixcon.lock").exists()  # released on the way out

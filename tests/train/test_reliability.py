"""Reliability: a SIGKILLed run resumes to the identical result, provenance is saved, NaNs stop cleanly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixcon.checkpoint import latest_good_checkpoint, load_checkpoint
from pixcon.cli import main
from pixcon.objectives import supervised
from pixcon.train.provenance import file_digest, ids_digest

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16", "--quiet"]


def _train_argv(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--data-root", str(data), "--out", str(out), "--steps", str(steps), *TINY, *extra]


def _subprocess(argv: list[str]) -> subprocess.Popen[bytes]:
    # Same environment for every run: one thread, so float reductions happen in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pixcon.cli", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _checkpoint_step(run: Path) -> int:
    """Step of the checkpoint `--resume` would use (last.pt, or previous.pt between two renames)."""
    found = latest_good_checkpoint([run / "last.pt", run / "previous.pt"])
    return -1 if found is None else int(found[1]["step"])


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_dataset: Path, tmp_path: Path) -> None:
    steps = 30
    extra = [
        "--set",
        "train.checkpoint_every=3",
        "--set",
        "train.eval_every=10",
        "--set",
        "data.color_jitter=0.3",
    ]
    full = _subprocess(_train_argv(tiny_dataset, tmp_path / "full", steps, *extra))

    cut = _subprocess(_train_argv(tiny_dataset, tmp_path / "cut", steps, *extra))
    deadline = time.monotonic() + 240
    while _checkpoint_step(tmp_path / "cut") < 3:
        assert cut.poll() is None, (
            f"run ended before it could be killed: {cut.communicate()[1].decode()[-2000:]}"
        )
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 0.3))  # somewhere between two checkpoints
    cut.send_signal(signal.SIGKILL)
    assert cut.wait() == -signal.SIGKILL
    killed_at = _checkpoint_step(tmp_path / "cut")
    assert 3 <= killed_at < steps and not (tmp_path / "cut" / "final.json").exists(), "not killed mid-run"

    resumed = _subprocess([*_train_argv(tiny_dataset, tmp_path / "cut", steps, *extra), "--resume"])
    for proc in (full, resumed):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]

    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)
    final_a = json.loads((tmp_path / "full" / "final.json").read_text())
    final_b = json.loads((tmp_path / "cut" / "final.json").read_text())
    assert final_a == final_b
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["resumed_from_step"] is None
    run = json.loads((tmp_path / "cut" / f"run_resume_{killed_at}.json").read_text())
    assert run["resumed_from_step"] == killed_at


def test_run_json_records_provenance(tiny_dataset: Path, tmp_path: Path) -> None:
    split = tmp_path / "labeled.txt"
    split.write_text("train_003\ntrain_001\n")
    out = tmp_path / "run"
    assert main(_train_argv(tiny_dataset, out, 1, "--labeled-split", str(split))) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["labeled"] == {"count": 2, "sha256": ids_digest(["train_003", "train_001"])}
    assert run["data"]["val"]["count"] == 4
    assert run["files"] == {str(split): file_digest(split)}
    assert (
        run["packages"]["torch"] == torch.__version__.split("+")[0]
        or run["packages"]["torch"] == torch.__version__
    )
    assert run["config"]["data"]["labeled_split"] == str(split)
    assert run["git"] is None or len(run["git"]["commit"]) == 40
    assert load_checkpoint(out / "last.pt")["meta"]["data"] == run["data"]


def test_resume_refuses_changed_labeled_ids(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tmp_path / "labeled.txt"
    split.write_text("train_000\ntrain_001\n")
    out = tmp_path / "run"
    assert main(_train_argv(tiny_dataset, out, 1, "--labeled-split", str(split))) == 0
    split.write_text("train_000\ntrain_002\n")  # same path, other images
    assert main([*_train_argv(tiny_dataset, out, 2, "--labeled-split", str(split)), "--resume"]) == 1
    assert "the labeled image ids differ" in capsys.readouterr().err


class _PoisonedAt:
    """Wraps PixelContrastiveLoss; the loss value with index `at` is NaN (kept in the graph), whether
    the objective calls the loss on the projection or samples first (``loss.project_sampled``, the
    recipes' default) and calls ``contrast`` on the projected rows."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, *args, **kwargs):
        real = loop_real_loss(*args, **kwargs)
        owner = self

        class Poisoned:
            def _count(self, value):
                owner.calls += 1
                return value * float("nan") if owner.calls - 1 == owner.at else value

            def __call__(self, z, labels):
                return self._count(real(z, labels))

            def sample(self, *a, **kw):
                return real.sample(*a, **kw)

            def contrast(self, *a, **kw):
                return self._count(real.contrast(*a, **kw))

        return Poisoned()


loop_real_loss = supervised.PixelContrastiveLoss


def test_nonfinite_loss_stops_with_step_term_and_checkpoint(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(supervised, "PixelContrastiveLoss", _PoisonedAt(2))
    out = tmp_path / "nan"
    argv = ["pretrain", "--data-root", str(tiny_dataset), "--out", str(out), "--steps", "5", *TINY]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 2: term(s) ['contrast']" in err and str(out / "nonfinite.pt") in err
    state = load_checkpoint(out / "nonfinite.pt")
    assert state["step"] == 2  # the weights before the bad step, all finite
    assert not (out / "last.pt").exists()  # no good checkpoint was due yet, none is overwritten
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_skip_nonfinite_continues(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervised, "PixelContrastiveLoss", _PoisonedAt(1))
    out = tmp_path / "skip"
    argv = ["pretrain", "--data-root", str(tiny_dataset), "--out", str(out), "--steps", "3", *TINY]
    argv += ["--set", "train.eval_every=2", "--set", "train.log_every=1"]
    assert main([*argv, "--skip-nonfinite"]) == 0
    assert "non-finite loss at step 1" in caplog.text and "skipping the step" in caplog.text
    # The skipped step was a checkpoint step (done = 2): it still checkpoints, and logs nothing.
    assert load_checkpoint(out / "previous.pt")["step"] == 2
    logged_steps = {line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]}
    assert logged_steps == {"1", "3"}
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

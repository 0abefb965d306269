"""Distributed training on the CPU: sharded data order, a real 2-process gloo run, mixed precision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pixcon.cli import main
from pixcon.train.data import EpochSampler

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16", "--quiet"]


def test_epoch_sampler_shards_are_disjoint_equal_and_resumable() -> None:
    n, world = 11, 3
    shards = [EpochSampler(n, seed=5, epoch=2, rank=r, world_size=world).indices() for r in range(world)]
    assert [len(s) for s in shards] == [n // world] * world
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == len(flat) == 9 and set(flat) <= set(range(n))
    whole = EpochSampler(n, seed=5, epoch=2).indices()  # the same permutation, unsharded
    assert sorted(flat) == sorted(whole[:9])
    assert EpochSampler(n, seed=5, epoch=2, rank=1, world_size=world, start=1).indices() == shards[1][1:]
    assert EpochSampler(n, seed=5, epoch=3, rank=1, world_size=world).indices() != shards[1]
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\)"):
        EpochSampler(n, seed=0, rank=3, world_size=3)


def test_two_process_ddp_run_and_single_process_load(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    argv = [
        "pretrain", "--data-root", str(tiny_dataset), "--out", str(pre), "--steps", "3",
        "--devices", "2", "--strategy", "ddp", "--set", "train.accelerator=cpu", "--set", "train.log_every=1",
        *TINY,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pixcon.cli", *argv], env=env, capture_output=True, timeout=300
    )
    log = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, log[-3000:]
    assert "MEMBER: 2/2" in log  # Fabric really started two processes
    state = torch.load(pre / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["kind"] == "contrast"
    assert "train/contrast" in (pre / "metrics.csv").read_text()
    # The checkpoint (written once, by rank 0) loads in a single process: fine-tune and evaluate.
    assert main(["finetune", "--init-from", str(pre / "last.pt"), "--data-root", str(tiny_dataset),
                 "--out", str(ft), "--steps", "1", *TINY]) == 0  # fmt: skip
    assert main(["evaluate", str(ft / "last.pt"), "--split", "val", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert 0.0 <= scores["miou"] <= 1.0


def test_two_process_ddp_ce_run(
    tiny_dataset: Path, tmp_path: Path, pixcon_subprocess: Callable[[list[str]], None]
) -> None:
    # CE leaves the projection head unused; DDP must not wait for its gradients.
    argv = [
        "train", "--data-root", str(tiny_dataset), "--out", str(tmp_path / "ce"), "--steps", "2",
        "--devices", "2", "--strategy", "ddp", "--set", "train.accelerator=cpu", *TINY,
    ]  # fmt: skip
    pixcon_subprocess(argv)
    assert json.loads((tmp_path / "ce" / "final.json").read_text())["val"]["miou"] is not None


def test_bf16_mixed_precision_run(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    argv = ["train", "--joint", "--data-root", str(tiny_dataset), "--out", str(out), "--steps", "2"]
    argv += ["--set", "data.eval_batch_size=1"]  # validation runs several batches under autocast
    assert main([*argv, "--precision", "bf16-mixed", "--set", "train.channels_last=true", *TINY]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state["model"].values())  # master weights stay float32
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow  # about 90 s of inductor compilation on 2 CPU cores; `make test-slow`
def test_compiled_run_checkpoint_loads_uncompiled(tiny_dataset: Path, tmp_path: Path) -> None:
    from pixcon.inference import load_model

    out = tmp_path / "compiled"
    argv = ["pretrain", "--data-root", str(tiny_dataset), "--out", str(out), "--steps", "2"]
    assert main([*argv, "--set", "train.compile=true", *TINY]) == 0
    _model, state = load_model(out / "last.pt")  # same keys as an uncompiled model: strict load
    assert state["step"] == 2 and not any("_orig_mod" in k for k in state["model"])

"""One run of a study: train a recipe (resuming what a killed study left), score it, and record the
scores in the run folder's ``result.json``, so a restarted study skips it."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixcon.config import RunConfig, replace
from pixcon.data.folder import read_ids
from pixcon.inference import evaluate_checkpoint
from pixcon.models.segmenter import uses_pretrained_encoder
from pixcon.study.spec import Cell
from pixcon.train.loop import NonFiniteLossError
from pixcon.train.recipes import run_recipe

log = logging.getLogger(__name__)

RESULT = "result.json"


@dataclass(frozen=True)
class Job:
    """Everything a worker (a process, a SLURM task) needs to run one cell."""

    cell: Cell
    cfg: RunConfig  # the study's base config with this cell's label split, seed and tuning point
    run_dir: Path
    pretrain_steps: int
    finetune_steps: int
    select: str = "last"
    val_every: int | None = None
    aux_root: str | None = None
    threads: int | None = None  # torch intra-op threads of the worker (None: unchanged)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's recorded result, or None (not run, or a torn write)."""
    path = run_dir / RESULT
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(job: Job) -> bool:
    """The run is trained and holds every score its cell asks for."""
    result = read_result(job.run_dir)
    return result is not None and (not job.cell.score_test or "test_miou" in result)


def run_job(job: Job) -> dict[str, Any]:
    """Trains ``job``'s recipe (finished stages are skipped, an interrupted one resumes), scores the
    selected checkpoint on the validation split (read from the run's own validation) and, when the
    cell asks for it, on the test split; writes and returns the run's result."""
    if job.threads is not None:  # a worker's share of the threads
        torch.set_num_threads(job.threads)
    cell = job.cell
    result = read_result(job.run_dir) or {}
    if "val_miou" not in result:
        tic = time.perf_counter()
        try:
            last = train_job(job)
        except NonFiniteLossError as err:
            if not (cell.tuning and not cell.score_test):
                raise
            # a grid point too large for this method: the choice skips it, the study goes on
            log.warning("%s diverged: %s", cell.label, err)
            result = {**_identity(job), "val_miou": None, "diverged": str(err)}
            _write(job.run_dir, result)
            return result
        checkpoint, val = _selected(last, job.select)
        result = {
            **_identity(job),
            "val_miou": val.get("miou"),
            "select": job.select,
            "checkpoint": str(checkpoint),
            # the wall time of the last attempt: a resumed run counts only what was left
            "seconds": round(time.perf_counter() - tic, 1),
            "pretrained_encoder": uses_pretrained_encoder(job.cfg),
        }
        _write(job.run_dir, result)
    if cell.score_test and "test_miou" not in result:
        scores = evaluate_checkpoint(result["checkpoint"], split=job.cfg.data.test_split)
        result.update(
            test_miou=scores["miou"],
            test_kappa=scores["kappa"],
            test_pixel_acc=scores["pixel_acc"],
            iou_per_class=scores["iou_per_class"],
        )
        _write(job.run_dir, result)
        log.info("%s: test mIoU %.4f", cell.label, scores["miou"])
    return result


def _identity(job: Job) -> dict[str, Any]:
    cell = job.cell
    return {
        "method": cell.method,
        "fraction": cell.fraction,
        "seed": cell.seed,
        "params": cell.params,
        "tuning": cell.tuning,
        "num_labeled": _num_labeled(job.cfg),
    }


def train_job(job: Job) -> Path:
    """Trains ``job``'s recipe, skipping finished stages and resuming an interrupted one; returns
    the last stage's ``last.pt``."""
    return run_recipe(
        job.cell.method,
        job.cfg,
        job.run_dir,
        job.pretrain_steps,
        job.finetune_steps,
        aux_root=job.aux_root,
        resume=True,
        finetune_lr_scale=job.cell.params.get("finetune_lr_scale"),
        val_every=job.val_every,
    )


def job_config(base: RunConfig, cell: Cell, split_file: Path) -> RunConfig:
    """The base config with the cell's label split, seed and learning rate."""
    cfg = replace(base, data={"labeled_split": str(split_file)}, train={"seed": cell.seed})
    if "lr" in cell.params:
        cfg = replace(cfg, optim={"lr": cell.params["lr"]})
    return cfg


def _num_labeled(cfg: RunConfig) -> int:
    assert cfg.data.labeled_split is not None
    return len(read_ids(cfg.data.labeled_split))


def _selected(last: Path, select: str) -> tuple[Path, dict[str, Any]]:
    """The scored checkpoint and its validation scores: the last step's, or under ``best-val`` the
    best validation step's (``best.pt``, written by ``train.keep_best``)."""
    final = json.loads((last.parent / "final.json").read_text())
    if select == "best-val":
        best = (final.get("val") or {}).get("best")
        if not best or not (last.parent / "best.pt").is_file():
            raise FileNotFoundError(
                f"{last.parent}: --select best-val needs the run's best.pt and the best entry of its "
                "final.json (train.keep_best: true, and a validation split); the run kept neither"
            )
        return last.parent / "best.pt", {"miou": best["miou"], "step": best["step"]}
    return last, dict(final.get("val") or {})


def _write(run_dir: Path, result: dict[str, Any]) -> None:
    """Atomic: a study killed mid-write finds the old result or the new one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RESULT}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(run_dir / RESULT)

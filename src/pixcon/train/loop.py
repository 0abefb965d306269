"""The training loop: :func:`fit` steps through a :class:`~pixcon.train.run.Run`.

One loop for every objective and any number of domains: each step takes one batch per domain,
sums the objective's loss terms, and takes one optimizer step; every ``train.eval_every`` steps it
scores the validation split of each domain and writes ``last.pt``. Checkpoints carry the network,
the objectives' state, the optimizer, the scheduler, the step and the torch RNG, so
``--resume`` continues where the run stopped, bit for bit on the CPU.

With ``train.keep_best`` the run also writes ``best.pt`` whenever the validation mIoU (the mean
over domains with several) beats every earlier one; ties keep the earlier step. The record
``{"step", "miou"}`` of the best so far rides in the scores (``metrics["best"]`` of every
checkpoint, ``final.json``'s ``val.best``), so a resumed run compares against the same best as an
uninterrupted one. Only the validation split is scored, never the test split.

Ctrl-C (SIGINT) does not cut a step in half: the loop finishes the step it is in, writes
``last.pt`` (atomically, as every checkpoint) and raises :class:`TrainingInterrupted`; a second
Ctrl-C stops at once (the last checkpoint written stays whole).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pixcon.checkpoint import save_checkpoint
from pixcon.config import RunConfig
from pixcon.train.run import Run, build_run
from pixcon.train.validation import validate

log = logging.getLogger(__name__)

BEST_NAME = "best.pt"  # train.keep_best's checkpoint in the run folder (one of folder.RUN_FILES)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss term."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped training after a whole step; ``checkpoint`` holds that step.

    A ``KeyboardInterrupt``, so code that catches ``Exception`` does not swallow it.
    """

    from_sigint = True  # a real Ctrl-C (the CLI answers with exit status 130)

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(
            f"interrupted at step {step}; {checkpoint} holds step {step}, continue with --resume"
        )
        self.step, self.checkpoint = step, checkpoint


def run_training(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train according to ``cfg``; returns the final validation scores (empty for an objective that
    does not train the segmentation head).

    Writes to ``train.out_dir``: ``config.yaml``, ``run.json`` (provenance), ``last.pt`` (and
    ``previous.pt``), ``metrics.csv``, ``tensorboard/`` and ``final.json``. With several domains
    (``multidomain.domains``), validation runs per domain (``val/<name>/miou``; the top-level
    scores are the primary domain's). With ``train.keep_best``: ``best.pt`` too, and the scores
    hold ``best`` (the step and validation mIoU of ``best.pt``).
    """
    run = build_run(cfg, resume=resume)
    try:
        return fit(run)
    finally:
        run.close()  # the logs, and the run folder's lock: also on errors and interrupts


def fit(run: Run) -> dict[str, Any]:
    """Steps ``run`` from its start step to ``train.steps``; returns the last validation scores."""
    t, fabric = run.cfg.train, run.fabric
    batches = run.batches()
    run.trainee.train()
    bar = tqdm(
        total=t.steps,
        initial=run.start_step,
        disable=not (t.progress and fabric.is_global_zero),
        desc=t.objective,
        leave=False,
        dynamic_ncols=True,
    )
    validating = any(d.val_loader is not None for d in run.domains)
    best: dict[str, Any] | None = run.metrics.get("best") if t.keep_best else None  # restored on resume
    if t.keep_best and not validating:
        log.warning(
            "train.keep_best: this run has no validation split to score, so no %s is written", BEST_NAME
        )
    tic = time.perf_counter()
    with _finish_step_on_sigint() as stop:
        for step in range(run.start_step, t.steps):
            terms = run.trainee(next(batches))
            finite = _finite(run, terms, step)
            run.optimizer.zero_grad(set_to_none=True)
            if finite:
                fabric.backward(sum(terms.values()))
                run.optimizer.step()
            run.scheduler.step()
            done = step + 1
            if finite and (done % t.log_every == 0 or done == t.steps):
                values = _train_values(run, terms, done, tic)
                run.logger.log(done, values)
                bar.set_postfix(
                    {k[6:]: f"{v:.3f}" for k, v in values.items() if k != "train/lr"}, refresh=False
                )
            if validating and (done % t.eval_every == 0 or done == t.steps):
                scores = validate(run, done)
                improved = False
                if t.keep_best:
                    best, improved = best_so_far(best, scores, done)
                    if best is not None:
                        scores["best"] = best
                run.metrics = scores
                if improved and fabric.is_global_zero:
                    save_checkpoint(run.state(done), run.out / BEST_NAME)
                    log.info(
                        "step %d: best val mIoU so far (%.4f), written to %s",
                        done,
                        scores["best"]["miou"],
                        BEST_NAME,
                    )
            due = done % (t.checkpoint_every or t.eval_every) == 0 or done == t.steps
            if fabric.is_global_zero and due:
                save_checkpoint(run.state(done), run.last, backup=run.previous)
            bar.update(1)
            if done < t.steps and _stop_requested(run, stop):
                if fabric.is_global_zero and not due:
                    save_checkpoint(run.state(done), run.last, backup=run.previous)
                if fabric.world_size > 1:
                    fabric.barrier()  # every rank leaves once rank 0's checkpoint is whole
                bar.close()
                run.logger.close()
                raise TrainingInterrupted(done, run.last)
    bar.close()
    run.logger.close()
    if fabric.is_global_zero:
        (run.out / "final.json").write_text(json.dumps({"step": t.steps, "val": run.metrics}, indent=2))
    return run.metrics


def best_so_far(
    best: dict[str, Any] | None, scores: dict[str, Any], step: int
) -> tuple[dict[str, Any] | None, bool]:
    """(the best record after this validation, whether this step is the new best).

    The score is the validation mIoU (``mean_miou``, the mean over domains, with several); a step
    is the new best only if it beats the best so far strictly (ties keep the earlier step). Scores
    without an mIoU leave the record as it is.
    """
    score = scores.get("mean_miou", scores.get("miou"))
    if score is None or (best is not None and not score > best["miou"]):
        return best, False
    return {"step": step, "miou": float(score)}, True


@contextlib.contextmanager
def _finish_step_on_sigint() -> Iterator[list[bool]]:
    """While open, a first SIGINT only sets the flag it yields (``[True]``); the loop then stops
    after the step it is in. A second SIGINT goes to the handler from before (KeyboardInterrupt).
    Only the main thread can handle signals, and an ignored SIGINT stays ignored: then the flag is
    never set."""
    flag = [False]
    previous = (
        signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    )
    if previous is None or previous == signal.SIG_IGN:  # not the main thread, or SIGINT ignored (nohup)
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:  # the second Ctrl-C: stop now
            signal.signal(signal.SIGINT, previous)
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        flag[0] = True
        log.debug("SIGINT: finishing step, then writing the checkpoint")

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_requested(run: Run, flag: list[bool]) -> bool:
    """Whether any rank got SIGINT (every rank stops after the same step)."""
    if run.fabric.world_size == 1:
        return flag[0]
    total = run.fabric.all_reduce(torch.tensor(float(flag[0]), device=run.fabric.device), reduce_op="sum")
    assert isinstance(total, torch.Tensor)
    return bool(total.item() > 0)


def _finite(run: Run, terms: dict[str, torch.Tensor], step: int) -> bool:
    """Whether every loss term is finite on every rank. If not: with ``train.skip_nonfinite`` the
    step is skipped (with a warning); otherwise the
    weights from before the step go to ``nonfinite.pt`` and :class:`NonFiniteLossError` is raised
    (``last.pt`` and ``previous.pt`` stay the last good checkpoints, however often a resumed run
    hits the NaN again)."""
    bad = [k for k, v in terms.items() if not torch.isfinite(v.detach())]
    any_bad = bool(bad)
    if run.fabric.world_size > 1:  # every rank must stop (or skip) together
        flag = run.fabric.all_reduce(torch.tensor(float(any_bad), device=run.fabric.device), reduce_op="sum")
        any_bad = float(cast(Tensor, flag).item()) > 0
    if not any_bad:
        return True
    values = [float(terms[k].detach().item()) for k in bad]
    msg = f"non-finite loss at step {step}: " + (f"term(s) {bad} = {values}" if bad else "on another rank")
    if run.cfg.train.skip_nonfinite:
        log.warning("%s; skipping the step (train.skip_nonfinite)", msg)
        return False
    path = run.out / "nonfinite.pt"
    if run.fabric.is_global_zero:
        save_checkpoint(run.state(step), path)
    run.logger.close()
    last = f"last good checkpoint: {run.last}" if run.last.exists() else "no checkpoint was due yet"
    raise NonFiniteLossError(f"{msg}; the weights before it are saved to {path} ({last})")


def _train_values(run: Run, terms: dict[str, torch.Tensor], done: int, tic: float) -> dict[str, float]:
    """The logged training scalars: every loss term (the mean over ranks under DDP: the global-batch
    value, see the loss), the learning rate and the speed."""
    detached = {k: v.detach() for k, v in terms.items()}
    if run.fabric.world_size > 1:
        detached = {k: cast(Tensor, run.fabric.all_reduce(v, reduce_op="mean")) for k, v in detached.items()}
    values = {f"train/{k}": float(v.item()) for k, v in detached.items()}
    values["train/lr"] = float(run.scheduler.get_last_lr()[0])
    values["train/steps_per_s"] = (done - run.start_step) / (time.perf_counter() - tic)
    return values

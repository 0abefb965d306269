"""Train a recipe (:mod:`pixcon.recipes`): its stages one after the other, each from the last one's checkpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixcon.config import RunConfig, replace
from pixcon.pseudo import pseudo_label
from pixcon.recipes import recipe, recipe_steps
from pixcon.train.folder import CHECKPOINTS
from pixcon.train.loop import run_training

log = logging.getLogger(__name__)


def run_recipe(
    name: str,
    cfg: RunConfig,
    run_dir: Path,
    pretrain_steps: int,
    finetune_steps: int,
    train: Callable[[RunConfig], Any] | None = None,
    pseudo_threshold: float = 0.9,
    aux_root: str | Path | None = None,
    resume: bool = False,
    finetune_lr_scale: float | None = None,
    val_every: int | None = None,
) -> Path:
    """Trains the stages of recipe ``name`` under ``run_dir``; returns the last checkpoint.

    ``cfg`` holds the data (with ``data.labeled_split``), model, loss and optimizer settings and
    ``train.seed``; each stage sets its objective, steps, output folder and initialisation.
    ``train`` runs one stage (default :func:`pixcon.train.loop.run_training`);
    ``pseudo_threshold`` is the confidence a pseudo-labeled pixel needs; ``aux_root`` is the
    auxiliary dataset of the stages with ``aux_domain`` (the demo's: ``pixcon data generate
    --style aux``).

    ``resume``: a stage whose folder holds its ``final.json`` is finished and skipped, one with a
    checkpoint but no ``final.json`` continues from it (``run_training(resume=True)``), and one
    without a checkpoint starts afresh (deleting what a killed start left). So a recipe killed at any
    point and run again finishes with the numbers of an uninterrupted run.
    ``finetune_lr_scale`` replaces the learning-rate scale of the stages that have one (fine-tuning
    at ``optim.lr / 3``); ``val_every`` validates every that many steps instead of once at the end.
    """
    stages = recipe(name).stages
    train = train or run_training
    previous: Path | None = None
    batch_size = cfg.data.batch_size
    budgets = recipe_steps(stages, pretrain_steps, finetune_steps)
    for i, stage in enumerate(stages):
        if stage.aux_domain and aux_root is None:
            raise ValueError(
                f"recipe {name}: stage {stage.name} trains with an auxiliary domain; pass aux_root "
                "(a dataset folder, e.g. from `pixcon data generate --style aux`)"
            )
        out = run_dir if len(stages) == 1 else run_dir / stage.name
        steps = budgets[i]
        # fewer labeled images than a batch: the batches repeat them, each with fresh augmentation
        # (pixcon.train.data.infinite_batches)
        data: dict[str, Any] = {"batch_size": batch_size}
        state = _stage_state(out, steps) if resume else "fresh"
        if stage.pseudo_label:
            assert previous is not None  # a Recipe's first stage never pseudo-labels
            folder = run_dir / f"pseudo_{i}"
            if state != "done":  # the same masks again: the previous checkpoint is the same
                pseudo_label(previous, folder, threshold=pseudo_threshold, progress=False)
            # labeled + pseudo-labeled ids: the whole pool, so the batch size is not capped
            data.update(
                labeled_split=str(folder / "labeled.txt"),
                pseudo_masks=str(folder / "masks"),
                batch_size=batch_size,
            )
        changes: dict[str, dict[str, Any]] = {k: dict(v) for k, v in stage.overrides.items()}
        changes["data"] = {**changes.get("data", {}), **data}
        if stage.lr_scale != 1.0:
            scale = stage.lr_scale if finetune_lr_scale is None else finetune_lr_scale
            changes["optim"] = {**changes.get("optim", {}), "lr": cfg.optim.lr * scale}
        if stage.aux_domain:
            aux = {"name": "aux", "root": str(aux_root), "batch_size": batch_size}
            changes["multidomain"] = {**changes.get("multidomain", {}), "domains": [aux]}
        changes["train"] = {
            **changes.get("train", {}),
            "objective": stage.objective,
            "steps": steps,
            "eval_every": min(val_every, steps) if val_every else steps,
            "out_dir": str(out),
            "init_from": str(previous) if stage.init else None,
        }
        if state == "fresh" and resume:
            changes["train"]["overwrite"] = True  # what a killed start left holds no checkpoint
        stage_cfg = replace(cfg, **changes)
        if state == "done":
            log.info("%s: stage %s finished earlier (%s)", name, stage.name, out / "final.json")
        elif state == "interrupted":
            log.info("%s: stage %s continues from its checkpoint in %s", name, stage.name, out)
            train(stage_cfg, resume=True)  # type: ignore[call-arg]
        else:
            log.info("%s: stage %s (%s, %d steps) -> %s", name, stage.name, stage.objective, steps, out)
            train(stage_cfg)
        previous = out / "last.pt"
    assert previous is not None
    return previous


def _stage_state(out: Path, steps: int) -> str:
    """``done`` (its ``final.json`` at ``steps``), ``interrupted`` (a checkpoint, no final.json) or
    ``fresh``."""
    final = out / "final.json"
    if final.is_file():
        try:
            if json.loads(final.read_text()).get("step") == steps:
                return "done"
        except (json.JSONDecodeError, AttributeError):
            pass  # a torn write: the checkpoint decides
    if any((out / name).is_file() for name in CHECKPOINTS):
        return "interrupted"
    return "fresh"

"""Train a recipe (:mod:`pixcon.recipes`): its stages one after the other, each from the last one's checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixcon.config import RunConfig, replace
from pixcon.pseudo import pseudo_label
from pixcon.recipes import recipe, stage_steps
from pixcon.train.loop import run_training

log = logging.getLogger(__name__)


def run_recipe(
    name: str,
    cfg: RunConfig,
    run_dir: Path,
    pretrain_steps: int,
    finetune_steps: int,
    num_labeled: int,
    train: Callable[[RunConfig], Any] | None = None,
    pseudo_threshold: float = 0.9,
    aux_root: str | Path | None = None,
) -> Path:
    """Trains the stages of recipe ``name`` under ``run_dir``; returns the last checkpoint.

    ``cfg`` holds the data (with ``data.labeled_split``), model, loss and optimizer settings and
    ``train.seed``; each stage sets its objective, steps, output folder and initialisation.
    ``train`` runs one stage (default :func:`pixcon.train.loop.run_training`);
    ``pseudo_threshold`` is the confidence a pseudo-labeled pixel needs; ``aux_root`` is the
    auxiliary dataset of the stages with ``aux_domain`` (the demo's: ``pixcon data generate
    --style aux``).
    """
    stages = recipe(name).stages
    train = train or run_training
    previous: Path | None = None
    batch_size = cfg.data.batch_size
    for i, stage in enumerate(stages):
        if stage.aux_domain and aux_root is None:
            raise ValueError(
                f"recipe {name}: stage {stage.name} trains with an auxiliary domain; pass aux_root "
                "(a dataset folder, e.g. from `pixcon data generate --style aux`)"
            )
        out = run_dir if len(stages) == 1 else run_dir / stage.name
        steps = stage_steps(stage, pretrain_steps, finetune_steps)
        data: dict[str, Any] = {
            "batch_size": batch_size if stage.all_images else min(batch_size, num_labeled)
        }
        if stage.pseudo_label:
            assert previous is not None  # a Recipe's first stage never pseudo-labels
            folder = run_dir / f"pseudo_{i}"
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
            changes["optim"] = {**changes.get("optim", {}), "lr": cfg.optim.lr * stage.lr_scale}
        if stage.aux_domain:
            aux = {"name": "aux", "root": str(aux_root), "batch_size": batch_size}
            changes["multidomain"] = {**changes.get("multidomain", {}), "domains": [aux]}
        changes["train"] = {
            **changes.get("train", {}),
            "objective": stage.objective,
            "steps": steps,
            "eval_every": steps,
            "out_dir": str(out),
            "init_from": str(previous) if stage.init else None,
        }
        stage_cfg = replace(cfg, **changes)
        log.info("%s: stage %s (%s, %d steps) -> %s", name, stage.name, stage.objective, steps, out)
        train(stage_cfg)
        previous = out / "last.pt"
    assert previous is not None
    return previous

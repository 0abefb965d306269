"""Validation during training: every domain's validation split scored with the one evaluate() of
:mod:`pixcon.inference`, logged, and summarised (the primary domain's scores at the top level)."""

from __future__ import annotations

import logging
from typing import Any

from pixcon.inference import evaluate
from pixcon.models import use_domain
from pixcon.train.run import Run

log = logging.getLogger(__name__)


def validate(run: Run, step: int) -> dict[str, Any]:
    """Scores every domain's validation split, logs them and returns the summary (the primary
    domain's scores at the top level; see :func:`validation_summary`)."""
    fabric = run.fabric
    scores: dict[str, dict[str, Any]] = {}
    for d, dom in enumerate(run.domains):
        if dom.val_loader is None:
            continue
        with use_domain(run.model, d):
            # the unwrapped network under DDP: a DDP forward broadcasts buffers, a collective that a
            # rank with no validation images would never join
            scores[dom.name] = evaluate(
                run.model,
                dom.val_loader,
                dom.data.num_classes,
                dom.data.ignore_index,
                dom.data.class_names,
                autocast=fabric.autocast,
                reduce=(lambda cm: fabric.all_reduce(cm, reduce_op="sum")) if fabric.world_size > 1 else None,
            )
    result, values = validation_summary(scores, [d.name for d in run.domains])
    result["step"] = step
    run.logger.log(step, values)
    miou = result.get("miou")
    log.info("step %d: val mIoU %s", step, "n/a" if miou is None else f"{miou:.4f}")
    return result


def validation_summary(
    scores: dict[str, dict[str, Any]], names: list[str]
) -> tuple[dict[str, Any], dict[str, float]]:
    """(summary, logged scalars) of per-domain validation ``scores``.

    A single domain's summary is its scores (logged as ``val/<key>``); with several, the summary is
    the primary's scores plus ``domains`` (every domain's) and ``mean_miou``, and each domain's
    scores are also logged as ``val/<name>/<key>``.
    """
    result = dict(scores.get(names[0], {}))
    if len(names) > 1:
        mious = [s["miou"] for s in scores.values() if s.get("miou") is not None]
        result["domains"] = scores
        result["mean_miou"] = sum(mious) / len(mious) if mious else None
    values = {f"val/{k}": v for k, v in result.items() if isinstance(v, float)}
    if len(names) > 1:
        for name, sc in scores.items():
            values.update({f"val/{name}/{k}": v for k, v in sc.items() if isinstance(v, float)})
    return result, values

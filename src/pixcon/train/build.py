"""Building a run's network and optimizer: the segmenter of its domains, initialised from
``train.init_from``, with the parts its objective does not train frozen."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pixcon.checkpoint import CheckpointError
from pixcon.config import RunConfig
from pixcon.inference import export_domain_weights
from pixcon.models import Segmenter, to_multidomain
from pixcon.objectives import DomainObjectives

log = logging.getLogger(__name__)


def build_optimizer(
    cfg: RunConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The ``optim`` section's optimizer over ``model``'s trainable parameters (no weight decay on
    norms and biases) and its learning-rate schedule over ``train.steps``."""
    o, steps = cfg.optim, cfg.train.steps
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0
        )
    else:
        opt = torch.optim.AdamW(groups, lr=o.lr)

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, steps - o.warmup_steps))
        if o.schedule == "poly":
            return float((1.0 - progress) ** o.poly_power)
        if o.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def prepare_network(
    model: Segmenter,
    cfg: RunConfig,
    init: dict[str, Any] | None,
    init_path: str | Path | None,
    num_classes: Sequence[int],
    names: Sequence[str],
) -> Segmenter:
    """The network a run trains: ``model`` (a fresh segmenter with the primary domain's classes)
    for the run's domains, initialised from ``init`` (a loaded ``train.init_from``, or None).

    A single-domain ``init`` is loaded before the conversion to several domains, so every domain's
    batch norm starts from the loaded statistics; a multi-domain ``init`` into a multi-domain run
    is loaded after it (the same domain names in the same order; heads whose class count differs
    start fresh); a multi-domain ``init`` into a single-domain run gives its primary domain.
    """
    several = len(num_classes) > 1
    init_several = init is not None and len(init["domains"]) > 1
    if init is not None and not (several and init_several):
        assert init_path is not None
        weights = export_domain_weights(init, 0) if init_several else dict(init["model"])
        if init_several:
            log.info(
                "init_from %s: multi-domain checkpoint, taking its primary domain %r",
                init_path,
                init["domains"][0]["name"],
            )
        load_model_weights(model, weights, init_path)
    to_multidomain(model, num_classes, shared_affine=cfg.multidomain.shared_affine)
    if init is not None and several and init_several:
        _load_multidomain_weights(model, init, init_path, names)
    return model


def load_model_weights(model: nn.Module, weights: dict[str, Tensor], path: str | Path) -> None:
    """Initialise from another run's weights; a tensor whose shape differs (a segmentation head of
    other classes, a projection head of another size) is re-initialised, anything else missing or
    unexpected is an error naming the checkpoint."""
    weights = dict(weights)
    own = model.state_dict()
    skipped = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    for k in skipped:
        del weights[k]
    result = model.load_state_dict(weights, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k not in skipped]  # skipped: re-initialised on purpose
    if unexpected or missing:
        raise CheckpointError(
            f"init_from {path}: model mismatch (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "was it trained with the same model.arch, model.encoder and multidomain.shared_affine?"
        )
    if skipped:
        log.info("init_from %s: re-initialised %s (shape differs)", path, skipped)


def _load_multidomain_weights(
    model: nn.Module, init: dict[str, Any], path: str | Path | None, run_names: Sequence[str]
) -> None:
    names = [str(d["name"]) for d in init["domains"]]
    if names != list(run_names):
        # BN copies and heads are indexed by domain: another order would feed one domain's batches
        # through another's statistics and head.
        raise CheckpointError(
            f"init_from {path}: a multi-domain checkpoint of domains {names}, this run has {list(run_names)}; "
            "name and order the domains as in that run (--datasets NAME=PATH, the primary first), or start "
            "from a single-domain checkpoint"
        )
    load_model_weights(model, init["model"], path or "init_from")


def projection_loaded(model: nn.Module, init: dict[str, Any]) -> bool:
    """Whether ``init``'s projection head was loaded into ``model`` (every key, same shapes)."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith("projection.")}
    theirs = init["model"]
    return all(k in theirs and theirs[k].shape == v.shape for k, v in own.items())


def freeze_unused(model: Segmenter, objective: DomainObjectives) -> None:
    """Parameters the objective never uses stay frozen: the optimizer skips them and DDP does not
    wait for their gradients (it would otherwise fail with "parameters that were not used")."""
    if not objective.uses_projection_head:
        model.projection.requires_grad_(False)
    if not objective.uses_segmentation_head:
        model.net.segmentation_head.requires_grad_(False)


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (CPU runs are then bit-reproducible); warn-only where CUDA has none."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.benchmark = not on

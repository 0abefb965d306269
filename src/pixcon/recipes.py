"""Training recipes: a method of the demo table as a chain of training stages.

Each recipe is a list of :class:`Stage`; a stage trains one objective, starts from the previous
stage's checkpoint where ``init`` says so, and may first pseudo-label the unlabeled images with
the previous checkpoint. Every "-> CE" below is fine-tuning from the prototype head
(``train.head_init: prototypes``) at a third of the learning rate when the pretraining trained the
projection head; ``glcnet``, ``directclr`` (heads of their own) and the ablation
``contrast_random_head`` fine-tune from a random head at the full rate. Step budgets are shares of
the demo's pretraining and fine-tuning steps, so every method gets the same number of optimizer
steps (compute-matched against CE-only, which trains for pretrain + finetune steps).

====================  ============================================================================
recipe                stages
====================  ============================================================================
ce                    CE from scratch (pretrain + finetune steps)
joint                 CE + lambda * pixel contrast, single stage
contrast              Zhao et al.: supervised pixel contrast -> CE fine-tuning
contrast_random_head  the same, fine-tuned from a random head at the full learning rate (ablation)
contrast_joint_ft     the same, fine-tuned with CE + lambda * contrast (the pixel loss kept as a
                      regulariser) from the prototype head
supercon              SuperCon: class-balanced pixel contrast -> class-weighted CE
glcnet                GLCNet on every training image -> CE
dense_simclr          dense SimCLR (pixel InfoNCE) on every training image -> CE
directclr             DirectCLR on every training image -> CE
ssl_contrast          dense SimCLR on every image -> supervised contrast on the labeled -> CE
pseudo                contrast -> CE -> pseudo-label -> contrast on labeled + pseudo -> CE
hcsc, claws, ariel    the objective on the labeled images -> CE
multidomain           Boutillon et al.: CE on the labeled images and on a fully labeled auxiliary
                      dataset of other classes (per-domain BN and heads) + domain contrast, single
                      stage; needs ``aux_root``
====================  ============================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixcon.config import RunConfig, replace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One training run of a recipe.

    Attributes:
        name: Sub-folder of the method's run directory.
        objective: A registered objective (``train.objective``).
        budget: ``"pretrain"``, ``"finetune"`` or ``"both"``: whose steps this stage spends.
        share: Fraction of that budget (stages of one budget share it).
        init: Start from the previous stage's checkpoint.
        all_images: The objective trains on every training image (the batch size is then not
            capped by the number of labeled images).
        pseudo_label: Before training, pseudo-label the unlabeled images with the previous
            checkpoint and train on labeled + pseudo-labeled images.
        overrides: Config changes for this stage, e.g. ``{"loss": {"class_weights": "balanced"}}``.
        aux_domain: Train multi-domain with the auxiliary dataset ``run_recipe(aux_root=...)`` as
            the second domain (all its training images labeled, the batch size not capped).
        lr_scale: This stage's learning rate is ``optim.lr * lr_scale`` (fine-tuning a pretrained
            network at a lower rate than training from scratch).
    """

    name: str
    objective: str
    budget: str = "pretrain"
    share: float = 1.0
    init: bool = False
    all_images: bool = False
    pseudo_label: bool = False
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    aux_domain: bool = False
    lr_scale: float = 1.0


# Fine-tuning after pretraining starts from the prototype head (the nearest-class-mean classifier of
# the pretrained features, `train.head_init: prototypes`) at a third of optim.lr: from a random head,
# or at the full rate of CE from scratch at 3e-3 and 1e-2, fine-tuning undid the pretraining on the
# demo (README, "Why the prototype head").
FINETUNE_LR_SCALE = 1 / 3


def _finetune(
    name: str = "finetune", share: float = 1.0, objective: str = "ce", **overrides: dict[str, Any]
) -> Stage:
    """Fine-tuning (CE, or ``joint``: CE + lambda * contrast) of the previous stage's network from its
    prototype head at lr / 3."""
    train = {"head_init": "prototypes", **overrides.pop("train", {})}
    return Stage(
        name,
        objective,
        "finetune",
        share=share,
        init=True,
        lr_scale=FINETUNE_LR_SCALE,
        overrides={**overrides, "train": train},
    )


def _two_stage(
    objective: str, all_images: bool = False, prototype_head: bool = True, **finetune: dict[str, Any]
) -> list[Stage]:
    """``objective`` -> CE fine-tuning; from a random head at the full rate with ``prototype_head=False``."""
    pretrain = Stage("pretrain", objective, "pretrain", all_images=all_images)
    if not prototype_head:
        return [pretrain, Stage("finetune", "ce", "finetune", init=True, overrides=finetune)]
    return [pretrain, _finetune(**finetune)]


RECIPES: dict[str, list[Stage]] = {
    "ce": [Stage("train", "ce", "both")],
    "joint": [Stage("train", "joint", "both")],
    "contrast": _two_stage("contrast"),
    # the ablation: every two-stage recipe before the prototype head
    "contrast_random_head": _two_stage("contrast", prototype_head=False),
    # fine-tuning keeps the pixel contrast as a regulariser (CE + loss.joint_weight * contrast): at 5 %
    # labels on the demo +2.0 +- 0.9 over CE-only across 16 seeds against contrast's +1.5 +- 1.2
    # (batch variant; docs/demo_loss_variant.md)
    "contrast_joint_ft": [Stage("pretrain", "contrast", "pretrain"), _finetune(objective="joint")],
    "supercon": _two_stage("contrast", loss={"class_weights": "balanced"}),
    # GLCNet and DirectCLR train heads of their own, not the projection head: their prototypes would
    # be Euclidean means of decoder features that no loss organised, and fine-tuning from them lost
    # 2.7 and 4.1 points more than from a random head on the demo (README, "Every method").
    "glcnet": _two_stage("glcnet", all_images=True, prototype_head=False),
    "dense_simclr": _two_stage("dense_simclr", all_images=True),
    "directclr": _two_stage("directclr", all_images=True, prototype_head=False),
    "ssl_contrast": [
        Stage("ssl", "dense_simclr", "pretrain", share=0.5, all_images=True),
        Stage("contrast", "contrast", "pretrain", share=0.5, init=True),
        _finetune(),
    ],
    "pseudo": [
        Stage("contrast", "contrast", "pretrain", share=0.5),
        _finetune(share=0.5),
        Stage("contrast_pseudo", "contrast", "pretrain", share=0.5, init=True, pseudo_label=True),
        _finetune("finetune_pseudo", share=0.5),
    ],
    "hcsc": _two_stage("hcsc"),
    "claws": _two_stage("claws"),
    "ariel": _two_stage("ariel"),
    "multidomain": [Stage("train", "multidomain", "both", aux_domain=True)],
}

LABELS: dict[str, str] = {
    "ce": "CE only",
    "joint": "joint CE + lambda*contrast",
    "contrast": "contrast -> CE (Zhao)",
    "contrast_random_head": "contrast -> CE, random head",
    "contrast_joint_ft": "contrast -> CE + lambda*contrast",
    "supercon": "SuperCon",
    "glcnet": "GLCNet -> CE",
    "dense_simclr": "dense SimCLR -> CE",
    "directclr": "DirectCLR -> CE",
    "ssl_contrast": "SimCLR -> contrast -> CE",
    "pseudo": "contrast + pseudo-label round",
    "hcsc": "HCSC -> CE",
    "claws": "CLAWS -> CE",
    "ariel": "ARIEL -> CE",
    "multidomain": "multi-domain (+ aux dataset)",
}


def stage_steps(stage: Stage, pretrain_steps: int, finetune_steps: int) -> int:
    """Optimizer steps of ``stage`` (at least 1)."""
    total = {"pretrain": pretrain_steps, "finetune": finetune_steps, "both": pretrain_steps + finetune_steps}
    if stage.budget not in total:
        raise ValueError(
            f"stage {stage.name}: budget must be pretrain, finetune or both, got {stage.budget!r}"
        )
    return max(1, round(total[stage.budget] * stage.share))


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
    if name not in RECIPES:
        raise ValueError(f"unknown method {name!r}; available: {sorted(RECIPES)}")
    if train is None:
        from pixcon.train.loop import run_training as train
    stages = RECIPES[name]
    previous: Path | None = None
    batch_size = cfg.data.batch_size
    for i, stage in enumerate(stages):
        if previous is None and (stage.init or stage.pseudo_label):
            raise ValueError(
                f"recipe {name}: stage {stage.name} needs the previous stage's checkpoint "
                "(init or pseudo_label) but is the first stage"
            )
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
            from pixcon.pseudo import pseudo_label

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

"""Training recipes: a method of a label-efficiency comparison as a chain of training stages.

Recipes are library records (:class:`Recipe`: a label and a tuple of :class:`Stage`); the demo, the
CLI and studies read them, and :func:`pixcon.train.recipes.run_recipe` trains one. A stage trains
one objective, starts from the previous
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

Recipes also hold the training settings: :data:`VALIDATED` (the settings every recipe shares),
:attr:`Recipe.settings` (a recipe's own) and each stage's ``overrides`` and ``lr_scale``.
:func:`recipe_defaults` and :func:`stage_defaults` give them as config defaults
(``load_config(..., defaults=...)``, which a config file and overrides win over); ``pixcon
pretrain|finetune|train`` and studies read them, so one place holds the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# The settings every recipe shares, chosen on the validation split of the embedded dataset's coarse
# style with sweep seeds (docs/experiments/recipe_sweep.md), the defaults of every recipe that has
# no value of its own (Recipe.settings; docs/training.md#where-the-defaults-come-from). Only
# settings of the method belong here, not of the dataset or the machine:
# * optim: AdamW with cosine decay at 3e-3, CE-only's rate from {1e-3, 3e-3, 1e-2} (1e-3 was
#   8 points behind). With the SGD 1e-2 poly defaults of config.py, CE-only on a real 9-class
#   dataset at 5 labeled images reached 39-42 % test mIoU, with AdamW 57-61 %.
# * model.proj_layers 1: a linear projection head, so the prototype head of fine-tuning
#   (train.head_init: prototypes) is the cosine classifier of the pretrained embedding exactly.
# * loss: Zhao et al.'s cross-image pairs (docs/experiments/demo_loss_variant.md) at temperature
#   0.1, and lambda 0.5 for CE + lambda * contrast (joint, contrast_joint_ft). The projection head
#   runs on the sampled pixels only (loss.project_sampled): as accurate as projecting every pixel
#   on the sweep (within the seeds' spread), and cheaper at large crops.
# Left to the dataset's config (the demo sets them for its own data): data.color_jitter 0 (the
# embedded dataset's colours carry class information that test images share), loss.max_pixels
# 1024 and the other methods' matching budgets (a per-batch pixel budget sized for 64-px images on
# a 2-core CPU: it scales with image size and memory), image and batch size, the encoder.
VALIDATED: dict[str, dict[str, Any]] = {
    "optim": {"name": "adamw", "lr": 3e-3, "schedule": "cosine", "weight_decay": 1e-4},
    "model": {"proj_layers": 1},
    "loss": {"temperature": 0.1, "variant": "cross", "joint_weight": 0.5, "project_sampled": True},
}


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
# or at the full rate of CE from scratch, fine-tuning undid the pretraining on the demo
# (docs/methods.md, the prototype head).
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
    objective: str, all_images: bool = False, prototype_head: bool = True, **finetune: Any
) -> list[Stage]:
    """``objective`` -> CE fine-tuning; from a random head at the full rate with ``prototype_head=False``."""
    pretrain = Stage("pretrain", objective, "pretrain", all_images=all_images)
    if not prototype_head:
        return [pretrain, Stage("finetune", "ce", "finetune", init=True, overrides=finetune)]
    return [pretrain, _finetune(**finetune)]


@dataclass(frozen=True)
class Recipe:
    """A method of a label-efficiency comparison: its table label and its training stages.

    Attributes:
        label: The method's name in tables and plots.
        stages: Its training runs, in order.
        settings: Config changes over :data:`VALIDATED` for every stage of this recipe, e.g.
            ``{"optim": {"lr": 3e-3}}``; a stage's ``overrides`` and ``lr_scale`` apply on top.
    """

    label: str
    stages: tuple[Stage, ...]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"recipe {self.label!r} has no stage")
        first = self.stages[0]
        if first.init or first.pseudo_label:
            raise ValueError(
                f"recipe {self.label!r}: stage {first.name} needs the previous stage's checkpoint "
                "(init or pseudo_label) but is the first stage"
            )


def _recipe(label: str, stages: list[Stage], settings: dict[str, dict[str, Any]] | None = None) -> Recipe:
    return Recipe(label, tuple(stages), dict(settings or {}))


# Supervised pixel contrast -> CE at lr 1e-2 from {1e-3, 3e-3, 1e-2, 3e-2} (fine-tuning at a third of
# it), chosen for `contrast` on the recipe sweep (docs/experiments/recipe_sweep.md; the random-head
# ablation ran at it too). The recipes whose first stage is the same pixel contrast share it, so that
# they differ from `contrast` in their one named change only.
CONTRAST_RATE: dict[str, dict[str, Any]] = {"optim": {"lr": 1e-2}}


RECIPES: dict[str, Recipe] = {
    "ce": _recipe("CE only", [Stage("train", "ce", "both")]),
    "joint": _recipe("joint CE + lambda*contrast", [Stage("train", "joint", "both")]),
    # the budgets' split (a quarter pretraining: --pretrain-steps 20 --finetune-steps 60 in the
    # demo's 80) is the demo's and the study's default, chosen on the same sweep
    "contrast": _recipe("contrast -> CE (Zhao)", _two_stage("contrast"), CONTRAST_RATE),
    # the ablation: every two-stage recipe before the prototype head
    "contrast_random_head": _recipe(
        "contrast -> CE, random head", _two_stage("contrast", prototype_head=False), CONTRAST_RATE
    ),
    # fine-tuning keeps the pixel contrast as a regulariser (CE + loss.joint_weight * contrast); see
    # docs/experiments/demo_loss_variant.md for its measurements
    "contrast_joint_ft": _recipe(
        "contrast -> CE + lambda*contrast",
        [Stage("pretrain", "contrast", "pretrain"), _finetune(objective="joint")],
        CONTRAST_RATE,
    ),
    "supercon": _recipe(
        "SuperCon", _two_stage("contrast", loss={"class_weights": "balanced"}), CONTRAST_RATE
    ),
    # GLCNet and DirectCLR train heads of their own, not the projection head: their prototypes would
    # be Euclidean means of decoder features that no loss organised (docs/experiments/every_method.md)
    "glcnet": _recipe("GLCNet -> CE", _two_stage("glcnet", all_images=True, prototype_head=False)),
    "dense_simclr": _recipe("dense SimCLR -> CE", _two_stage("dense_simclr", all_images=True)),
    "directclr": _recipe("DirectCLR -> CE", _two_stage("directclr", all_images=True, prototype_head=False)),
    "ssl_contrast": _recipe(
        "SimCLR -> contrast -> CE",
        [
            Stage("ssl", "dense_simclr", "pretrain", share=0.5, all_images=True),
            Stage("contrast", "contrast", "pretrain", share=0.5, init=True),
            _finetune(),
        ],
    ),
    "pseudo": _recipe(
        "contrast + pseudo-label round",
        [
            Stage("contrast", "contrast", "pretrain", share=0.5),
            _finetune(share=0.5),
            Stage("contrast_pseudo", "contrast", "pretrain", share=0.5, init=True, pseudo_label=True),
            _finetune("finetune_pseudo", share=0.5),
        ],
        CONTRAST_RATE,
    ),
    "hcsc": _recipe("HCSC -> CE", _two_stage("hcsc")),
    "claws": _recipe("CLAWS -> CE", _two_stage("claws")),
    "ariel": _recipe("ARIEL -> CE", _two_stage("ariel")),
    # CE on the labeled images and on a fully labeled auxiliary dataset of other classes
    "multidomain": _recipe("multi-domain (+ aux dataset)", [Stage("train", "ce", "both", aux_domain=True)]),
}


def method_label(name: str) -> str:
    """The table label of recipe ``name`` (the name itself if it is not a recipe)."""
    return RECIPES[name].label if name in RECIPES else name


def recipe(name: str) -> Recipe:
    """The recipe ``name``.

    Raises:
        ValueError: unknown name (the message lists the recipes).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown method {name!r}; available: {sorted(RECIPES)}")
    return RECIPES[name]


def recipe_steps(
    stages: tuple[Stage, ...] | list[Stage], pretrain_steps: int, finetune_steps: int
) -> list[int]:
    """Optimizer steps of each stage (at least 1): the stages of one budget split it by their shares,
    rounding the cumulative shares (``floor(T * c + 1/2)``), so shares that sum to 1 spend exactly
    the budget whatever its parity (two halves of 15 are 8 and 7).

    Raises:
        ValueError: a budget other than ``pretrain``, ``finetune`` or ``both``.
    """
    total = {"pretrain": pretrain_steps, "finetune": finetune_steps, "both": pretrain_steps + finetune_steps}
    spent = dict.fromkeys(total, 0.0)
    steps = []
    for stage in stages:
        if stage.budget not in total:
            raise ValueError(
                f"stage {stage.name}: budget must be pretrain, finetune or both, got {stage.budget!r}"
            )
        t, start = total[stage.budget], spent[stage.budget]
        spent[stage.budget] = start + stage.share
        steps.append(max(1, math.floor(t * spent[stage.budget] + 0.5) - math.floor(t * start + 0.5)))
    return steps


def merge_settings(base: Mapping[str, Any], *changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each of ``changes`` over it in turn, section by section (a new nested dict)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for change in changes:
        for key, value in change.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge_settings(out[key], value)
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def recipe_defaults(name: str) -> dict[str, dict[str, Any]]:
    """The config defaults every stage of recipe ``name`` shares: :data:`VALIDATED` with the
    recipe's ``settings`` over it (a new dict).

    This is the base config of :func:`pixcon.train.recipes.run_recipe`, which gives each stage its
    objective, ``overrides`` and ``optim.lr * lr_scale`` itself:
    ``run_recipe(name, load_config(path, overrides, defaults=recipe_defaults(name)), ...)``.

    Raises:
        ValueError: unknown name (the message lists the recipes).
    """
    return merge_settings(VALIDATED, recipe(name).settings)


def stage_defaults(name: str, stage: str, base_lr: float | None = None) -> dict[str, dict[str, Any]]:
    """The config defaults of stage ``stage`` of recipe ``name``, as a run of that stage alone gets
    them (``pixcon pretrain|finetune|train``): :func:`recipe_defaults`, the stage's ``overrides``,
    its objective (``train.objective``), its learning rate ``optim.lr = base_lr * lr_scale`` and,
    for a stage that starts from the previous stage's checkpoint, ``train.head_init`` (its
    override, else ``random``).

    Args:
        name: A recipe of :data:`RECIPES`.
        stage: The name of one of its stages.
        base_lr: The recipe's learning rate (a tuned one); default the recipe's ``optim.lr``.

    Raises:
        ValueError: unknown recipe or stage (the message lists the choices).
    """
    found = [s for s in recipe(name).stages if s.name == stage]
    if not found:
        names = [s.name for s in recipe(name).stages]
        raise ValueError(f"recipe {name!r} has no stage {stage!r}; its stages: {names}")
    st = found[0]
    values = merge_settings(recipe_defaults(name), st.overrides)
    lr = values["optim"]["lr"] if base_lr is None else base_lr
    values["optim"]["lr"] = lr * st.lr_scale
    train = values.setdefault("train", {})
    train["objective"] = st.objective
    if st.init:
        train.setdefault("head_init", "random")
    return values


def pretraining_recipe(objective: str) -> str | None:
    """The first recipe of :data:`RECIPES` whose first stage trains ``objective`` (``contrast`` for
    contrast, ``glcnet`` for glcnet, ``ce`` for ce), or None."""
    return next((n for n, r in RECIPES.items() if r.stages[0].objective == objective), None)


def finetuning_stage(name: str) -> Stage | None:
    """The first stage of recipe ``name`` that fine-tunes the previous stage's network (budget
    ``finetune``, started from its checkpoint), or None for a single-stage recipe."""
    return next((s for s in recipe(name).stages if s.budget == "finetune" and s.init), None)


def flatten_settings(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of nested config values: ``("optim.lr", 0.001)``."""
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from flatten_settings(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value

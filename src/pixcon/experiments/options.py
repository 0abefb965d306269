"""The demo's options: its defaults, the quick preset, nothing that imports torch (the command
line shows them in its help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pixcon.config import LossVariant

METHODS = ("ce", "contrast")  # the default table; --methods takes any recipe, or "all"


@dataclass
class DemoOptions:
    out: str = "runs/demo"
    data_dir: str | None = None  # default: OUT/data
    # the embedded dataset's style: "coarse" (learnable in the demo's budget,
    # docs/experiments/learnability.md) or "default" (the first version, ten clothing classes)
    style: str = "coarse"
    fractions: tuple[float, ...] = (0.05, 0.25)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    num_train: int = 200
    num_val: int = 50
    num_test: int = 100
    image_size: int = 64
    encoder: str = "resnet18"
    # 80 optimizer steps for every method, a quarter of them pretraining for the two-stage ones
    # (docs/experiments/recipe_sweep.md: 20/60 ahead of 10/70, 40/40 and 60/20 on validation)
    pretrain_steps: int = 20
    finetune_steps: int = 60
    batch_size: int = 8
    # None: each recipe's own value from its record (pixcon.recipes: VALIDATED, Recipe.settings)
    lr: float | None = None
    temperature: float | None = None
    variant: LossVariant | None = None
    joint_weight: float | None = None
    max_pixels: int = 1024
    data_seed: int = 0
    class_frequencies: dict[str, float] | None = None  # clothing-class weights of the dataset (rare classes)
    progress: bool = True
    report: bool = True  # write OUT/report.html at the end
    jobs: int = 1  # runs trained at a time, each in its own worker process (1: in this process)
    extra: list[str] = field(default_factory=list)  # --set overrides for every run

    @classmethod
    def quick(cls, **kw: Any) -> DemoOptions:
        """About a minute on 2 CPU cores."""
        base: dict[str, Any] = dict(
            fractions=(0.05,),
            seeds=(0,),
            num_train=80,
            num_val=16,
            num_test=32,
            image_size=64,
            pretrain_steps=15,
            finetune_steps=15,
        )
        return cls(**{**base, **kw})

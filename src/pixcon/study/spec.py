"""What a study is: its grid (label fractions x seeds x methods), step budgets, tuning grid and
checkpoint-selection rule, and the settings that make its finished runs comparable.

No torch here: the command line parses and checks a study before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pixcon.config import ConfigError
from pixcon.recipes import RECIPES

Select = Literal["last", "best-val"]
SELECTS: tuple[str, ...] = ("last", "best-val")
# Where runs train (pixcon.study.executors): this machine, SLURM through submitit, submitit's local
# executor.
EXECUTORS: tuple[str, ...] = ("local", "submitit-local", "slurm")

# What --tune may vary. ``lr`` is optim.lr (stages with a learning-rate scale, fine-tuning at a third
# of the rate, keep their scale); ``finetune_lr_scale`` replaces that scale, and so is tuned only for
# recipes that have such a stage.
TUNABLE: dict[str, str] = {
    "lr": "optim.lr: the learning rate of every stage (fine-tuning stages keep their scale)",
    "finetune_lr_scale": "the fine-tuning stage's rate as a multiple of optim.lr (recipes with one)",
}


@dataclass(frozen=True)
class StudySpec:
    """One label-efficiency study.

    Attributes:
        fractions: Labeled fractions of the training split (nested: smaller ones are subsets).
        seeds: Seeds of the label splits and of training; the first is the tuning seed.
        methods: Recipes (:data:`pixcon.recipes.RECIPES`).
        pretrain_steps, finetune_steps: Step budgets; every method trains their sum (step-matched).
        tune: Grid per tunable key (:data:`TUNABLE`), chosen on validation per method and fraction.
        select: Checkpoint of each run that is scored: ``last``, or ``best-val`` (best validation mIoU).
        val_every: Validation interval in steps under ``best-val`` (None: each stage's steps / 4).
        label_splits: Folder of given label-split files (``pixcon split``'s names), or None to write
            them from the training split.
        stratify: Written splits cover every class where possible (reads the training masks).
        aux_root: The auxiliary dataset of recipes that train a second domain (``multidomain``).
    """

    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    pretrain_steps: int
    finetune_steps: int
    tune: dict[str, tuple[float, ...]] = field(default_factory=dict)
    select: Select = "last"
    val_every: int | None = None
    label_splits: str | None = None
    stratify: bool = False
    aux_root: str | None = None

    def __post_init__(self) -> None:
        for name, values in (("fractions", self.fractions), ("seeds", self.seeds), ("methods", self.methods)):
            if not values:
                raise ConfigError(f"study: --{name} is empty")
            if len(set(values)) != len(values):
                raise ConfigError(f"study: --{name} repeats a value: {list(values)}")
        for f in self.fractions:
            if not (math.isfinite(f) and 0.0 < f <= 1.0):
                raise ConfigError(f"study: --fractions: {f} is not in (0, 1]")
        unknown = [m for m in self.methods if m not in RECIPES]
        if unknown:
            raise ConfigError(f"study: --methods: unknown {unknown}; choose from {list(RECIPES)} or 'all'")
        for name in ("pretrain_steps", "finetune_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"study: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        for key, values in self.tune.items():
            if key not in TUNABLE:
                raise ConfigError(f"study: --tune {key}: not tunable; tunable: {sorted(TUNABLE)}")
            if not values or any(not (math.isfinite(v) and v > 0) for v in values):
                raise ConfigError(f"study: --tune {key}: give positive numbers, got {list(values)}")
            if len({f"{v:g}" for v in values}) != len(values):  # the run folders are named by {:g}
                raise ConfigError(f"study: --tune {key} repeats a value: {list(values)}")
        if len({f"{f:g}" for f in self.fractions}) != len(self.fractions):
            raise ConfigError(f"study: --fractions: two values name the same runs: {list(self.fractions)}")
        if self.select not in SELECTS:
            raise ConfigError(f"study: --select must be one of {list(SELECTS)}, got {self.select!r}")
        if self.val_every is not None and self.val_every < 1:
            raise ConfigError(f"study: --val-every must be >= 1, got {self.val_every}")
        if self.aux_root is None and any(s.aux_domain for m in self.methods for s in RECIPES[m].stages):
            raise ConfigError(
                "study: a method trains with an auxiliary dataset (multidomain); give --aux-root "
                "(a dataset folder of other classes, every training image labeled)"
            )

    def grid(self, method: str) -> list[dict[str, float]]:
        """The tuning points of ``method`` (``[{}]`` when nothing is tuned for it)."""
        keys = [k for k in sorted(self.tune) if k != "finetune_lr_scale" or has_finetune_rate(method)]
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(self.tune[k] for k in keys))
        ]

    def tuned(self, method: str) -> bool:
        return len(self.grid(method)) > 1 or bool(self.grid(method)[0])


def has_finetune_rate(method: str) -> bool:
    """Whether recipe ``method`` has a stage trained at a scaled rate (fine-tuning at lr / 3)."""
    return any(stage.lr_scale != 1.0 for stage in RECIPES[method].stages)


def parse_tune(items: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """``["lr=1e-3,3e-3", ...]`` (``--tune``, repeatable) as ``{"lr": (0.001, 0.003)}``.

    Raises:
        ConfigError: No ``=``, an unknown key, a repeated key, or a value that is not a number.
    """
    out: dict[str, tuple[float, ...]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq:
            raise ConfigError(f"--tune {item!r}: expected KEY=V1,V2,... e.g. lr=1e-3,3e-3,1e-2")
        if key not in TUNABLE:
            raise ConfigError(f"--tune {key}: not tunable; tunable: {sorted(TUNABLE)}")
        if key in out:
            raise ConfigError(f"--tune {key} is given twice")
        try:
            out[key] = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError as err:
            raise ConfigError(f"--tune {key}: expected comma-separated numbers, got {text!r}") from err
    return out


def point_name(point: Mapping[str, float]) -> str:
    """Folder name of a tuning point: ``lr=0.001,finetune_lr_scale=0.333`` (``default`` if empty)."""
    return ",".join(f"{k}={v:g}" for k, v in sorted(point.items())) or "default"


@dataclass(frozen=True)
class Cell:
    """One run of a study: a method at one label fraction and seed, with its tuning point.

    ``score_test`` is False for the tuning points that were not (yet) chosen: their test scores
    are never computed.
    """

    method: str
    fraction: float
    seed: int
    point: tuple[tuple[str, float], ...] = ()
    tuning: bool = False  # a run of the tuning grid (the tuning seed)
    score_test: bool = True

    @property
    def name(self) -> str:
        return f"{self.method}_f{self.fraction:g}_s{self.seed}"

    @property
    def params(self) -> dict[str, float]:
        return dict(self.point)

    def run_dir(self, out: Path) -> Path:
        """``OUT/runs/<method>_f<fraction>_s<seed>``; a tuning run under
        ``OUT/tuning/<point>/<method>_f<fraction>_s<seed>``."""
        if self.tuning:
            return out / "tuning" / point_name(self.params) / self.name
        return out / "runs" / self.name

    @property
    def label(self) -> str:
        extra = f" [{point_name(self.params)}]" if self.point else ""
        return f"{self.method} @ {self.fraction:g} seed {self.seed}{extra}"


def settings_record(
    spec: StudySpec,
    configs: Mapping[str, Mapping[str, Any]],
    split_ids: Mapping[str, Sequence[str]],
    label_splits: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """The settings every finished run of a study depends on (``study.json``): a restarted study
    with other values here would mix incomparable runs. ``configs`` holds each method's base run
    config, ``split_ids`` the train/val/test ids, ``label_splits`` the labeled ids by split file
    name. Fractions, seeds and methods may grow (new runs: ``config``, ``recipes`` and
    ``label_splits`` are compared on the entries both studies have), but the tuning seed may not
    change while anything is tuned."""
    record = {
        "pretrain_steps": spec.pretrain_steps,
        "finetune_steps": spec.finetune_steps,
        "tune": {k: list(v) for k, v in sorted(spec.tune.items())},
        "select": spec.select,
        "val_every": spec.val_every,
        "aux_root": spec.aux_root,
        "data_ids": {role: ids_digest(ids) for role, ids in split_ids.items()},
        "config": {method: _comparable(cfg) for method, cfg in configs.items()},
        "recipes": {method: repr(RECIPES[method]) for method in configs},
        "label_splits": {name: ids_digest(ids) for name, ids in label_splits.items()},
    }
    if spec.tune:
        record["tuning_seed"] = spec.seeds[0]
    return record


def ids_digest(ids: Sequence[str]) -> str:
    """A short SHA-256 of an id list (its order included)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _comparable(base: Mapping[str, Any]) -> dict[str, Any]:
    """The run config without what does not change a run's numbers (progress, logging, out_dir)."""
    cfg = json.loads(json.dumps(base, default=str))
    for key in ("progress", "out_dir", "overwrite", "log_every", "init_from"):
        cfg.get("train", {}).pop(key, None)
    cfg.get("data", {}).pop("labeled_split", None)
    return dict(cfg)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two settings records."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        where = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, where + ".")
        elif a != b:
            out.append(f"{where}: {a!r} -> {b!r}")
    return out


def spec_dict(spec: StudySpec) -> dict[str, Any]:
    d = asdict(spec)
    d["tune"] = {k: list(v) for k, v in spec.tune.items()}
    return d

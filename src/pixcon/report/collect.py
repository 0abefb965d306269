"""Find what a report can show: demo results and the training runs under the given directories.

A *run* is a directory with ``last.pt`` (and usually ``config.yaml``, ``metrics.csv``,
``final.json``), as ``pixcon pretrain/finetune/train`` write it. A *demo* directory has
``results.json`` and its runs under ``runs/<method>_f<fraction>_s<seed>/``, as :mod:`pixcon.demo`
writes them: the run itself for a single-stage recipe (``ce``, ``joint``), else one folder per stage
below that (e.g. ``contrast_f0.05_s0/pretrain`` and ``.../finetune``; see :data:`pixcon.recipes.RECIPES`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixcon.config import MultiDomainConfig
from pixcon.objectives.base import objective_heads
from pixcon.recipes import RECIPES

log = logging.getLogger(__name__)

# runs/<method>_f<fraction>_s<seed>: method names may hold underscores (dense_simclr), the fraction
# is written with ``{:g}`` (1, 0.05, 1e-05)
_DEMO_RUN = re.compile(
    r"^(?P<method>[a-z][a-z0-9_]*?)_f(?P<fraction>\d+(?:\.\d*)?(?:e[+-]?\d+)?)_s(?P<seed>-?\d+)$"
)
_SKIP_DIRS = {"data", "tensorboard", "label_splits"}

# The demo methods the report compares: CE only, and the contrastive model (Zhao et al.'s
# pretrain -> fine-tune recipe), whose embeddings are taken from its pretraining stage.
CE_METHOD = "ce"
CONTRAST_METHOD, CONTRAST_PRETRAIN_STAGE, CONTRAST_FINETUNE_STAGE = "contrast", "pretrain", "finetune"


def _heads(objective: str | None) -> tuple[bool, bool]:
    """(trains the segmentation head, trains the projection head); (False, False) if unknown."""
    if objective is None:
        return False, False
    if objective == "multidomain":  # a run of an earlier version: per-domain cross-entropy
        objective = "ce"
    try:
        return objective_heads(objective)
    except ValueError:
        return False, False


@dataclass
class RunInfo:
    """One training run directory.

    Attributes:
        name: Label, the path relative to the directory it was found under (e.g.
            ``runs/contrast_f0.05_s0/pretrain``), or the directory name for a run given directly.
        dir: The run directory.
        objective: ``train.objective`` of its config, a registered objective (None if unknown).
        init_from: ``train.init_from`` (the pretrain checkpoint of a fine-tuning run), or None.
        method, fraction, seed: From a demo run's directory name, else None.
        stage: The stage folder of a multi-stage demo recipe (``pretrain``, ``finetune``, ...), else None.
        config: The run's ``config.yaml`` as a dict (empty if missing).
    """

    name: str
    dir: Path
    objective: str | None = None
    init_from: str | None = None
    method: str | None = None
    fraction: float | None = None
    seed: int | None = None
    stage: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        return self.dir / "last.pt"

    @property
    def predicts(self) -> bool:
        """Whether its objective trains the segmentation head (a pretraining run cannot segment)."""
        return _heads(self.objective)[0]

    @property
    def trains_projection(self) -> bool:
        """Whether its objective trains the projection head (else its decoder features are the embedding)."""
        md, default = self.config.get("multidomain", {}), MultiDomainConfig()
        # several domains: the pixel-level domain regulariser trains it too
        several = bool(md.get("domains")) or self.objective == "multidomain"  # (the objective of old runs)
        regulariser = (
            several
            and md.get("level", default.level) == "pixel"
            and float(md.get("weight", default.weight)) > 0
        )
        return _heads(self.objective)[1] or regulariser

    @property
    def is_demo(self) -> bool:
        """Whether it is a stage of a demo recipe (its directory names a known method)."""
        return self.method in RECIPES

    @property
    def role(self) -> str:
        """What the report uses it as: ``ce`` (CE only), ``contrast`` (contrastive pretraining
        fine-tuned with CE), ``pretrain`` (its objective does not train the segmentation head),
        ``joint``, or ``other``.

        For a demo run the role follows its method and stage: ``ce`` is the method ``ce``,
        ``contrast`` the ``finetune`` stage of the method ``contrast`` (any other recipe's fine-tune
        stage is ``other``). For any other run it follows the config: ``ce`` with ``init_from`` is
        ``contrast``.
        """
        if self.is_demo:
            if self.method in (CE_METHOD, "joint"):
                return str(self.method)
            if self.method == CONTRAST_METHOD and self.stage == CONTRAST_FINETUNE_STAGE:
                return "contrast"
            if self.method == CONTRAST_METHOD and self.stage == CONTRAST_PRETRAIN_STAGE:
                return "pretrain"
            return "pretrain" if self.objective is not None and not self.predicts else "other"
        if self.objective is None:
            return "other"
        if not self.predicts:
            return "pretrain"
        if self.objective == "ce" and self.init_from:
            return "contrast"
        return self.objective


@dataclass
class Collection:
    """Everything found under the report's inputs."""

    demos: list[tuple[Path, dict[str, Any]]]  # (demo dir, results.json)
    runs: list[RunInfo]
    inputs: list[Path]


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        log.warning("cannot parse %s: %s", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _run_info(run_dir: Path, base: Path) -> RunInfo:
    cfg = _read_config(run_dir)
    train = cfg.get("train", {}) if isinstance(cfg.get("train"), dict) else {}
    name = run_dir.name if run_dir == base else run_dir.relative_to(base).as_posix()
    info = RunInfo(name=name, dir=run_dir, objective=train.get("objective"), init_from=train.get("init_from"))
    info.config = cfg
    for part, parent in ((run_dir.name, None), (run_dir.parent.name, run_dir.name)):
        m = _DEMO_RUN.match(part)
        if m:
            info.method, info.seed = m["method"], int(m["seed"])
            try:
                info.fraction = float(m["fraction"])
            except ValueError:
                info.fraction = None
            info.stage = parent
            break
    return info


def find_run_dirs(root: Path, max_depth: int = 4) -> list[Path]:
    """Directories at or below ``root`` that hold a ``last.pt``, in sorted order."""
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        if (d / "last.pt").is_file():
            found.append(d)
        if depth >= max_depth:
            return
        for child in sorted(p for p in d.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS):
            walk(child, depth + 1)

    walk(root, 0)
    return found


def collect(inputs: Sequence[str | Path]) -> Collection:
    """Demo results and runs under each input directory.

    Raises:
        FileNotFoundError: An input directory does not exist.
        ValueError: An input holds neither ``results.json`` nor any run.
    """
    demos: list[tuple[Path, dict[str, Any]]] = []
    runs: list[RunInfo] = []
    dirs = [Path(p) for p in inputs]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"run directory not found: {d}")
        results = d / "results.json"
        if results.is_file():
            try:
                demos.append((d, json.loads(results.read_text())))
            except json.JSONDecodeError as err:
                raise ValueError(f"cannot parse {results}: {err}") from err
        found = [_run_info(r, d) for r in find_run_dirs(d)]
        if not found and not results.is_file():
            raise ValueError(f"{d} holds no results.json and no run (a directory with last.pt)")
        runs += found
    return Collection(demos=demos, runs=runs, inputs=dirs)


def _sort_key(r: RunInfo) -> tuple[float, int, str]:
    return (r.fraction if r.fraction is not None else float("inf"), r.seed or 0, r.name)


def pick_predictors(runs: Sequence[RunInfo], limit: int = 3) -> list[tuple[str, RunInfo]]:
    """Runs whose predictions to compare, labelled: CE only, then contrastive pretrain + fine-tune.

    With demo runs these come from the smallest label fraction and the lowest seed (where labels
    are scarcest) that has both. Without a CE or contrastive run, any runs that can segment, up to
    ``limit``.
    """
    segmenting = sorted((r for r in runs if r.predicts), key=_sort_key)
    ces = [r for r in segmenting if r.role == "ce"]
    contrasts = [r for r in segmenting if r.role == "contrast"]
    paired = (
        (c, k)
        for c in ces
        for k in contrasts
        if c.fraction is not None and (k.fraction, k.seed) == (c.fraction, c.seed)
    )
    ce, contrast = next(paired, (ces[0] if ces else None, contrasts[0] if contrasts else None))
    picks = [(label, r) for label, r in (("CE only", ce), ("contrastive", contrast)) if r is not None]
    if picks:
        return picks
    return [(r.name, r) for r in segmenting[:limit]]


def pick_pretrained(runs: Sequence[RunInfo], predictors: Sequence[tuple[str, RunInfo]]) -> RunInfo | None:
    """The run whose embeddings to show: the pretrain run behind the contrastive predictor if
    there is one, else the demo's contrastive pretraining (method ``contrast``, stage ``pretrain``),
    else the first pretraining run, else the first joint run, else the first run."""
    by_dir = {r.dir.resolve(): r for r in runs}
    for _, p in predictors:
        if p.role == "contrast":
            if p.init_from:
                target = Path(p.init_from)
                for cand in (target, p.dir.parent / target.parent.name / target.name):
                    if cand.is_file() and cand.parent.resolve() in by_dir:
                        return by_dir[cand.parent.resolve()]
            sibling = p.dir.parent / CONTRAST_PRETRAIN_STAGE
            if sibling.resolve() in by_dir:
                return by_dir[sibling.resolve()]
    ordered = sorted(runs, key=_sort_key)
    demo_pretrain = next(
        (
            r
            for r in ordered
            if r.is_demo and r.method == CONTRAST_METHOD and r.stage == CONTRAST_PRETRAIN_STAGE
        ),
        None,
    )
    if demo_pretrain is not None:
        return demo_pretrain
    for role in ("pretrain", "joint"):
        hit = next((r for r in ordered if r.role == role), None)
        if hit is not None:
            return hit
    return ordered[0] if ordered else None

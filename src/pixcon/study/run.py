"""``pixcon study``: the label-efficiency experiment on any dataset.

For every label fraction, seed and method (a recipe of :mod:`pixcon.recipes`) it trains the method
on that seed's nested label split, scores it on the test split, and writes the table (mean ± std
over seeds, each method's gain over CE-only paired by seed), ``results.json``/``.csv``/``.md``, the
mIoU-vs-fraction plot and the HTML report.

Fairness (docs/study.md):

* every method trains the same number of optimizer steps (``pretrain_steps + finetune_steps``);
* ``--tune`` chooses each method's learning rate (and fine-tuning rate) per label fraction on the
  **validation** split, from runs of the first seed; the other seeds reuse the choice. The test
  split of a tuning run is scored only after the choice, and only for the chosen point;
* the scored checkpoint is the last step's (``--select last``) or the best validation step's
  (``best-val``), never chosen on test.

Resumable: each run records ``result.json`` in its folder when it is done, and a study started
again skips those runs and resumes the interrupted ones from their checkpoints. ``study.json`` holds
the settings the finished runs depend on; a restart with other values is refused and the
difference named. More fractions, seeds or methods only add runs.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pixcon.config import ConfigError, RunConfig, replace, to_dict
from pixcon.data.registry import open_dataset, split_ids
from pixcon.data.splits import class_presence, split_filename, write_label_splits
from pixcon.recipes import method_label
from pixcon.report import ReportOptions, build_report
from pixcon.report.tables import format_table, plot_curves, summarize
from pixcon.study.cell import Job, is_done, job_config, read_result
from pixcon.study.executors import run_jobs
from pixcon.study.spec import Cell, StudySpec, differences, digest, point_name, settings_record, spec_dict

log = logging.getLogger(__name__)

SETTINGS = "study.json"


@dataclass(frozen=True)
class Execution:
    """How the runs are executed (no influence on the numbers)."""

    executor: str = "local"  # pixcon.study.executors.EXECUTORS
    jobs: int = 1  # runs at a time on this machine (local)
    cluster: Mapping[str, Any] = field(default_factory=dict)  # submitit parameters
    progress: bool = True
    report: bool = True


@dataclass
class StudyResult:
    out_dir: Path
    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    table: str
    chosen: dict[str, dict[str, dict[str, float]]]  # method -> fraction -> chosen tuning point
    settings_table: str


def run_study(
    spec: StudySpec,
    base: RunConfig | Mapping[str, RunConfig],
    out: Path,
    execution: Execution | None = None,
) -> StudyResult:
    """Runs (or finishes) the study ``spec`` into ``out``. ``base`` is the run config every run
    starts from, or one per method (a recipe's own settings, :func:`pixcon.recipes.recipe_defaults`);
    their data sections must be the same.

    Raises:
        ConfigError: ``out`` holds a study with other settings (the differences are named), or a
            given label-split folder lacks a file.
        RuntimeError: A run failed (named).
    """
    ex = execution or Execution()
    bases = dict(base) if isinstance(base, Mapping) else {m: base for m in spec.methods}
    missing = [m for m in spec.methods if m not in bases]
    if missing:
        raise ValueError(f"run_study: no base config for methods {missing}")
    first = bases[spec.methods[0]]
    if any(bases[m].data != first.data for m in spec.methods):
        raise ValueError("run_study: the methods' base configs must share their data section")
    d = first.data
    if (spec.tune or spec.select == "best-val") and d.val_split == d.test_split:
        raise ConfigError(
            f"data.val_split and data.test_split are both {d.val_split!r}: --tune and --select best-val "
            "choose on the validation split, which must not be the split the table scores "
            "(hold out a validation split, e.g. `pixcon split` or a slice range)"
        )
    if spec.tune or spec.select == "best-val":
        try:
            split_ids(d, d.val_split)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(
                f"--tune and --select best-val choose on the validation split data.val_split={d.val_split!r}, "
                f"which cannot be read: {err}"
            ) from err
    given = _given_splits(spec)
    out.mkdir(parents=True, exist_ok=True)
    splits = given if given is not None else _write_splits(spec, first, out)
    if spec.select == "best-val":
        bases = {m: replace(bases[m], train={"keep_best": True}) for m in spec.methods}
    record = settings_record(spec, {m: to_dict(bases[m]) for m in spec.methods})
    _claim_settings(out, record, splits)

    def job(cell: Cell) -> Job:
        cfg = job_config(bases[cell.method], cell, splits[(cell.fraction, cell.seed)])
        return Job(
            cell,
            cfg,
            cell.run_dir(out),
            spec.pretrain_steps,
            spec.finetune_steps,
            select=spec.select,
            val_every=_val_every(spec),
            aux_root=spec.aux_root,
        )

    tuning = [job(c) for c in _tuning_cells(spec)]
    total = len(tuning) + sum(
        len(spec.seeds) if spec.tuned(m) else 0 for m in spec.methods for _ in spec.fractions
    )
    bar = tqdm(total=total, desc="study", unit="run", disable=not ex.progress, dynamic_ncols=True)

    def done(j: Job) -> None:
        bar.set_postfix_str(j.cell.label)
        bar.update()

    _execute(tuning, out, ex, done)
    chosen = _choose(spec, tuning)
    final = [job(c) for c in _final_cells(spec, chosen)]
    _execute(final, out, ex, done)
    bar.close()

    by_cell = {(j.cell.method, j.cell.fraction, j.cell.seed): j for j in tuning if j.cell.score_test}
    by_cell.update({(j.cell.method, j.cell.fraction, j.cell.seed): j for j in final})
    runs = []
    for fraction in spec.fractions:
        for seed in spec.seeds:
            for method in spec.methods:
                result = read_result(by_cell[(method, fraction, seed)].run_dir)
                assert result is not None and "test_miou" in result
                runs.append(result)
    summary = summarize(runs, spec.fractions, spec.methods)
    table = format_table(summary, spec.methods)
    settings = settings_table(spec, runs, chosen)
    _write_outputs(out, spec, runs, summary, table, settings, chosen)
    if ex.report:
        build_report([out], out / "report.html", ReportOptions(progress=ex.progress))
    return StudyResult(out, runs, summary, table, chosen, settings)


def _val_every(spec: StudySpec) -> int | None:
    if spec.select != "best-val":
        return None  # one validation, at the last step
    return spec.val_every or max(1, min(spec.pretrain_steps, spec.finetune_steps) // 4)


def _tuning_cells(spec: StudySpec) -> list[Cell]:
    """Every run of the first phase: the tuning grid on the first seed for tuned methods (scored
    on validation only), every seed of the methods without a grid."""
    cells = []
    for fraction in spec.fractions:
        for seed in spec.seeds:
            for method in spec.methods:
                if not spec.tuned(method):
                    cells.append(Cell(method, fraction, seed))
                elif seed == spec.seeds[0]:
                    cells += [
                        Cell(method, fraction, seed, tuple(sorted(p.items())), tuning=True, score_test=False)
                        for p in spec.grid(method)
                    ]
    return cells


def _choose(spec: StudySpec, tuning: list[Job]) -> dict[str, dict[str, dict[str, float]]]:
    """Per tuned method and fraction, the grid point with the highest validation mIoU (ties: the
    first in grid order). Only validation scores are read."""
    chosen: dict[str, dict[str, dict[str, float]]] = {}
    for method in spec.methods:
        if not spec.tuned(method):
            continue
        for fraction in spec.fractions:
            scored = []
            for j in tuning:
                if (j.cell.method, j.cell.fraction) == (method, fraction):
                    result = read_result(j.run_dir)
                    assert result is not None
                    val = result.get("val_miou")
                    if val is None:
                        raise RuntimeError(
                            f"study: {j.cell.label} has no validation score to tune on: does the dataset "
                            f"have a validation split (data.val_split={j.cfg.data.val_split!r})?"
                        )
                    scored.append((float(val), j.cell.params))
            best = max(scored, key=lambda s: s[0])  # max keeps the first of equal scores
            chosen.setdefault(method, {})[f"{fraction:g}"] = best[1]
            log.info(
                "study: %s at %g: chose %s (val mIoU %s)",
                method,
                fraction,
                point_name(best[1]),
                ", ".join(f"{point_name(p)}: {v:.4f}" for v, p in scored),
            )
    return chosen


def _final_cells(spec: StudySpec, chosen: dict[str, dict[str, dict[str, float]]]) -> list[Cell]:
    """The second phase: each tuned method's chosen point, scored on test for the first seed (the
    tuning run itself) and trained for the other seeds."""
    cells = []
    for fraction in spec.fractions:
        for seed in spec.seeds:
            for method in spec.methods:
                if not spec.tuned(method):
                    continue
                point = tuple(sorted(chosen[method][f"{fraction:g}"].items()))
                cells.append(Cell(method, fraction, seed, point, tuning=seed == spec.seeds[0]))
    return cells


def _execute(jobs: list[Job], out: Path, ex: Execution, done: Any) -> None:
    """Runs the jobs that are not done yet; counts the others as done at once."""
    pending = []
    for j in jobs:
        if is_done(j):
            done(j)
        else:
            pending.append(j)
    if pending:
        log.info("study: %d of %d runs to do", len(pending), len(jobs))
    run_jobs(pending, ex.executor, ex.jobs, on_done=done, folder=out / "submitit", cluster=ex.cluster)


def _given_splits(spec: StudySpec) -> dict[tuple[float, int], Path] | None:
    """The label-split file of every (fraction, seed) in ``spec.label_splits`` (``pixcon split``'s
    names), or None when the study writes them."""
    if spec.label_splits is None:
        return None
    folder = Path(spec.label_splits)
    files = {(f, s): folder / split_filename(f, s) for f in spec.fractions for s in spec.seeds}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(
            f"--label-splits {folder}: missing {missing[:3]}{' ...' if len(missing) > 3 else ''} "
            "(write them with `pixcon split --fractions ... --seeds ...`)"
        )
    return files


def _write_splits(spec: StudySpec, base: RunConfig, out: Path) -> dict[tuple[float, int], Path]:
    """Nested label splits per seed of the training split, written to ``OUT/label_splits``."""
    ids = split_ids(base.data, base.data.train_split)
    presence = class_presence(open_dataset(base.data, ids=ids)) if spec.stratify else None
    folder = out / "label_splits"
    write_label_splits(ids, spec.fractions, spec.seeds, folder, presence=presence)
    return {(f, s): folder / split_filename(f, s) for f in spec.fractions for s in spec.seeds}


def _claim_settings(out: Path, record: dict[str, Any], splits: dict[tuple[float, int], Path]) -> None:
    """Writes ``study.json``, or checks a restarted study against it: every setting equal, and
    every label split of both studies the same file content."""
    record = dict(record)
    record["label_splits"] = {p.name: digest([p]) for p in splits.values()}
    path = out / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        old_configs, configs = old.get("config", {}), record["config"]
        common = set(old_configs) & set(configs)  # a method added later only adds runs
        diff = differences(
            {k: v for k, v in old.items() if k not in ("label_splits", "config")},
            {k: v for k, v in record.items() if k not in ("label_splits", "config")},
        )
        diff += differences({m: old_configs[m] for m in common}, {m: configs[m] for m in common}, "config.")
        diff += [
            f"label split {name}: its ids changed"
            for name, h in record["label_splits"].items()
            if old.get("label_splits", {}).get(name, h) != h
        ]
        if diff:
            raise ConfigError(
                f"{out} holds a study with other settings, and its finished runs would not be comparable: "
                + "; ".join(diff[:6])
                + (f" (and {len(diff) - 6} more)" if len(diff) > 6 else "")
                + f". Use another --out, or restore those settings (they are in {path})"
            )
        record["label_splits"] = {**old.get("label_splits", {}), **record["label_splits"]}
        record["config"] = {**old_configs, **configs}
    tmp = path.with_name(f".{SETTINGS}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def settings_table(
    spec: StudySpec, runs: list[dict[str, Any]], chosen: dict[str, dict[str, dict[str, float]]]
) -> str:
    """Markdown: per method and fraction, the chosen tuning point and the mean wall time of a run
    (the steps are the same for every method; their cost is not)."""
    header = ["method", *[f"{f * 100:g}%" for f in spec.fractions]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in spec.methods:
        label = method_label(method)
        if any(r["pretrained_encoder"] for r in runs if r["method"] == method):
            label += " (pretrained encoder)"
        cells = [label]
        for f in spec.fractions:
            mine = [r["seconds"] for r in runs if r["method"] == method and r["fraction"] == f]
            seconds = sum(mine) / len(mine) if mine else float("nan")
            point = chosen.get(method, {}).get(f"{f:g}")
            cells.append((f"{point_name(point)}, " if point else "") + f"{seconds:.0f} s/run")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_outputs(
    out: Path,
    spec: StudySpec,
    runs: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    table: str,
    settings: str,
    chosen: dict[str, Any],
) -> None:
    options = spec_dict(spec)
    (out / "results.json").write_text(
        json.dumps({"options": options, "chosen": chosen, "runs": runs, "summary": summary}, indent=2)
    )
    fields = ["method", "fraction", "seed", "num_labeled", "val_miou", "test_miou", "test_kappa"]
    fields += ["test_pixel_acc", "seconds", "params", "pretrained_encoder"]
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)
    (out / "results.md").write_text(table + "\n\n" + settings + "\n")
    plot_curves(summary, spec.methods, out / "miou_vs_fraction.png")

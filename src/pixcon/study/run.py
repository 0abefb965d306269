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

from pixcon.config import ConfigError, DataConfig, RunConfig, replace, to_dict
from pixcon.data.folder import read_ids, write_ids
from pixcon.data.registry import open_dataset, split_ids
from pixcon.data.splits import class_presence, nested_label_splits, split_filename
from pixcon.recipes import method_label
from pixcon.report import ReportOptions, build_report
from pixcon.report.tables import format_table, plot_curves, summarize
from pixcon.study.cell import Job, is_done, job_config, read_result
from pixcon.study.executors import run_jobs
from pixcon.study.spec import Cell, StudySpec, differences, point_name, settings_record, spec_dict
from pixcon.train.folder import acquire_lock

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
        StudyRunError: A run failed in a worker (named); in this process its own error propagates.
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
    ids = _split_ids(d, choosing=bool(spec.tune) or spec.select == "best-val")
    labeled = _given_splits(spec)
    labeled = labeled if labeled is not None else _nested_splits(spec, first, ids["train"])
    if spec.select == "best-val":
        bases = {m: replace(bases[m], train={"keep_best": True}) for m in spec.methods}
    configs = {m: to_dict(bases[m]) for m in spec.methods}
    record = settings_record(spec, configs, ids, {split_filename(*key): v for key, v in labeled.items()})
    lock = acquire_lock(out)  # one study writes a folder at a time
    try:
        _claim_settings(out, record)
        splits = _split_files(spec, out, labeled)
        return _run(spec, bases, out, ex, splits)
    finally:
        lock.release()


def _run(
    spec: StudySpec,
    bases: dict[str, RunConfig],
    out: Path,
    ex: Execution,
    splits: dict[tuple[float, int], Path],
) -> StudyResult:
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
    tuned = sum(spec.tuned(m) for m in spec.methods)
    total = len(tuning) + tuned * len(spec.fractions) * len(spec.seeds)  # + the second phase
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
                    if result.get("diverged"):
                        continue
                    if val is None:
                        raise ConfigError(
                            f"study: {j.cell.label} has no validation score to tune on: does the dataset "
                            f"have a validation split (data.val_split={j.cfg.data.val_split!r})?"
                        )
                    scored.append((float(val), j.cell.params))
            if not scored:
                raise ConfigError(
                    f"study: every tuning point of {method} at {fraction:g} diverged (NaN or infinite loss); "
                    "try smaller --tune values"
                )
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


def _split_ids(d: DataConfig, choosing: bool) -> dict[str, list[str]]:
    """The train, val and test ids (empty where the split is missing). When the study chooses on
    validation (``--tune``, ``best-val``), the val split must be readable and must not be the test
    split; a partial overlap is warned about."""
    ids: dict[str, list[str]] = {"train": split_ids(d, d.train_split)}
    for role, name in (("val", d.val_split), ("test", d.test_split)):
        try:
            ids[role] = split_ids(d, name)
        except (FileNotFoundError, ValueError) as err:
            if choosing and role == "val":
                raise ConfigError(
                    f"--tune and --select best-val choose on the validation split data.val_split={name!r}, "
                    f"which cannot be read: {err}"
                ) from err
            ids[role] = []
    if choosing:
        val, test = set(ids["val"]), set(ids["test"])
        if d.val_split == d.test_split or (val and val == test):
            raise ConfigError(
                f"data.val_split {d.val_split!r} and data.test_split {d.test_split!r} hold the same images: "
                "--tune and --select best-val choose on the validation split, which must not be the split "
                "the table scores (hold out a validation split, e.g. `pixcon split` or a slice range)"
            )
        if val & test:
            log.warning(
                "study: %d images are in both the validation split %r and the test split %r: what is chosen "
                "on validation is partly chosen on test",
                len(val & test),
                d.val_split,
                d.test_split,
            )
    return ids


def _given_splits(spec: StudySpec) -> dict[tuple[float, int], list[str]] | None:
    """The ids of every (fraction, seed) in ``spec.label_splits`` (``pixcon split``'s file names), or
    None when the study makes them."""
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
    return {key: read_ids(path) for key, path in files.items()}


def _nested_splits(spec: StudySpec, base: RunConfig, train: list[str]) -> dict[tuple[float, int], list[str]]:
    """Nested label splits per seed of the training split (written only once the settings are claimed)."""
    presence = class_presence(open_dataset(base.data, ids=train)) if spec.stratify else None
    out = {}
    for seed in spec.seeds:
        for f, subset in nested_label_splits(train, spec.fractions, seed, presence=presence).items():
            out[(f, seed)] = list(subset)
    return out


def _split_files(
    spec: StudySpec, out: Path, labeled: dict[tuple[float, int], list[str]]
) -> dict[tuple[float, int], Path]:
    """The label-split files: the given ones, or ``OUT/label_splits/`` written now."""
    if spec.label_splits is not None:
        return {key: Path(spec.label_splits) / split_filename(*key) for key in labeled}
    folder = out / "label_splits"
    return {key: write_ids(folder / split_filename(*key), ids) for key, ids in labeled.items()}


def _claim_settings(out: Path, record: dict[str, Any]) -> None:
    """Writes ``study.json``, or checks a restarted study against it: every setting equal, the
    same train/val/test ids, and every label split and recipe both studies have the same."""
    record = dict(record)
    path = out / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        grown = ("label_splits", "config", "recipes")  # more methods, fractions, seeds: more runs
        diff = differences(
            {k: v for k, v in old.items() if k not in grown},
            {k: v for k, v in record.items() if k not in grown},
        )
        for key in grown:
            before, now = old.get(key, {}), record[key]
            common = set(before) & set(now)
            diff += differences({k: before[k] for k in common}, {k: now[k] for k in common}, f"{key}.")
        if diff:
            raise ConfigError(
                f"{out} holds a study with other settings, and its finished runs would not be comparable: "
                + "; ".join(diff[:6])
                + (f" (and {len(diff) - 6} more)" if len(diff) > 6 else "")
                + f". Use another --out, or restore those settings (they are in {path})"
            )
        for key in grown:
            record[key] = {**old.get(key, {}), **record[key]}
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

"""The label-efficiency experiment behind ``pixcon demo`` (an experiment: the library never imports it).

For each label fraction and seed it trains, on the embedded dataset (Fashion-MNIST items pasted on
real textures, see :mod:`pixcon.data.synthetic`):

* ``ce``       -- cross-entropy only, for ``pretrain_steps + finetune_steps`` steps (compute-matched);
* ``contrast`` -- supervised pixel contrastive pretraining (Zhao et al.), then CE fine-tuning;
* ``joint``    -- the single-stage CE + lambda * contrast baseline, compute-matched too;
* with ``--methods``, any recipe of :mod:`pixcon.recipes` (``all``: every one), all given the same
  number of optimizer steps (``multidomain`` also trains on ``DATA-aux``, a second dataset made
  with ``style="aux"``, one batch of each per step);

evaluates each on the test split, and writes ``results.json``, ``results.csv``, a plot of
mIoU against label fraction and ``report.html`` (:mod:`pixcon.report`; ``--no-report`` skips it).
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pixcon.config import RunConfig, load_config, replace
from pixcon.data.folder import read_ids
from pixcon.data.splits import split_filename, write_label_splits
from pixcon.data.synthetic import generate_dataset
from pixcon.experiments.options import DemoOptions
from pixcon.inference import evaluate_checkpoint
from pixcon.recipes import RECIPES
from pixcon.report import ReportOptions, build_report
from pixcon.report.tables import format_table, plot_curves, summarize
from pixcon.train.recipes import run_recipe

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    out_dir: Path
    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    table: str


def _base_config(opts: DemoOptions, data_dir: Path) -> RunConfig:
    """The demo's settings, then the ``--set`` overrides (which win)."""
    demo = {
        # No colour jitter: the dataset's colours carry class information (tinted textures) that
        # test images share (docs/experiments/prototype_head.md).
        "data": {
            "root": str(data_dir),
            "image_size": opts.image_size,
            "batch_size": opts.batch_size,
            "color_jitter": 0.0,
        },
        # A one-layer projection head: the pretrained embedding is then a linear map of the decoder
        # features, and the prototype head of the fine-tuning stage is its cosine classifier exactly.
        "model": {"encoder": opts.encoder, "proj_layers": 1},
        "loss": {
            "temperature": opts.temperature,
            "variant": opts.variant,
            "max_pixels": opts.max_pixels,
            "joint_weight": opts.joint_weight,
        },
        # every method gets the same pixel budget (dense SimCLR/DirectCLR: pairs, 2 pixels each)
        "ssl": {"max_pairs": max(2, opts.max_pixels // 2)},
        "hcsc": {"max_pixels": opts.max_pixels},
        "claws": {"max_pixels": opts.max_pixels},
        "ariel": {"max_pixels": opts.max_pixels},
        "optim": {"name": "adamw", "lr": opts.lr, "schedule": "cosine", "weight_decay": 1e-4},
        # A second demo into the same --out retrains every run into its folder: each run replaces
        # the earlier one's files (train.overwrite), so the table is always that of fresh runs.
        "train": {"progress": False, "log_every": 5, "overwrite": True},
    }
    return load_config(overrides=opts.extra, defaults=demo)


def run_demo(opts: DemoOptions) -> DemoResult:
    """Run the whole experiment; returns per-run scores, the summary and the printed table."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(opts.data_dir) if opts.data_dir else out / "data"
    sizes: dict[str, Any] = dict(num_train=opts.num_train, num_val=opts.num_val, num_test=opts.num_test)
    generate_dataset(
        data_dir,
        seed=opts.data_seed,
        image_size=opts.image_size,
        class_frequencies=opts.class_frequencies,
        **sizes,
    )
    aux_dir = None
    if any(stage.aux_domain for m in opts.methods for stage in RECIPES[m].stages):
        # The second domain of the multi-domain method: other textures, four coarse clothing
        # classes, other image statistics; every training image labeled.
        aux_dir = data_dir.with_name(data_dir.name + "-aux")
        generate_dataset(aux_dir, seed=opts.data_seed, image_size=opts.image_size, style="aux", **sizes)
    train_ids = read_ids(data_dir / "splits" / "train.txt")
    split_dir = out / "label_splits"
    write_label_splits(train_ids, opts.fractions, opts.seeds, split_dir)
    base = _base_config(opts, data_dir)

    tasks = []
    for fraction in opts.fractions:
        for seed in opts.seeds:
            split_file = split_dir / split_filename(fraction, seed)
            num_labeled = len(read_ids(split_file))
            cfg = replace(base, data={"labeled_split": str(split_file)}, train={"seed": seed})
            for method in opts.methods:
                run_dir = out / "runs" / f"{method}_f{fraction:g}_s{seed}"
                tasks.append(
                    _Task(
                        method,
                        fraction,
                        seed,
                        num_labeled,
                        cfg,
                        run_dir,
                        opts.pretrain_steps,
                        opts.finetune_steps,
                        aux_dir,
                    )
                )
    bar = tqdm(total=len(tasks), desc="demo", disable=not opts.progress, dynamic_ncols=True)
    if opts.jobs == 1:
        runs = []
        for task in tasks:
            bar.set_postfix_str(task.label)
            runs.append(_train_and_score(task))
            bar.update()
    else:
        runs = _run_parallel(tasks, opts.jobs, bar)
    bar.close()
    summary = summarize(runs, opts.fractions, opts.methods)
    table = format_table(summary, opts.methods)
    _write_outputs(out, opts, runs, summary, table)
    if opts.report:
        build_report([out], out / "report.html", ReportOptions(progress=opts.progress))
    return DemoResult(out, runs, summary, table)


@dataclass(frozen=True)
class _Task:
    """One cell of the demo: a method trained and scored at one label fraction and seed."""

    method: str
    fraction: float
    seed: int
    num_labeled: int
    cfg: RunConfig
    run_dir: Path
    pretrain_steps: int
    finetune_steps: int
    aux_dir: Path | None

    @property
    def label(self) -> str:
        return f"{self.method} @ {self.fraction:g} seed {self.seed}"


def _train_and_score(task: _Task) -> dict[str, Any]:
    """Trains ``task``'s recipe and scores its last checkpoint on the test split."""
    tic = time.perf_counter()
    ckpt = run_recipe(
        task.method,
        task.cfg,
        task.run_dir,
        task.pretrain_steps,
        task.finetune_steps,
        task.num_labeled,
        aux_root=task.aux_dir,
    )
    scores = evaluate_checkpoint(ckpt, split="test")
    log.info("%s f=%g seed=%d: test mIoU %.4f", task.method, task.fraction, task.seed, scores["miou"])
    return {
        "method": task.method,
        "fraction": task.fraction,
        "seed": task.seed,
        "num_labeled": task.num_labeled,
        "test_miou": scores["miou"],
        "test_kappa": scores["kappa"],
        "test_pixel_acc": scores["pixel_acc"],
        "iou_per_class": scores["iou_per_class"],
        "seconds": round(time.perf_counter() - tic, 1),
        "checkpoint": str(ckpt),
    }


def _init_worker(threads: int, level: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pixcon").setLevel(level)


def _run_parallel(tasks: list[_Task], jobs: int, bar: Any) -> list[dict[str, Any]]:
    """Runs ``tasks`` in ``jobs`` spawned worker processes, each with 1/jobs of this process's
    intra-op threads (at least one); returns the runs in task order. The first failure cancels
    the tasks not yet started and is raised."""
    threads = max(1, torch.get_num_threads() // jobs)
    level = logging.getLogger("pixcon").getEffectiveLevel()
    log.info("demo: %d runs in %d worker processes, %d thread(s) each", len(tasks), jobs, threads)
    results: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads, level),
    ) as pool:
        futures = {pool.submit(_train_and_score, task): i for i, task in enumerate(tasks)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise RuntimeError(f"demo run {tasks[futures[future]].label} failed: {error}") from error
                i = futures[future]
                results[i] = future.result()
                bar.set_postfix_str(tasks[i].label)
                bar.update()
    return [results[i] for i in range(len(tasks))]


def _write_outputs(
    out: Path, opts: DemoOptions, runs: list[dict[str, Any]], summary: list[dict[str, Any]], table: str
) -> None:
    (out / "results.json").write_text(
        json.dumps({"options": asdict(opts), "runs": runs, "summary": summary}, indent=2)
    )
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(
            f,
            fieldnames=[
                "method",
                "fraction",
                "seed",
                "num_labeled",
                "test_miou",
                "test_kappa",
                "test_pixel_acc",
                "seconds",
            ],
            extrasaction="ignore",
        )
        w.writeheader()
        w.writerows(runs)
    (out / "results.md").write_text(table + "\n")
    plot_curves(summary, opts.methods, out / "miou_vs_fraction.png")

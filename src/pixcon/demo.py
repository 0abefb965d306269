"""The label-efficiency experiment behind ``pixcon demo``.

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

import argparse
import csv
import json
import logging
import statistics
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pixcon.config import ConfigError, LossVariant, RunConfig, load_config, replace
from pixcon.recipes import LABELS, RECIPES, run_recipe

# pixcon.data, pixcon.evaluate and torch are imported where they are used: `pixcon --help` builds
# the demo's arguments from this module and should not wait seconds for torch and Lightning.

log = logging.getLogger(__name__)

METHODS = ("ce", "contrast", "joint")  # the default table; --methods takes any recipe, or "all"
ALL_METHODS = tuple(RECIPES)
METHOD_LABELS = LABELS


@dataclass
class DemoOptions:
    out: str = "runs/demo"
    data_dir: str | None = None  # default: OUT/data
    fractions: tuple[float, ...] = (0.05, 0.25)
    seeds: tuple[int, ...] = (0, 1)
    methods: tuple[str, ...] = METHODS
    num_train: int = 200
    num_val: int = 50
    num_test: int = 100
    image_size: int = 64
    encoder: str = "resnet18"
    pretrain_steps: int = 40
    finetune_steps: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    temperature: float = 0.1
    # Zhao et al.'s cross-image loss: positives also from a partner image, negatives from the
    # anchor's own. At 5 % labels it gains as much as "batch" over 16 seeds (+1.4 +- 0.9 against
    # +1.5 +- 1.2), and the demo's two seeds show that gain (docs/demo_loss_variant.md).
    variant: LossVariant = "cross"
    max_pixels: int = 1024
    joint_weight: float = 0.5
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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        given = {k: v for k, v in vars(args).items() if k in cls.__dataclass_fields__ and v is not None}
        for key, conv in (("fractions", float), ("seeds", int), ("methods", str)):
            if key in given:
                try:
                    given[key] = tuple(conv(x) for x in str(given[key]).split(",") if x.strip())
                except ValueError as err:
                    raise ConfigError(f"--{key}: cannot parse {given[key]!r}") from err
        if "methods" in given:
            if given["methods"] == ("all",):
                given["methods"] = ALL_METHODS
            unknown = [m for m in given["methods"] if m not in RECIPES]
            if unknown:
                raise ConfigError(f"--methods: unknown {unknown}; choose from {list(RECIPES)} or 'all'")
        if given.get("jobs", 1) < 1:
            raise ConfigError(f"--jobs must be >= 1, got {given['jobs']}")
        if "class_frequencies" in given:
            from pixcon.data.synthetic import parse_class_frequencies

            given["class_frequencies"] = parse_class_frequencies(given["class_frequencies"])
        if getattr(args, "quiet", False):
            given["progress"] = False
        if getattr(args, "no_report", False):
            given["report"] = False
        return cls.quick(**given) if args.quick else cls(**given)


@dataclass
class DemoResult:
    out_dir: Path
    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    table: str


def add_demo_args(p: argparse.ArgumentParser) -> None:
    d = DemoOptions()
    p.add_argument("--out", default=None, help=f"output folder (default {d.out})")
    p.add_argument(
        "--data-dir", default=None, help="where the embedded dataset is written (default OUT/data)"
    )
    p.add_argument(
        "--fractions", help=f"label fractions, comma-separated (default {','.join(map(str, d.fractions))})"
    )
    p.add_argument("--seeds", help=f"seeds, comma-separated (default {','.join(map(str, d.seeds))})")
    p.add_argument(
        "--methods",
        help=f"comma-separated methods (default {','.join(METHODS)}), or 'all': {','.join(ALL_METHODS)}",
    )
    p.add_argument(
        "--steps", dest="finetune_steps", type=int, help=f"fine-tuning steps (default {d.finetune_steps})"
    )
    p.add_argument(
        "--pretrain-steps", type=int, help=f"contrastive pretraining steps (default {d.pretrain_steps})"
    )
    p.add_argument("--image-size", type=int, help=f"image size in pixels (default {d.image_size})")
    p.add_argument("--encoder", help=f"smp encoder (default {d.encoder})")
    p.add_argument("--num-train", type=int, help=f"training pool size (default {d.num_train})")
    p.add_argument("--num-test", type=int, help=f"test images (default {d.num_test})")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--temperature", type=float, help=f"contrastive temperature (default {d.temperature})")
    p.add_argument(
        "--variant",
        choices=typing.get_args(LossVariant),
        help=f"pixel-contrast pairs: batch, within (one image) or cross (image pairs) (default {d.variant})",
    )
    p.add_argument(
        "--max-pixels", type=int, help=f"pixel budget per batch, for every method (default {d.max_pixels})"
    )
    p.add_argument(
        "--class-frequencies",
        help="clothing-class weights of the generated dataset, e.g. 'bag=0.1,sandal=0.2' (others 1); "
        "an existing --data-dir must have been generated with the same weights",
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="runs trained at a time, each in a worker process with 1/N of the CPU threads "
        f"(default {d.jobs}: one after the other in this process)",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings, about a minute")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="do not write OUT/report.html")
    p.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="config override for every run, e.g. --set loss.form=supcon",
    )


def _base_config(opts: DemoOptions, data_dir: Path) -> RunConfig:
    """The demo's settings, then the ``--set`` overrides (which win)."""
    demo = {
        # No colour jitter: the dataset's colours carry class information (tinted textures) that
        # test images share; jitter cost CE-only 2.3 points of test mIoU (README, "The demo").
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
        "train": {"progress": False, "log_every": 5},
    }
    return load_config(overrides=opts.extra, defaults=demo)


def run_demo(opts: DemoOptions) -> DemoResult:
    """Run the whole experiment; returns per-run scores, the summary and the printed table."""
    from tqdm.auto import tqdm

    from pixcon.data.folder import read_ids
    from pixcon.data.splits import split_filename, write_label_splits
    from pixcon.data.synthetic import generate_dataset

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(opts.data_dir) if opts.data_dir else out / "data"
    sizes = dict(num_train=opts.num_train, num_val=opts.num_val, num_test=opts.num_test)
    generate_dataset(
        data_dir,
        seed=opts.data_seed,
        image_size=opts.image_size,
        class_frequencies=opts.class_frequencies,
        **sizes,
    )
    aux_dir = None
    if any(stage.aux_domain for m in opts.methods for stage in RECIPES[m]):
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
        from pixcon.report import ReportOptions, build_report

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
    from pixcon.evaluate import evaluate_checkpoint

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
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pixcon").setLevel(level)


def _run_parallel(tasks: list[_Task], jobs: int, bar: Any) -> list[dict[str, Any]]:
    """Runs ``tasks`` in ``jobs`` spawned worker processes, each with 1/jobs of this process's
    intra-op threads (at least one); returns the runs in task order. The first failure cancels
    the tasks not yet started and is raised."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    import torch

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


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarize(
    runs: list[dict[str, Any]], fractions: tuple[float, ...], methods: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Per fraction: mean and std of test mIoU over seeds for each method and, for every method
    other than CE, its gain over CE-only paired by seed (``row["gains"][method]``); ``row["gain"]``
    is the gain of ``contrast`` (Zhao et al.) when both ran."""
    rows = []
    for f in fractions:
        row: dict[str, Any] = {
            "fraction": f,
            "num_labeled": next((r["num_labeled"] for r in runs if r["fraction"] == f), None),
            "gains": {},
        }
        ce = {r["seed"]: r["test_miou"] for r in runs if r["fraction"] == f and r["method"] == "ce"}
        for m in methods:
            mine = [r for r in runs if r["fraction"] == f and r["method"] == m]
            row[m] = _mean_std([r["test_miou"] for r in mine])
            paired = [r["test_miou"] - ce[r["seed"]] for r in mine if r["seed"] in ce]
            if m != "ce" and paired:
                row["gains"][m] = _mean_std(paired)
        if "contrast" in row["gains"]:
            row["gain"] = row["gains"]["contrast"]
        rows.append(row)
    return rows


def table_rows(summary: list[dict[str, Any]], methods: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: a row per method, a column per label fraction; each
    cell is test mIoU x100 (mean ± std over seeds) and, but for CE, the gain over CE paired by seed."""
    header = ["method", *[f"{row['fraction'] * 100:g}% ({row['num_labeled']} img)" for row in summary]]
    rows = []
    for m in methods:
        cells = [METHOD_LABELS.get(m, m)]
        for row in summary:
            cell = f"{100 * row[m]['mean']:.1f} ± {100 * row[m]['std']:.1f}" if m in row else "n/a"
            gain = row.get("gains", {}).get(m)
            if gain is not None:
                cell += f" ({100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f})"
            cells.append(cell)
        rows.append(cells)
    return header, rows


def format_table(summary: list[dict[str, Any]], methods: tuple[str, ...]) -> str:
    """Markdown table of :func:`table_rows`."""
    header, rows = table_rows(summary, methods)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


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


def plot_curves(summary: list[dict[str, Any]], methods: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    many = len(methods) > 4  # legend beside the axes, in a smaller font, so no curve is hidden
    fig, ax = plt.subplots(figsize=(8.5 if many else 6, 4), dpi=120)
    xs = [row["fraction"] * 100 for row in summary]
    markers = "osD^v<>ph*XP"
    for i, m in enumerate(methods):
        mean = [100 * row[m]["mean"] for row in summary]
        std = [100 * row[m]["std"] for row in summary]
        marker = markers[i % len(markers)] if many else "o"
        ax.errorbar(xs, mean, yerr=std, marker=marker, capsize=3, label=METHOD_LABELS.get(m, m))
    if len(xs) > 1:
        ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(xs, [f"{x:g}%" for x in xs])
    ax.set_xlabel("labeled fraction of the training images")
    ax.set_ylabel("test mIoU (%)")
    ax.set_title("Label efficiency (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, borderaxespad=0.0)
    else:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)

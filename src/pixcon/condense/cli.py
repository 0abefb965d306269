"""``pixcon condense``: dataset condensation from the command line (argparse only).

pixcon condense --task classification --dataset fashion|fashion-cluttered --ipc 10 --method dc|dcc [--dsa]
pixcon condense --task segmentation --data-root DIR [--labeled-split FILE] --num-images 10 --method dcc

`add_arguments` fills the subcommand's parser; `run` executes the parsed arguments and returns the
exit code. Unset loop lengths take the papers' values (classification: K = 1000 and the official
code's (T, varsigma_theta) for the ipc; DCC's warm-up 250 of 1000 iterations and 10 steps).
"""

from __future__ import annotations

import argparse
import logging
import time
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only torch-free modules at import time: `pixcon --help` builds this parser.
from pixcon.condense.options import (
    DATASETS,
    DEFAULT_STRATEGY,
    INITS,
    NORMS,
    PAPER_BATCH_REAL,
    PAPER_ITERATIONS,
    PAPER_WARMUP,
    RULES,
    TASKS,
    paper_loops,
    parse_strategy,
)

if TYPE_CHECKING:
    from pixcon.condense.common import MatchingConfig

log = logging.getLogger(__name__)

# Segmentation (pixcon's extension): the image learning rate is 1e-4, not the papers' 0.1. The
# segmenter's matching loss sums about 9,000 output rows (the ConvNet's: about 400) and its images
# are in [0, 1] behind ImageNet's std: measured on the embedded dataset, its mean pixel gradient
# (about 9) is 10^2-10^3 times the ConvNet's on Fashion-MNIST, and 1e-4 gives updates of about
# 1e-3 of the [0, 1] range, within the range of the classification runs (1e-4 to 4e-3) at lr 0.1.
SEGMENTATION_LOOPS = (10, 5)  # (matching_steps, net_steps)
SEGMENTATION_ITERATIONS = 200
SEGMENTATION_BATCH_REAL = 8
SEGMENTATION_LR_IMAGES = 1e-4
CLASSIFICATION_LR_IMAGES = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``pixcon condense`` arguments to `parser`."""
    from pixcon.config import DataConfig  # torch-free; its Literal lists the dataset formats

    formats = typing.get_args(typing.get_type_hints(DataConfig)["format"])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument(
        "--out", required=True, help="output folder (checkpoint, synthetic set, grid, summary)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue OUT/checkpoint.pt (iterations may grow)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")

    m = parser.add_argument_group("matching (both tasks)")
    m.add_argument(
        "--method", choices=RULES, default="dcc", help="dc: class-wise matching; dcc: contrastive signals"
    )
    m.add_argument(
        "--iterations", type=int, help=f"K, fresh networks (classification default {PAPER_ITERATIONS})"
    )
    m.add_argument(
        "--matching-steps", type=int, help="T, synthetic-set updates per network (default: the papers')"
    )
    m.add_argument(
        "--net-steps",
        type=int,
        help="network training between updates: epochs (classification) or steps (segmentation)",
    )
    m.add_argument(
        "--warmup-iterations",
        type=int,
        help="DCC outer warm-up K_w (default: a quarter of K, the papers' 250 of 1000)",
    )
    m.add_argument("--warmup-steps", type=int, default=PAPER_WARMUP[1], help="DCC inner warm-up T_w")
    m.add_argument(
        "--lr-images",
        type=float,
        help="SGD learning rate of the images (classification 0.1; segmentation 1e-4)",
    )
    m.add_argument("--momentum-images", type=float, default=0.5)
    m.add_argument("--lr-net", type=float, default=0.01)
    m.add_argument("--init", choices=INITS, default="real", help="start from real samples or noise")
    m.add_argument("--dsa", action="store_true", help="differentiable Siamese augmentation")
    m.add_argument(
        "--dsa-strategy",
        default="_".join(DEFAULT_STRATEGY),
        help="DSA transformations, e.g. color_crop_cutout_flip_scale_rotate",
    )
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
    m.add_argument(
        "--batch-real", type=int, help="real samples per class (classification, default 256) or per step"
    )
    m.add_argument("--batch-train", type=int, help="batch of the network trained on the synthetic set")

    c = parser.add_argument_group("classification")
    c.add_argument("--dataset", choices=DATASETS, default="fashion")
    c.add_argument("--ipc", type=int, default=10, help="synthetic images per class")
    c.add_argument("--width", type=int, default=128, help="ConvNet width (the papers: 128)")
    c.add_argument("--depth", type=int, default=3, help="ConvNet depth (the papers: 3)")
    c.add_argument("--norm", choices=NORMS, default="instancenorm")
    c.add_argument("--fashion-path", help="folder of the Fashion-MNIST idx files (default: system locations)")
    c.add_argument("--cache-dir", help="keep the rendered cluttered images here")
    c.add_argument(
        "--eval-runs", type=int, default=0, help="train this many fresh ConvNets on the result and test them"
    )
    c.add_argument("--eval-epochs", type=int, help="epochs of those trainings (default 300; 1000 with --dsa)")

    s = parser.add_argument_group("segmentation")
    s.add_argument("--data-root", help="dataset folder")
    s.add_argument("--format", choices=formats, default="folder", help="data.format of --data-root")
    s.add_argument("--labeled-split", help="file of labeled ids (default: the whole train split)")
    s.add_argument("--image-size", type=int, help="resize the labeled images to this side (default: native)")
    s.add_argument("--num-images", type=int, default=10, help="K, condensed image/mask pairs")
    s.add_argument("--arch", default="deeplabv3plus")
    s.add_argument("--encoder", default="resnet18")
    s.add_argument("--no-eval-splits", action="store_true", help="do not copy the source's val/test splits")


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def matching_config(
    args: argparse.Namespace, loops: tuple[int, int], iterations: int, lr_images: float
) -> MatchingConfig:
    """The MatchingConfig of the parsed arguments; unset loop lengths from `loops` and `iterations`.

    The default outer warm-up is a quarter of the iterations (the papers' 250 of 1000); a run
    extended with ``--resume`` keeps the warm-up its checkpoint was made with.
    """
    from pixcon.condense.common import CHECKPOINT_NAME, MatchingConfig, load_state

    k = args.iterations if args.iterations is not None else iterations
    warmup = args.warmup_iterations
    ckpt = Path(args.out) / CHECKPOINT_NAME
    if warmup is None and args.resume and ckpt.is_file():
        warmup = int(load_state(ckpt, args.task)["config"]["matching"]["warmup_iterations"])
    return MatchingConfig(
        method=args.method,
        iterations=k,
        matching_steps=args.matching_steps if args.matching_steps is not None else loops[0],
        net_steps=args.net_steps if args.net_steps is not None else loops[1],
        warmup_iterations=warmup if warmup is not None else round(k / 4),
        warmup_steps=args.warmup_steps,
        lr_images=args.lr_images if args.lr_images is not None else lr_images,
        momentum_images=args.momentum_images,
        lr_net=args.lr_net,
        init=args.init,
        dsa=args.dsa,
        dsa_strategy=parse_strategy(args.dsa_strategy),
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``pixcon condense`` for parsed arguments; returns the exit code (0)."""
    _positive(
        args, "iterations", "matching_steps", "batch_real", "batch_train", "ipc", "num_images", "image_size"
    )
    summary = _run_classification(args) if args.task == "classification" else _run_segmentation(args)
    from pixcon.condense.common import write_json

    path = write_json(summary, Path(args.out) / "summary.json")
    lines = [
        f"condense {args.task} ({args.method}): {summary['iterations']} iterations in {summary['seconds']:.0f} s"
    ]
    if "evaluation" in summary:
        ev = summary["evaluation"]
        lines.append(
            f"test accuracy over {len(ev['test_acc'])} fresh ConvNets: {100 * ev['mean']:.2f} +- {100 * ev['std']:.2f} %"
        )
    lines += [f"{name}: {p}" for name, p in summary["files"].items()]
    lines.append(f"summary: {path}")
    print("\n".join(lines))
    return 0


def _run_classification(args: argparse.Namespace) -> dict[str, Any]:
    import statistics

    from pixcon.condense.classification import (
        ClassificationConfig,
        EvalConfig,
        NetConfig,
        condense_classification,
        load_classification_data,
        train_and_test,
    )

    if args.eval_runs < 0:
        raise ValueError(f"--eval-runs must be >= 0, got {args.eval_runs}")
    loops = (
        paper_loops(args.method, args.ipc)
        if args.matching_steps is None or args.net_steps is None
        else (args.matching_steps, args.net_steps)
    )
    cfg = ClassificationConfig(
        dataset=args.dataset,
        ipc=args.ipc,
        batch_real=args.batch_real or PAPER_BATCH_REAL,
        batch_train=args.batch_train or 256,
        net=NetConfig(width=args.width, depth=args.depth, norm=args.norm),
        matching=matching_config(args, loops, PAPER_ITERATIONS, CLASSIFICATION_LR_IMAGES),
    )
    progress = not getattr(args, "quiet", False)
    data = load_classification_data(args.dataset, args.fashion_path, seed=0, cache_dir=args.cache_dir)
    tic = time.perf_counter()
    result = condense_classification(
        data, cfg, args.out, resume=args.resume, progress=progress, device=args.device
    )
    summary: dict[str, Any] = {
        "task": "classification",
        "config": cfg,
        "iterations": result.iterations_done,
        "seconds": time.perf_counter() - tic,
        "matching_loss": result.history.loss,
        "files": {k: str(v) for k, v in result.paths.items()},
    }
    if args.eval_runs:
        eval_cfg = EvalConfig(
            epochs=args.eval_epochs or (1000 if args.dsa else 300),
            dsa=args.dsa,
            dsa_strategy=cfg.matching.dsa_strategy,
        )
        runs = [
            train_and_test(
                result.images, result.labels, data, net=cfg.net, eval_cfg=eval_cfg, seed=s, device=args.device
            )
            for s in range(args.eval_runs)
        ]
        accs = [r["test_acc"] for r in runs]
        summary["evaluation"] = {
            "eval": eval_cfg,
            "test_acc": accs,
            "mean": statistics.fmean(accs),
            "std": statistics.pstdev(accs),
            "seconds": sum(r["seconds"] for r in runs),
        }
    return summary


def _run_segmentation(args: argparse.Namespace) -> dict[str, Any]:
    from pixcon.condense.segmentation import SegmentationConfig, condense_segmentation, load_labeled_set
    from pixcon.config import DataConfig

    if not args.data_root:
        raise ValueError("--task segmentation needs --data-root (the labeled dataset to condense)")
    data = DataConfig(format=args.format, root=args.data_root)
    labeled = load_labeled_set(data, args.labeled_split, args.image_size)
    cfg = SegmentationConfig(
        num_images=args.num_images,
        batch_real=args.batch_real or SEGMENTATION_BATCH_REAL,
        batch_train=args.batch_train or 8,
        arch=args.arch,
        encoder=args.encoder,
        copy_eval_splits=not args.no_eval_splits,
        matching=matching_config(args, SEGMENTATION_LOOPS, SEGMENTATION_ITERATIONS, SEGMENTATION_LR_IMAGES),
    )
    source = {
        "format": args.format,
        "root": str(Path(args.data_root).resolve()),
        "labeled_split": str(Path(args.labeled_split).resolve()) if args.labeled_split else None,
        "image_size": args.image_size,
    }
    tic = time.perf_counter()
    result = condense_segmentation(
        labeled,
        cfg,
        args.out,
        source=source,
        data=data,
        resume=args.resume,
        progress=not getattr(args, "quiet", False),
        device=args.device,
    )
    return {
        "task": "segmentation",
        "config": cfg,
        "source": source,
        "iterations": result.iterations_done,
        "seconds": time.perf_counter() - tic,
        "matching_loss": result.history.loss,
        "source_ids": result.source_ids,
        "files": {k: str(v) for k, v in result.paths.items()},
        "next": f"pixcon train --data-root {args.out}",
    }

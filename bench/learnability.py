"""Benchmark: can CE-only with every label learn an embedded dataset within a demo-sized budget?

Issue 20, item 1: the demo task must be learnable in ``make demo``'s budget. This script
generates one version of the embedded dataset (:func:`pixcon.data.synthetic.generate_dataset`,
a ``--style`` and optionally a variant of it), trains CE-only on 100 % of its training labels
with pixcon's own training (:func:`pixcon.train.run_training`, the ``ce`` recipe's defaults of
:func:`pixcon.recipes.recipe_defaults` plus the data, model and budget given here, no colour
jitter as in the demo), and scores the last checkpoint on the validation and the test split.

It prints a table of every row of the results file (validation and test mIoU, per-class IoU,
seconds per step, wall time) and appends this run's row to it, with the machine (CPU model,
torch threads), so that a series of invocations builds the table of every setting tried.

Run (from the repository root)::

    .venv/bin/python bench/learnability.py --style coarse --steps 200 --threads 2
    .venv/bin/python bench/learnability.py --style default --steps 80           # the old demo task
    .venv/bin/python bench/learnability.py --style coarse --encoder mobilenet_v2 --arch fpn \\
        --image-size 48 --steps 300 --item-scale 0.3 0.6 --items 1 3 --label "fpn-mnv2-48px"
    .venv/bin/python bench/learnability.py --table-only       # print the table of the results file

``--item-scale``, ``--items`` and ``--regions`` make a variant of the style (registered under a
derived name for this process only; the library's styles are unchanged). Selecting a dataset or a
budget is done on the validation column only; the test column is reported beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "learnability.json"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def style_name(args: argparse.Namespace) -> str:
    """The style to generate: ``args.style``, or a variant of it registered for this process."""
    from pixcon.data import synthetic

    base = synthetic.get_style(args.style)
    changes: dict[str, Any] = {}
    if args.item_scale is not None:
        changes["item_scale"] = tuple(args.item_scale)
    if args.items is not None:
        changes["items_per_image"] = tuple(args.items)
    if args.regions is not None:
        changes["regions_per_image"] = tuple(args.regions)
    if args.hue_spread is not None:
        changes["hue_spread"] = None if args.hue_spread <= 0 else args.hue_spread
    if args.groups is not None:  # "top=0,2,4,6;trouser=1": clothing classes and their Fashion-MNIST labels
        groups = [item.split("=") for item in args.groups.split(";")]
        changes["things"] = tuple(name for name, _ in groups)
        changes["thing_labels"] = tuple(tuple(int(k) for k in labels.split(",")) for _, labels in groups)
        spare = [(31, 119, 180), (255, 127, 14), (23, 190, 207), (0, 0, 160), (214, 39, 40), (44, 200, 44)]
        changes["palette"] = (*base.palette[: len(base.stuff)], *spare[: len(groups)])
    if not changes:
        return str(args.style)
    shown = {k: v for k, v in changes.items() if k not in ("thing_labels", "palette")}
    tag = ",".join(
        f"{k}={'-'.join(str(v) for v in val) if isinstance(val, tuple) else val}" for k, val in shown.items()
    )
    name = f"{args.style}[{tag}]"
    synthetic.STYLES[name] = dataclasses.replace(base, **changes)
    return name


def describe_style(look: Any) -> str:
    """A one-line description of a `SceneStyle`: clothing classes, item size and count, hue prior."""
    from pixcon.data.fashion import FASHION_CLASSES

    if len(look.things) == len(FASHION_CLASSES):
        things = f"{len(look.things)} clothing classes"
    else:
        things = "/".join(
            name
            + (
                ""
                if len(labels) > 1 or FASHION_CLASSES[labels[0]] == name
                else f"({FASHION_CLASSES[labels[0]]})"
            )
            for name, labels in zip(look.things, look.thing_labels, strict=True)
        )
        left_out = sorted(set(range(len(FASHION_CLASSES))) - {k for g in look.thing_labels for k in g})
        if left_out:
            things += " (no " + ", ".join(FASHION_CLASSES[k] for k in left_out) + ")"
    lo, hi = look.item_scale
    hue = "any hue" if look.hue_spread is None else f"hue k/{len(look.things)} +- {look.hue_spread:g}"
    return (
        f"{things}; {look.items_per_image[0]}-{look.items_per_image[1]} items at "
        f"{round(100 * lo)}-{round(100 * hi)} %; {hue}"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generates the dataset, trains CE-only on every label, scores val and test; returns the row."""
    import torch

    from pixcon.config import load_config
    from pixcon.data.synthetic import generate_dataset, get_style
    from pixcon.inference.evaluate import evaluate_checkpoint
    from pixcon.recipes import recipe_defaults
    from pixcon.train import run_training

    torch.set_num_threads(args.threads)
    style = style_name(args)
    work = Path(args.work_dir)
    # the folder name carries a digest of the style's definition: a cached dataset of a style that
    # has since been edited under the same name is never reused
    digest = hashlib.sha256(repr(get_style(style)).encode()).hexdigest()[:8]
    data_dir = work / "data" / f"{style}-{digest}-s{args.data_seed}-{args.image_size}px-{args.num_train}"
    tic = time.perf_counter()
    generate_dataset(
        data_dir,
        seed=args.data_seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        image_size=args.image_size,
        style=style,
    )
    generate_s = time.perf_counter() - tic

    label = args.label or (
        f"{style} {args.image_size}px n{args.num_train} {args.arch}/{args.encoder} "
        f"{args.steps}x{args.batch_size} lr{args.lr:g}"
    )
    run_name = f"{label} d{args.data_seed} t{args.train_seed} {digest}".replace("/", "_").replace(" ", "_")
    out_dir = work / "runs" / run_name
    defaults = recipe_defaults("ce")
    defaults["train"] = {"objective": "ce"}
    overrides = [
        f"data.root={data_dir}",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        "data.color_jitter=0.0",  # as in the demo: the dataset's colours carry class information
        f"model.arch={args.arch}",
        f"model.encoder={args.encoder}",
        f"optim.lr={args.lr}",
        f"train.steps={args.steps}",
        f"train.eval_every={args.steps}",  # one validation, at the end: the timing is training's
        f"train.seed={args.train_seed}",
        f"train.out_dir={out_dir}",
        "train.overwrite=true",
        "train.progress=false",
        "train.log_every=1000000",
        "train.accelerator=cpu",
        *args.set,
    ]
    cfg = load_config(overrides=overrides, defaults=defaults)
    tic = time.perf_counter()
    run_training(cfg)
    train_s = time.perf_counter() - tic
    scores: dict[str, dict[str, Any]] = {}
    eval_s: dict[str, float] = {}
    for split in ("val", "test"):
        tic = time.perf_counter()
        scores[split] = evaluate_checkpoint(out_dir / "last.pt", split=split)
        eval_s[split] = time.perf_counter() - tic
    # run_training's wall time includes one validation pass at the end: take it out of the step time
    step_s = max(train_s - eval_s["val"], 0.0) / args.steps
    look = get_style(style)
    return {
        "label": label,
        "style": style,
        "dataset": describe_style(look),
        "data_seed": args.data_seed,
        "num_train": args.num_train,
        "num_val": args.num_val,
        "num_test": args.num_test,
        "image_size": args.image_size,
        "arch": args.arch,
        "encoder": args.encoder,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_seed": args.train_seed,
        "overrides": list(args.set),
        "note": args.note,
        "val_miou": scores["val"]["miou"],
        "test_miou": scores["test"]["miou"],
        "val_iou_per_class": scores["val"]["iou_per_class"],
        "test_iou_per_class": scores["test"]["iou_per_class"],
        "generate_s": round(generate_s, 2),
        "train_s": round(train_s, 2),
        "step_s": round(step_s, 4),
        "eval_val_s": round(eval_s["val"], 2),
        "eval_test_s": round(eval_s["test"], 2),
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one line per row, per-class validation IoU in the last column."""
    lines = [
        "| # | dataset | model | steps x batch | lr | data/train seed | threads | val mIoU | test mIoU "
        "| lowest val IoU | s/step | train s | machine load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        low = min(r["val_iou_per_class"].items(), key=lambda kv: -1.0 if kv[1] is None else kv[1])
        lines.append(
            f"| {i} | {r['style']}: {r.get('dataset', '')} | {r['arch']}/{r['encoder']} | "
            f"{r['steps']} x {r['batch_size']} | {r['lr']:g} | {r['data_seed']}/{r['train_seed']} | "
            f"{r['machine']['torch_threads']} | {_pct(r['val_miou'])} | {_pct(r['test_miou'])} | "
            f"{low[0]} {_pct(low[1])} | {r['step_s']:.3f} | {r['train_s']:.0f} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--style", default="coarse", help="scene style of pixcon.data.synthetic.STYLES")
    p.add_argument("--item-scale", type=float, nargs=2, metavar=("LO", "HI"), help="variant: item size range")
    p.add_argument("--items", type=int, nargs=2, metavar=("LO", "HI"), help="variant: items per image")
    p.add_argument("--regions", type=int, nargs=2, metavar=("LO", "HI"), help="variant: background regions")
    p.add_argument(
        "--groups", help="variant: clothing classes, e.g. 'top=0,2,4,6;trouser=1;footwear=5,7,9;bag=8'"
    )
    p.add_argument("--hue-spread", type=float, help="variant: per-class hue prior half-width (0: none)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--arch", default="deeplabv3plus", help="model.arch (an smp architecture)")
    p.add_argument("--encoder", default="resnet18", help="model.encoder (random initialisation)")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo's machine has 2 cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--label", help="name of the row (default: from the settings)")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile (the table shows it)")
    p.add_argument("--work-dir", default="runs/learnability", help="datasets and run folders")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON list of rows (appended to)")
    p.add_argument("--table-only", action="store_true", help="print the results file's table and exit")
    args = p.parse_args(argv)

    rows: list[dict[str, Any]] = json.loads(args.results.read_text()) if args.results.is_file() else []
    if not args.table_only:
        row = run(args)
        rows.append(row)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"{row['label']}: val mIoU {_pct(row['val_miou'])}, test mIoU {_pct(row['test_miou'])}")
        for split in ("val", "test"):
            per = ", ".join(f"{k} {_pct(v)}" for k, v in row[f"{split}_iou_per_class"].items())
            print(f"  {split} IoU: {per}")
        print(
            f"  {row['step_s']:.3f} s/step, train {row['train_s']:.0f} s, val eval {row['eval_val_s']:.1f} s, "
            f"test eval {row['eval_test_s']:.1f} s, generation {row['generate_s']:.1f} s, "
            f"{row['machine']['torch_threads']} thread(s) on {row['machine']['cpu']}"
        )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

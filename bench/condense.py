"""Benchmark: dataset condensation (DC, DCC) against random selection and the full training set.

Classification (``classification``): test accuracy of ConvNets trained from scratch on

* ``random``: ``ipc`` real training images per class, chosen at random;
* ``dc``: ``ipc`` images per class condensed by class-wise gradient matching (Zhao et al. 2021);
* ``dcc``: condensed with contrastive signals and the bi-level warm-up (Lee et al. 2022);
* ``full``: the whole training set (60,000 images);

on ``fashion`` (Fashion-MNIST as published) and ``fashion-cluttered`` (the same items pasted on
the embedded dataset's textures; :mod:`pixcon.condense.classification`), at 1 and 10 images per
class. Every number is the mean +- std (population) of the test accuracy of ``--evals`` freshly
initialised ConvNets, trained with the papers' protocol (SGD, lr 0.01, momentum 0.9, weight decay
5e-4, batch 256, 300 epochs, lr / 10 after half; ``full``: ``--full-epochs`` epochs).

Segmentation (``segmentation``, pixcon's own extension): on the embedded dataset (64 px, 200
training, 50 val, 100 test images), test mIoU of ``pixcon train`` (the demo's CE settings) on
``K`` images condensed from the 200 labeled training images vs ``K`` labeled images chosen at
random, and vs the K images the condensation started from.

Profiles: ``--profile cpu`` (the default) is a reduced setting for a 2-core machine, run with one
thread; ``--profile paper`` the papers' settings (for a GPU: ``bench/condense_gpu.sh``). Each cell
is stored in ``OUT/results.json`` as soon as it is done and skipped when the script is run again
(``--redo`` recomputes it); condensations resume from their checkpoints. ``table`` prints the
table and writes ``OUT/table.md``.

Run (from the repository root, one thread)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/condense.py classification --datasets fashion --ipc 1
    OMP_NUM_THREADS=1 .venv/bin/python bench/condense.py segmentation
    .venv/bin/python bench/condense.py table
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.condense")

DEFAULT_OUT = Path("bench/results/condense")

# DC (Zhao, Mopuri & Bilen, ICLR 2021) Table 1, Fashion-MNIST, ConvNet, mean +- std of test accuracy.
# DC's own figures are confirmed by the official repository's README (70.5 / 82.3 / 83.6) and by
# Nguyen et al. 2021 (KIP, NeurIPS) who reprint them with their std; the random-selection and
# whole-dataset figures are as read by the issue and could not be checked against the paper's text
# from this machine (no download): they are marked unverified.
PUBLISHED: dict[str, Any] = {
    "dc": {"1": [70.5, 0.6], "10": [82.3, 0.4], "verified": True},
    "random": {"1": [51.4, 3.8], "10": [73.8, 0.7], "verified": False},
    "full": {"any": [93.5, 0.1], "verified": False},
    "dsa": {"1": [70.6, 0.6], "10": [84.6, 0.3], "verified": True},
    "source": "DC Table 1 (ICLR 2021); DSA Table 1 (ICML 2021)",
}


@dataclass(frozen=True)
class Profile:
    """Benchmark settings; ``cpu`` is reduced, ``paper`` the published values."""

    name: str
    width: int  # ConvNet width (papers: 128)
    batch_real: int  # real images per class per matching step (papers: 256)
    iterations: dict[int, int]  # K per ipc (papers: 1000)
    loops: dict[int, tuple[int, int]] | None  # (T, net epochs) per ipc, both methods; None: each paper's
    evals: int  # fresh networks per condensed set
    condensations: int  # condensed sets (seeds) per cell (papers: 5)
    eval_epochs: int  # papers: 300 without augmentation
    full_epochs: int  # epochs of the whole-training-set baseline
    full_runs: int
    # segmentation
    seg_iterations: int
    seg_matching_steps: int
    seg_net_steps: int
    seg_train_steps: int
    seg_seeds: tuple[int, ...]


PROFILES = {
    "cpu": Profile(
        name="cpu",
        width=32,
        batch_real=64,
        iterations={1: 40, 10: 15},
        loops={1: (10, 5), 10: (10, 10)},
        evals=4,
        condensations=1,
        eval_epochs=300,
        full_epochs=2,
        full_runs=2,
        seg_iterations=30,
        seg_matching_steps=5,
        seg_net_steps=2,
        seg_train_steps=80,
        seg_seeds=(0, 1, 2),
    ),
    "paper": Profile(
        name="paper",
        width=128,
        batch_real=256,
        iterations={1: 1000, 10: 1000},
        loops=None,
        evals=20,
        condensations=5,
        eval_epochs=300,
        full_epochs=30,
        full_runs=5,
        seg_iterations=200,
        seg_matching_steps=10,
        seg_net_steps=5,
        seg_train_steps=500,
        seg_seeds=(0, 1, 2, 3, 4),
    ),
}


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


class Results:
    """``OUT/results.json``: one entry per cell, written atomically after each cell."""

    def __init__(self, out: Path) -> None:
        self.path = out / "results.json"
        self.data: dict[str, Any] = (
            json.loads(self.path.read_text()) if self.path.is_file() else {"cells": {}}
        )

    def has(self, key: str) -> bool:
        return key in self.data["cells"]

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.data["cells"][key] = value
        self.data["published"] = PUBLISHED
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=2)
        os.replace(tmp, self.path)


def _summary(accs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(accs), "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0}


def run_classification(args: argparse.Namespace) -> None:
    from pixcon.condense.classification import (
        EvalConfig,
        NetConfig,
        load_classification_data,
        train_and_test,
    )

    prof = PROFILES[args.profile]
    out = Path(args.out)
    results = Results(out)
    net = NetConfig(width=prof.width)
    eval_cfg = EvalConfig(epochs=prof.eval_epochs)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else list(range(prof.condensations))
    for dataset in args.datasets.split(","):
        data = load_classification_data(dataset, args.fashion_path, cache_dir=out / "cache")
        for method in args.methods.split(","):
            if method == "full":
                key = f"classification/{dataset}/full/{prof.name}"
                if results.has(key) and not args.redo:
                    continue
                full_cfg = replace(eval_cfg, epochs=prof.full_epochs)
                runs = []
                for s in range(prof.full_runs):
                    log.info("%s: full training set, run %d/%d", dataset, s + 1, prof.full_runs)
                    runs.append(
                        train_and_test(
                            data.train_images,
                            data.train_labels,
                            data,
                            net=net,
                            eval_cfg=full_cfg,
                            seed=s,
                            device=args.device,
                            progress=args.progress,
                        )
                    )
                full_accs = [r["test_acc"] for r in runs]
                results.put(
                    key,
                    {
                        "dataset": dataset,
                        "method": "full",
                        "profile": prof.name,
                        "test_acc": full_accs,
                        **_summary(full_accs),
                        "eval_seconds": sum(r["seconds"] for r in runs),
                        "eval_cpu_seconds": sum(r["cpu_seconds"] for r in runs),
                        "settings": {
                            "epochs": prof.full_epochs,
                            "width": prof.width,
                            "images": len(data.train_labels),
                        },
                    },
                )
                continue
            for ipc in (int(x) for x in args.ipc.split(",")):
                for rep in seeds:
                    key = f"classification/{dataset}/ipc{ipc}/{method}/{prof.name}/seed{rep}"
                    if results.has(key) and not args.redo:
                        log.info("%s: done, skipped", key)
                        continue
                    results.put(key, _classification_cell(args, prof, data, method, ipc, rep, key))
                    cell = results.data["cells"][key]
                    log.info("%s: %.2f +- %.2f %%", key, 100 * cell["mean"], 100 * cell["std"])


def _classification_cell(
    args: argparse.Namespace, prof: Profile, data: Any, method: str, ipc: int, rep: int, key: str
) -> dict[str, Any]:
    """One cell: condense with seed `rep` (or draw random images), then train `prof.evals` networks."""
    from pixcon.condense.classification import (
        ClassificationConfig,
        EvalConfig,
        NetConfig,
        condense_classification,
        random_subset,
        train_and_test,
    )
    from pixcon.condense.common import MatchingConfig
    from pixcon.condense.options import PAPER_WARMUP, paper_loops

    net = NetConfig(width=prof.width)
    eval_cfg = EvalConfig(epochs=prof.eval_epochs)
    settings: dict[str, Any] = {"width": prof.width, "eval_epochs": prof.eval_epochs, "seed": rep}
    condense_seconds = condense_cpu = 0.0
    if method == "random":
        images, labels = random_subset(data, ipc, seed=rep)
    else:
        k = prof.iterations[ipc]
        t, epochs = prof.loops[ipc] if prof.loops else paper_loops(method, ipc)
        warmup = (round(k / 4), t) if prof.name == "cpu" else PAPER_WARMUP
        cfg = ClassificationConfig(
            dataset=data.name,
            ipc=ipc,
            batch_real=prof.batch_real,
            net=net,
            matching=MatchingConfig(
                method=method,
                iterations=k,
                matching_steps=t,
                net_steps=epochs,
                warmup_iterations=warmup[0],
                warmup_steps=warmup[1],
                seed=rep,
                checkpoint_every=5 if prof.name == "cpu" else 50,
            ),
        )
        settings.update(
            iterations=k,
            matching_steps=t,
            net_epochs=epochs,
            batch_real=prof.batch_real,
            warmup=list(warmup),
            init="real",
        )
        run_dir = Path(args.out) / "runs" / f"{data.name}-ipc{ipc}-{method}-{prof.name}-seed{rep}"
        log.info("%s: condensing into %s", key, run_dir)
        result = condense_classification(
            data, cfg, run_dir, resume=True, progress=args.progress, device=args.device
        )
        images, labels = result.images, result.labels
        condense_seconds = sum(result.history.seconds)
        condense_cpu = sum(result.history.cpu_seconds)
    accs: list[float] = []
    eval_seconds = eval_cpu = 0.0
    for e in range(prof.evals):
        r = train_and_test(
            images,
            labels,
            data,
            net=net,
            eval_cfg=eval_cfg,
            seed=1000 * rep + e,
            device=args.device,
            progress=args.progress,
        )
        accs.append(r["test_acc"])
        eval_seconds += r["seconds"]
        eval_cpu += r["cpu_seconds"]
        log.info("%s: eval %d: %.2f %%", key, len(accs), 100 * r["test_acc"])
    return {
        "dataset": data.name,
        "ipc": ipc,
        "method": method,
        "profile": prof.name,
        "seed": rep,
        "test_acc": accs,
        **_summary(accs),
        "condense_seconds": condense_seconds,
        "condense_cpu_seconds": condense_cpu,
        "eval_seconds": eval_seconds,
        "eval_cpu_seconds": eval_cpu,
        "settings": settings,
        "machine": machine(),
    }


def _pixcon(argv: list[str]) -> None:
    from pixcon.cli import main

    code = main(argv)
    if code != 0:
        raise RuntimeError(f"pixcon {' '.join(argv)} exited with {code}")


def _train_and_score(
    data_root: Path, eval_root: Path, run_dir: Path, seed: int, steps: int, labeled: Path | None
) -> dict[str, Any]:
    """``pixcon train`` with the demo's CE settings, then ``pixcon evaluate --split test`` on `eval_root`."""
    tic, cpu_tic = time.perf_counter(), time.process_time()
    if not (run_dir / "last.pt").is_file():
        argv = [
            "train",
            "--data-root",
            str(data_root),
            "--out",
            str(run_dir),
            "--seed",
            str(seed),
            "--steps",
            str(steps),
        ]
        argv += ["--quiet"] + (["--labeled-split", str(labeled)] if labeled else [])
        for key, value in (
            ("data.image_size", 64),
            ("data.batch_size", 8),
            ("data.color_jitter", 0.0),
            ("optim.name", "adamw"),
            ("optim.lr", 0.001),
            ("optim.schedule", "cosine"),
            ("optim.weight_decay", 0.0001),
            ("train.eval_every", steps),
        ):
            argv += ["--set", f"{key}={value}"]
        _pixcon(argv)
    scores = run_dir / "test_scores.json"
    _pixcon(
        [
            "evaluate",
            str(run_dir / "last.pt"),
            "--split",
            "test",
            "--data-root",
            str(eval_root),
            "--out",
            str(scores),
            "--quiet",
            "--json",
        ]
    )
    miou = json.loads(scores.read_text())["miou"]
    return {"miou": miou, "seconds": time.perf_counter() - tic, "cpu_seconds": time.process_time() - cpu_tic}


def run_segmentation(args: argparse.Namespace) -> None:
    import numpy as np

    from pixcon.condense.common import MatchingConfig
    from pixcon.condense.segmentation import SegmentationConfig, condense_segmentation, load_labeled_set
    from pixcon.config import DataConfig
    from pixcon.data.folder import read_ids, write_ids
    from pixcon.data.synthetic import generate_dataset

    prof = PROFILES[args.profile]
    out = Path(args.out) / "segmentation"
    results = Results(Path(args.out))
    root = generate_dataset(out / "data", seed=0, num_train=200, num_val=50, num_test=100, image_size=64)
    data = DataConfig(root=str(root))
    train_ids = read_ids(root / "splits" / "train.txt")
    k_images = args.num_images
    for method in args.seg_methods.split(","):
        key = f"segmentation/K{k_images}/{method}/{prof.name}"
        if results.has(key) and not args.redo:
            log.info("%s: done, skipped", key)
            continue
        scores: list[float] = []
        seconds = cpu_seconds = 0.0
        settings: dict[str, Any] = {
            "train_steps": prof.seg_train_steps,
            "labeled": len(train_ids),
            "K": k_images,
        }
        if method in ("dc", "dcc"):
            labeled = load_labeled_set(data)
            cfg = SegmentationConfig(
                num_images=k_images,
                batch_real=8,
                batch_train=8,
                matching=MatchingConfig(
                    method=method,
                    iterations=prof.seg_iterations,
                    matching_steps=prof.seg_matching_steps,
                    net_steps=prof.seg_net_steps,
                    # warm-up on the first update of each of the first K/4 iterations only: a
                    # class-wise step costs ~7 dcc steps here (14 classes), see docs/condense.md
                    warmup_iterations=round(prof.seg_iterations / 4),
                    warmup_steps=1,
                    lr_images=1e-4,  # the CLI's segmentation default (pixel gradients ~10^3 x the ConvNet's)
                    checkpoint_every=5,
                ),
            )
            settings.update(asdict(cfg))
            cond_dir = out / f"condensed-{method}-{prof.name}"
            result = condense_segmentation(
                labeled,
                cfg,
                cond_dir,
                source={"root": str(root)},
                data=data,
                resume=True,
                progress=args.progress,
                device=args.device,
            )
            settings["condense_seconds"] = sum(result.history.seconds)
            settings["condense_cpu_seconds"] = sum(result.history.cpu_seconds)
            for s in prof.seg_seeds:
                r = _train_and_score(
                    cond_dir,
                    root,
                    out / "runs" / f"{method}-{prof.name}-seed{s}",
                    s,
                    prof.seg_train_steps,
                    None,
                )
                scores.append(r["miou"])
                seconds += r["seconds"]
                cpu_seconds += r["cpu_seconds"]
        else:  # random, or init: the K images the condensation starts from (same choice, seed 0)
            for s in prof.seg_seeds:
                if method == "random":
                    rng = np.random.default_rng([s, 99])
                    ids = [train_ids[i] for i in rng.choice(len(train_ids), k_images, replace=False)]
                else:
                    sources = json.loads(
                        (out / f"condensed-dcc-{prof.name}" / "condensed_sources.json").read_text()
                    )
                    ids = list(sources.values())
                split = write_ids(out / "splits" / f"{method}-seed{s}.txt", ids)
                r = _train_and_score(
                    root, root, out / "runs" / f"{method}-{prof.name}-seed{s}", s, prof.seg_train_steps, split
                )
                scores.append(r["miou"])
                seconds += r["seconds"]
                cpu_seconds += r["cpu_seconds"]
        results.put(
            key,
            {
                "task": "segmentation",
                "method": method,
                "profile": prof.name,
                "miou": scores,
                **_summary(scores),
                "train_eval_seconds": seconds,
                "train_eval_cpu_seconds": cpu_seconds,
                "settings": settings,
                "machine": machine(),
            },
        )
        log.info(
            "%s: mIoU %.2f +- %.2f",
            key,
            100 * results.data["cells"][key]["mean"],
            100 * results.data["cells"][key]["std"],
        )


def _fmt(cell: dict[str, Any] | None) -> str:
    return "—" if cell is None else f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"


def pooled(results: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    """The cells ``prefix/seed*`` pooled: mean +- std over every network of every seed, and the
    mean of each seed (the spread between condensations)."""
    cells = [v for k, v in sorted(results.items()) if k.startswith(f"{prefix}/seed")]
    if not cells:
        return None
    accs = [a for c in cells for a in c["test_acc"]]
    return {**_summary(accs), "seeds": len(cells), "seed_means": [c["mean"] for c in cells]}


def _fmt_pooled(cell: dict[str, Any] | None) -> str:
    if cell is None or cell["seeds"] == 1:
        return _fmt(cell)
    means = ", ".join(f"{100 * m:.1f}" for m in cell["seed_means"])
    return f"{_fmt(cell)} (seeds: {means})"


def table(args: argparse.Namespace) -> str:
    results = Results(Path(args.out)).data["cells"]
    prof = args.profile
    lines = [
        f"Classification, test accuracy (%), mean ± std over fresh ConvNets, pooled over condensation "
        f"seeds (profile `{prof}`)",
        "",
        "| dataset | img/cls | random | DC | DCC | full training set | DC paper: random / DC / whole |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in ("fashion", "fashion-cluttered"):
        for ipc in (1, 10):
            row = [
                pooled(results, f"classification/{dataset}/ipc{ipc}/{m}/{prof}")
                for m in ("random", "dc", "dcc")
            ]
            full = results.get(f"classification/{dataset}/full/{prof}")
            paper = "—"
            if dataset == "fashion":
                p = PUBLISHED
                paper = (
                    f"{p['random'][str(ipc)][0]} ± {p['random'][str(ipc)][1]}* / {p['dc'][str(ipc)][0]} ± "
                    f"{p['dc'][str(ipc)][1]} / {p['full']['any'][0]} ± {p['full']['any'][1]}*"
                )
            lines.append(
                f"| {dataset} | {ipc} | "
                + " | ".join(_fmt_pooled(c) for c in row)
                + f" | {_fmt(full)} | {paper} |"
            )
    lines += ["", "\\* not verified against the paper's text here (see docs/condense.md).", ""]
    seg = {k: v for k, v in results.items() if k.startswith("segmentation/") and k.endswith(f"/{prof}")}
    if seg:
        lines += ["Segmentation (embedded dataset, 64 px), test mIoU (%), mean ± std over training seeds", ""]
        lines += ["| training images | mIoU |", "|---|---|"]
        for k, v in sorted(seg.items()):
            lines.append(f"| {k.split('/')[1]} {v['method']} | {_fmt(v)} |")
    text = "\n".join(lines)
    (Path(args.out) / f"table-{prof}.md").write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("classification", "segmentation", "table"):
        p = sub.add_parser(name)
        p.add_argument("--out", default=str(DEFAULT_OUT))
        p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
        p.add_argument("--device", default="cpu")
        p.add_argument(
            "--threads", type=int, default=1, help="torch threads (1 on the shared 2-core machine)"
        )
        p.add_argument("--redo", action="store_true", help="recompute cells already in results.json")
        p.add_argument("--progress", action="store_true", help="tqdm bars")
    c = sub.choices["classification"]
    c.add_argument("--datasets", default="fashion,fashion-cluttered")
    c.add_argument("--ipc", default="1,10")
    c.add_argument("--methods", default="random,dc,dcc,full")
    c.add_argument("--fashion-path")
    c.add_argument("--seeds", help="condensation (and random-draw) seeds, e.g. 0,1 (default: the profile's)")
    s = sub.choices["segmentation"]
    s.add_argument("--num-images", type=int, default=10)
    s.add_argument("--seg-methods", default="dcc,init,random")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "table":
        import torch

        torch.set_num_threads(args.threads)
        tic = time.perf_counter()
        (run_classification if args.command == "classification" else run_segmentation)(args)
        log.info("%s finished in %.1f min", args.command, (time.perf_counter() - tic) / 60)
    print(table(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

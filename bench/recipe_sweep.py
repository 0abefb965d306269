"""The recipe sweep of docs/experiments/recipe_sweep.md: named settings, one factor at a time,
each a ``pixcon study`` on sweep seeds, chosen by mean validation mIoU over the seeds.

Every point is a study folder under OUT (its runs, study.json and results.json); the checkpoints
are deleted once a point is scored (``--keep-checkpoints`` keeps them). The table printed (and
OUT/sweep.json) holds each point's mean and per-seed validation mIoU, the selection criterion;
test mIoU is stored beside it and not printed, so that nothing is chosen on it.

    python bench/recipe_sweep.py --data-root data/coarse --out runs/sweep ce_lr3e-3 contrast_lr3e-3

A point ``NAME@MOD@MOD...`` changes a registered point: ``KEY=VALUE`` (a ``--set``), ``steps=P/F``,
``method=RECIPE`` or ``tune=KEY:VALUE``, e.g. ``contrast_lr3e-3@loss.temperature=0.07``. ``--list`` prints the registered points.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

# The demo's settings on 64-px images (every point starts from them); --set of a point wins.
# loss.project_sampled=false: the sweep ran before the recipes turned it on (its last point tests it)
BASE_SETS = [
    "data.image_size=64",
    "data.color_jitter=0",
    "loss.max_pixels=1024",
    "ssl.max_pairs=512",
    "loss.project_sampled=false",
]
BASE_STEPS = (40, 40)  # pretrain, finetune steps; CE-only trains both

# name -> (methods, --set overrides, (pretrain, finetune) steps, extra study arguments)
POINTS: dict[str, tuple[str, list[str], tuple[int, int], list[str]]] = {}


def _point(
    name: str,
    method: str,
    sets: list[str],
    steps: tuple[int, int] = BASE_STEPS,
    extra: list[str] | None = None,
) -> None:
    POINTS[name] = (method, sets, steps, extra or [])


for _lr in ("1e-3", "3e-3", "1e-2", "3e-2"):
    _point(f"ce_lr{_lr}", "ce", [f"optim.lr={_lr}"])
    _point(f"contrast_lr{_lr}", "contrast", [f"optim.lr={_lr}"])


def _parse(name: str) -> tuple[str, list[str], tuple[int, int], list[str]]:
    """A registered point and its ``@`` modifiers: ``KEY=VALUE`` (a --set), ``steps=P/F``,
    ``method=RECIPE``, ``tune=KEY:VALUE`` (a one-value --tune, e.g. ``tune=finetune_lr_scale:1``)."""
    base, *mods = name.split("@")
    if base not in POINTS:
        raise SystemExit(f"unknown sweep point {base!r}; --list shows them")
    method, sets, steps, extra = POINTS[base]
    sets, extra = list(sets), list(extra)
    for mod in mods:
        key, _, value = mod.partition("=")
        if key == "steps":
            pre, fine = value.split("/")
            steps = (int(pre), int(fine))
        elif key == "method":
            method = value
        elif key == "tune":
            extra += ["--tune", value.replace(":", "=", 1)]
        else:
            sets.append(mod)
    return method, sets, steps, extra


def run_point(name: str, args: argparse.Namespace) -> dict:
    method, sets, steps, extra = _parse(name)
    out = Path(args.out) / name.replace("/", "_")
    cmd = [
        str(Path(sys.executable).with_name("pixcon")), "study",
        "--data-root", args.data_root,
        "--fractions", args.fraction,
        "--seeds", args.seeds,
        "--methods", method,
        "--pretrain-steps", str(steps[0]),
        "--finetune-steps", str(steps[1]),
        "--jobs", str(args.jobs),
        "--quiet", "--no-report",
        "--out", str(out),
    ]  # fmt: skip
    for s in BASE_SETS + sets:
        cmd += ["--set", s]
    cmd += extra
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "study.log", "w") as log:  # the study's own table holds test scores: kept out of sight
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    runs = json.loads((out / "results.json").read_text())["runs"]
    if not args.keep_checkpoints:
        for ckpt in out.rglob("*.pt"):
            ckpt.unlink()
    val = {r["seed"]: r["val_miou"] for r in runs}  # one run per seed (the first seed's is a tuning run)
    test = {r["seed"]: r["test_miou"] for r in runs}
    return {
        "point": name,
        "method": method,
        "sets": BASE_SETS + sets,
        "steps": list(steps),
        "command": cmd,
        "val_miou": val,
        "val_mean": statistics.mean(val.values()),
        "test_miou": test,
        "seconds": sum(r["seconds"] for r in runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points", nargs="*")
    p.add_argument("--data-root", default="data/coarse")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--fraction", default="0.05")
    p.add_argument("--seeds", default="100,101,102")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()
    if args.list:
        for name, (method, sets, steps, extra) in POINTS.items():
            print(f"{name:24s} {method:22s} steps {steps[0]}/{steps[1]} {' '.join(sets + extra)}")
        return
    record_path = Path(args.out) / "sweep.json"
    records = json.loads(record_path.read_text()) if record_path.exists() else {}
    for name in args.points:
        records[name] = run_point(name, args)
        record_path.write_text(json.dumps(records, indent=1))
    print(f"{'point':48s} {'val mIoU mean':>13s}  per seed")
    for name, r in records.items():
        seeds = " ".join(f"{100 * v:5.1f}" for v in r["val_miou"].values())
        print(f"{name:48s} {100 * r['val_mean']:13.1f}  {seeds}")


if __name__ == "__main__":
    main()

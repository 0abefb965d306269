"""``pixcon study``: the label-efficiency experiment from the command line (argparse only).

pixcon study [CONFIG] --data-root DIR --fractions 0.01,0.05,1 --seeds 0,1,2 --methods ce,contrast \\
    [--tune lr=1e-3,3e-3,1e-2] [--select best-val] [--jobs 2 | --executor slurm --cluster-param ...] --out DIR

`add_arguments` fills the subcommand's parser; `run` executes the parsed arguments and returns the
exit code. Building the parser imports no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pixcon.config import DATA_FORMATS, ConfigError, RunConfig, load_config, parse_override
from pixcon.recipes import RECIPES, recipe_defaults
from pixcon.study.spec import EXECUTORS, SELECTS, TUNABLE, StudySpec, parse_tune

DEFAULTS: dict[str, Any] = {
    "out": "runs/study",
    "fractions": "0.05,0.25,1",
    "seeds": "0,1,2",
    "methods": "ce,contrast,joint",
    # a quarter of the budget pretraining, as the demo (docs/experiments/recipe_sweep.md)
    "pretrain_steps": 250,
    "finetune_steps": 750,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Path, help="YAML run config (data, model, loss, optim sections)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    p.add_argument("--data-root", help="dataset folder (data.root)")
    p.add_argument("--format", choices=DATA_FORMATS, help="data.format")
    p.add_argument("--out", help=f"study folder (default {DEFAULTS['out']}); a second study there resumes")
    p.add_argument(
        "--fractions", help=f"labeled fractions of the training split (default {DEFAULTS['fractions']})"
    )
    p.add_argument(
        "--seeds", help=f"label-split and training seeds (default {DEFAULTS['seeds']}); the first tunes"
    )
    p.add_argument(
        "--methods",
        help=f"comma-separated recipes (default {DEFAULTS['methods']}), or 'all': {','.join(RECIPES)}",
    )
    p.add_argument(
        "--pretrain-steps",
        type=int,
        help=f"steps of the pretraining stages (default {DEFAULTS['pretrain_steps']}); CE-only trains both budgets",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        help=f"steps of the fine-tuning stages (default {DEFAULTS['finetune_steps']})",
    )
    p.add_argument(
        "--tune",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="grid chosen on the validation split per method and fraction, on the first seed "
        f"(repeatable): {'; '.join(f'{k}: {v}' for k, v in TUNABLE.items())}",
    )
    p.add_argument(
        "--select",
        choices=SELECTS,
        default="last",
        help="checkpoint scored on test: the last step's (default) or the best validation step's",
    )
    p.add_argument("--val-every", type=int, help="validation interval under --select best-val")
    p.add_argument("--label-splits", help="folder of given label splits (`pixcon split`'s file names)")
    p.add_argument(
        "--stratify", action="store_true", help="written label splits cover every class where possible"
    )
    p.add_argument("--aux-root", help="auxiliary dataset of the multidomain recipe")
    p.add_argument(
        "--jobs", type=int, default=1, help="runs at a time on this machine, each with 1/N of the threads"
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local (this machine, --jobs at a time), slurm (a submitit job array), submitit-local "
        "(submitit's local executor)",
    )
    p.add_argument(
        "--cluster-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a submitit parameter, e.g. slurm_partition=gpu, timeout_min=240, gpus_per_node=1 (repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("--no-report", action="store_true", help="do not write OUT/report.html")


def _items(text: str, conv: Any, flag: str) -> tuple[Any, ...]:
    try:
        return tuple(conv(x.strip()) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise ConfigError(f"{flag}: cannot parse {text!r}") from err


def study_spec(args: argparse.Namespace) -> StudySpec:
    """The study of parsed arguments (unset flags take :data:`DEFAULTS`)."""
    methods = _items(args.methods or DEFAULTS["methods"], str, "--methods")
    if methods == ("all",):
        # every recipe; the multi-domain one only with its auxiliary dataset
        methods = tuple(
            m for m in RECIPES if args.aux_root or not any(s.aux_domain for s in RECIPES[m].stages)
        )
    return StudySpec(
        fractions=_items(args.fractions or DEFAULTS["fractions"], float, "--fractions"),
        seeds=_items(args.seeds or DEFAULTS["seeds"], int, "--seeds"),
        methods=methods,
        pretrain_steps=DEFAULTS["pretrain_steps"] if args.pretrain_steps is None else args.pretrain_steps,
        finetune_steps=DEFAULTS["finetune_steps"] if args.finetune_steps is None else args.finetune_steps,
        tune=parse_tune(args.tune),
        select=args.select,
        val_every=args.val_every,
        label_splits=args.label_splits,
        stratify=args.stratify,
        aux_root=args.aux_root,
    )


def base_configs(args: argparse.Namespace, methods: tuple[str, ...]) -> dict[str, RunConfig]:
    """The config each method's runs start from: its recipe's settings
    (:func:`pixcon.recipes.recipe_defaults`), then the CONFIG file, then the flags and ``--set``
    (which win)."""
    if args.config is not None and args.config.is_dir():
        raise ConfigError(f"config file {args.config} is a folder, not a file")
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.format:
        overrides.append(f"data.format={args.format}")
    # one progress bar per run below the study's, when runs train one at a time in this process
    single = args.executor == "local" and args.jobs == 1 and not args.quiet
    configs = {}
    for method in methods:
        defaults = recipe_defaults(method)
        defaults["train"] = {**defaults.get("train", {}), "progress": single}
        configs[method] = load_config(args.config, overrides, defaults=defaults)
    return configs


def _cluster(items: list[str]) -> dict[str, Any]:
    params = {}
    for item in items:
        key, value = parse_override(item)
        params[key] = value
    return params


def run(args: argparse.Namespace) -> int:
    """Runs ``pixcon study`` for parsed arguments; prints the tables; returns the exit code (0)."""
    spec = study_spec(args)
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    cfgs = base_configs(args, spec.methods)
    from pixcon.study.run import Execution, run_study

    execution = Execution(
        executor=args.executor,
        jobs=args.jobs,
        cluster=_cluster(args.cluster_param),
        progress=not args.quiet,
        report=not args.no_report,
    )
    out = Path(args.out or DEFAULTS["out"])
    result = run_study(spec, cfgs, out, execution)
    print(result.table)
    print()
    print(result.settings_table)
    print(f"\nresults: {out / 'results.json'}, {out / 'results.csv'}, {out / 'miou_vs_fraction.png'}")
    if execution.report:
        print(f"report: {out / 'report.html'}")
    return 0

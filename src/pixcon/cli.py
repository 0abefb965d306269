"""pixcon command line: a thin layer over the library.

pixcon pretrain [CONFIG] [--objective NAME]      # stage 1: supervised pixel contrast (or glcnet, ...)
pixcon finetune [CONFIG] --init-from CKPT         # stage 2: cross-entropy from the pretrain checkpoint
pixcon train    [CONFIG] [--joint]                # CE-only baseline, or CE + lambda * contrast
pixcon train    [CONFIG] --datasets A,B           # one network on several datasets (Boutillon et al.;
                                                  # also pretrain and finetune)
pixcon evaluate CKPT [--split test] [--domain NAME] [--prototype-head]
pixcon pseudo-label CKPT --out DIR [--threshold 0.9] [--window 512]  # confident masks for the unlabeled images
pixcon split    [CONFIG] --root DIR --fractions 0.01,0.1 --seeds 0,1 [--stratify]
pixcon data generate --out DIR                    # the embedded default dataset
pixcon data check [CONFIG] --format voc --root DIR  # every problem, with its file
pixcon study    [CONFIG] --data-root DIR --fractions 0.05,1 --seeds 0,1,2 --methods ce,contrast \
                [--tune lr=3e-3,1e-2] --out DIR  # the label-efficiency experiment on your dataset
pixcon demo                                       # the same, on the embedded dataset
pixcon report RUN_DIR... [--out FILE]             # one self-contained HTML page
pixcon predict CKPT IMAGES... --out DIR           # masks and overlays, sliding window for large images
pixcon diagnose CKPT [--source projection]        # spectrum, effective rank, NMI/ARI of clusters
pixcon condense --task classification|segmentation --method dc|dcc --out DIR   # a condensed training set
pixcon --quiet COMMAND ...                        # no progress bars, warnings only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pixcon.condense.cli import add_arguments as add_condense_arguments
from pixcon.condense.cli import run as run_condense
from pixcon.config import (
    DATA_FORMATS,
    ConfigError,
    LossVariant,
    ObjectiveName,
    RunConfig,
    TrainConfig,
    load_config,
)
from pixcon.experiments.options import METHODS, DemoOptions
from pixcon.recipes import (
    RECIPES,
    Stage,
    finetuning_stage,
    flatten_settings,
    pretraining_recipe,
    recipe,
    stage_defaults,
)
from pixcon.study.cli import add_arguments as add_study_arguments
from pixcon.study.cli import run as run_study

log = logging.getLogger("pixcon")

# The parser imports no torch: `pixcon --help` and argument errors answer at once. So handlers
# import the module they run when they run, and choices come from the config's Literals (which
# tests/test_registries.py ties to the registries they name) and the recipe records.
HEAD_INITS = typing.get_args(typing.get_type_hints(TrainConfig)["head_init"])
STYLES = ("default", "aux", "coarse")  # pixcon.data.synthetic.STYLES (tests/test_registries.py)
SOURCES = ("projection", "decoder")  # pixcon.analysis.SOURCES (tests/test_registries.py)

_OBJECTIVE = {"pretrain": "contrast", "finetune": "ce", "train": "ce"}


def _add_run_args(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("config", nargs="?", type=Path, help="YAML file; missing keys keep their defaults")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set optim.lr=0.01 (repeatable)",
    )
    folder = p.add_mutually_exclusive_group()
    folder.add_argument(
        "--resume", action="store_true", help="continue the run in OUT from its checkpoint (last.pt)"
    )
    folder.add_argument(
        "--overwrite",
        action="store_true",
        help="OUT holds an earlier run: delete its checkpoints, metrics.csv, final.json, run*.json and "
        "tensorboard/ first (train.overwrite)",
    )
    p.add_argument("--out", help="run directory (train.out_dir)")
    p.add_argument("--data-root", help="dataset folder (data.root)")
    p.add_argument("--format", choices=DATA_FORMATS, help="data.format")
    p.add_argument("--labeled-split", help="file of labeled image ids (data.labeled_split)")
    p.add_argument(
        "--encoder-weights",
        help="model.encoder_weights: a local encoder state dict, or a weights name of smp (imagenet) loaded from its cache",
    )
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--steps", type=int, help="train.steps")
    p.add_argument("--devices", type=int, help="train.devices (Lightning Fabric)")
    p.add_argument("--num-nodes", type=int, help="train.num_nodes")
    p.add_argument("--strategy", help="train.strategy, e.g. ddp")
    p.add_argument("--precision", help="train.precision: 32-true, bf16-mixed, 16-mixed")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip steps whose loss is NaN/inf instead of stopping (train.skip_nonfinite)",
    )
    if command == "pretrain":
        p.add_argument(
            "--objective",
            choices=typing.get_args(ObjectiveName),
            help="pretraining objective (train.objective; default contrast; see docs/methods.md)",
        )
        p.add_argument("--init-from", help="start from this checkpoint (train.init_from), e.g. a glcnet run")
    if command == "finetune":
        p.add_argument("--init-from", help="pretrain checkpoint (train.init_from); required")
        p.add_argument(
            "--recipe",
            choices=[n for n in RECIPES if finetuning_stage(n) is not None],
            help="take the defaults of this recipe's fine-tuning stage (default: the recipe whose first "
            "stage trained the --init-from checkpoint's objective, e.g. contrast)",
        )
    if command in ("finetune", "train"):
        p.add_argument(
            "--head-init",
            choices=HEAD_INITS,
            help="with --init-from: the segmentation head from class means of the labeled pixels' "
            "pretrained features (train.head_init; finetune's default: the recipe's, e.g. prototypes "
            "after contrast)",
        )
    if command == "train":
        p.add_argument("--joint", action="store_true", help="single-stage CE + loss.joint_weight * contrast")
        p.add_argument(
            "--init-from",
            help="start from this checkpoint (train.init_from); a single-domain one for a --datasets run "
            "gives every domain its batch-norm statistics",
        )
    p.add_argument(
        "--datasets",
        metavar="[NAME=]PATH,...",
        help="several datasets in one run (per-domain batch norm and heads, plus the domain regulariser): "
        "comma-separated, the primary (scored by evaluate and the validation summary) first; each a "
        "dataset folder or a YAML file with a data section; NAME= names the domain (default: the folder's name)",
    )


_FLAG_KEYS = {
    "out": "train.out_dir",
    "data_root": "data.root",
    "format": "data.format",
    "labeled_split": "data.labeled_split",
    "encoder_weights": "model.encoder_weights",
    "seed": "train.seed",
    "steps": "train.steps",
    "devices": "train.devices",
    "num_nodes": "train.num_nodes",
    "strategy": "train.strategy",
    "precision": "train.precision",
    "init_from": "train.init_from",
    "head_init": "train.head_init",
}


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The run's config: code defaults <- the recipe stage's defaults (:func:`_recipe_stage`) <- the
    config file <- ``--set`` and the flags. Logs the recipe defaults it applied."""
    datasets = args.datasets
    joint = getattr(args, "joint", False)
    if datasets and args.data_root:
        raise ConfigError("--datasets names the primary dataset first; leave out --data-root")
    objective = "joint" if joint else _OBJECTIVE[args.command]
    flags = [
        f"{key}={getattr(args, name)}"
        for name, key in _FLAG_KEYS.items()
        if getattr(args, name, None) is not None
    ]
    if datasets:
        flags += datasets_overrides(datasets)
    defaults: dict[str, Any] = {}
    if args.command == "pretrain":
        # contrast unless --objective, --datasets, the config file or --set train.objective says otherwise
        defaults = {"train": {"objective": objective}}
        overrides = [*args.overrides, *flags]
        if args.objective:
            overrides.append(f"train.objective={args.objective}")
    else:  # finetune and train are CE (or joint) whatever the config file says
        overrides = [*args.overrides, *flags]
    if args.quiet:
        overrides.append("train.progress=false")
    if args.skip_nonfinite:
        overrides.append("train.skip_nonfinite=true")
    if args.overwrite:
        overrides.append("train.overwrite=true")
    path = _config_file(args.config)
    forced = [] if args.command == "pretrain" else [f"train.objective={objective}"]
    # the user's settings alone first: their errors answer before a checkpoint is read (torch)
    cfg = load_config(path, [*overrides, *forced], defaults=defaults)
    if args.command == "finetune" and not cfg.train.init_from:
        raise ConfigError("finetune needs the pretrain checkpoint: --init-from PATH (train.init_from)")
    init = _checkpoint_config(cfg.train.init_from) if cfg.train.init_from else None
    name, stage, note = _recipe_stage(args, cfg, init)
    if args.command == "finetune":
        forced = [f"train.objective={stage.objective}"]  # ce, or joint for contrast_joint_ft
    values = stage_defaults(name, stage.name)
    from_checkpoint: set[str] = set()
    if init is not None:
        # The network must be the checkpoint's: its projection head, not the recipe's, or the
        # weights would not load.
        layers = init.get("model", {}).get("proj_layers")
        if layers is not None:
            values["model"]["proj_layers"] = layers
            from_checkpoint.add("model.proj_layers")
    user = _user_keys(path, [*overrides, *forced])
    applied = [
        f"{key}={_fmt_value(value)}" + (" (the checkpoint's)" if key in from_checkpoint else "")
        for key, value in flatten_settings(values)
        if not any(key == k or key.startswith(k + ".") for k in user)
    ]
    log.info(
        "%s: defaults of recipe %s, stage %s%s: %s",
        args.command,
        name,
        stage.name,
        note,
        ", ".join(applied) or "none applied (the config file and --set give every one)",
    )
    return load_config(path, [*overrides, *forced], defaults=_merge_sections(values, defaults))


def _recipe_stage(
    args: argparse.Namespace, cfg: RunConfig, init: dict[str, Any] | None
) -> tuple[str, Stage, str]:
    """The recipe and stage whose defaults a command takes (docs/training.md#where-the-defaults-come-
    from), and a note on why, for the log line.

    ``pretrain``: the first stage of the recipe whose first stage trains ``cfg``'s objective
    (``contrast``, ``glcnet``, ...). ``finetune``: the fine-tuning stage of ``--recipe``, or of the
    recipe whose first stage trained the ``--init-from`` checkpoint's objective (``contrast``:
    from the prototype head at a third of the rate; ``glcnet``, ``directclr``: from a random head
    at the full rate); a checkpoint no recipe fine-tunes (``ce``, ``joint``) takes recipe ``ce``.
    ``train``: recipe ``ce``, or ``joint`` with ``--joint``.
    """
    if args.command == "pretrain":
        name = pretraining_recipe(cfg.train.objective)
        if name is None:  # tests/test_recipe_defaults.py: every objective has one
            raise ConfigError(f"train.objective: no recipe trains {cfg.train.objective!r} first")
        return name, recipe(name).stages[0], ""
    if args.command == "train":
        name = "joint" if args.joint else "ce"
        return name, recipe(name).stages[0], ""
    assert init is not None  # finetune needs --init-from
    if args.recipe:
        stage = finetuning_stage(args.recipe)
        assert stage is not None  # the flag's choices
        return args.recipe, stage, ""
    trained = str(init.get("train", {}).get("objective", "?"))
    name = pretraining_recipe(trained)
    stage = finetuning_stage(name) if name is not None else None
    if name is None or stage is None:
        return (
            "ce",
            recipe("ce").stages[0],
            f" (the checkpoint trained {trained}, which no recipe fine-tunes)",
        )
    return name, stage, f" (the checkpoint trained {trained})"


def _checkpoint_config(path: str) -> dict[str, Any]:
    """The config saved in checkpoint ``path`` (the init checkpoint: training reads it again)."""
    from pixcon.checkpoint import load_checkpoint

    return dict(load_checkpoint(path)["config"])


def _user_keys(path: Path | None, overrides: Sequence[str]) -> set[str]:
    """The dotted keys the config file and the overrides set (a section's key covers its keys)."""
    import yaml

    from pixcon.config import parse_override

    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(path.read_text()) or {}  # load_config has checked it
    keys = {key for key, _ in flatten_settings(values)}
    for item in overrides:
        key, value = parse_override(item)
        keys |= {key} | {f"{key}.{k}" for k, _ in flatten_settings(value if isinstance(value, dict) else {})}
    return keys


def _merge_sections(*layers: dict[str, Any]) -> dict[str, Any]:
    """Nested config values, each layer over the ones before it, section by section."""
    out: dict[str, Any] = {}
    for layer in layers:
        for section, values in layer.items():
            out[section] = {**out.get(section, {}), **values}
    return out


def _fmt_value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _config_file(path: Path | None) -> Path | None:
    """The CONFIG argument, refused when it is a folder (load_config would say "not found")."""
    if path is not None and path.is_dir():
        raise ConfigError(
            f"config file {path} is a folder, not a file (a YAML file such as {path}/config.yaml)"
        )
    return path


def datasets_overrides(text: str) -> list[str]:
    """``--datasets [NAME=]PATH,...`` as config overrides: the first is the primary domain (the
    ``data`` section, ``multidomain.primary_name``), the others ``multidomain.domains``.

    PATH is a dataset folder (its ``data.root``) or a YAML file whose ``data`` section (with a
    ``root``; relative paths are relative to the working directory, as everywhere in a config) and
    optional ``name`` describe the domain.

    Raises:
        ConfigError: Fewer than two datasets, a bad name, or a YAML file with other sections.
        FileNotFoundError: A PATH that does not exist.
    """
    items = [x.strip() for x in text.split(",") if x.strip()]
    if len(items) < 2:
        raise ConfigError(
            f"--datasets: give at least two datasets, the primary first (e.g. --datasets data/a,data/b); got {text!r}"
        )
    entries = []
    for item in items:
        name, _, path = item.partition("=")
        if not path or "/" in name or Path(item).exists():  # a path that merely contains '='
            name, path = "", item
        where = Path(path)
        if where.is_dir():
            entry: dict[str, Any] = {"root": str(where)}
        elif where.is_file() and where.suffix.lower() in (".yaml", ".yml"):
            entry = _domain_file(where)
        elif not where.exists():
            raise FileNotFoundError(f"--datasets: {path}: no such dataset folder or YAML file")
        else:
            raise ConfigError(f"--datasets: {path} is neither a dataset folder nor a .yaml file")
        if name:
            entry["name"] = name
        entries.append(entry)
    primary, *others = entries
    out = [f"data.{k}={json.dumps(v)}" for k, v in primary.items() if k != "name"]
    if "name" in primary:
        out.append(f"multidomain.primary_name={json.dumps(primary['name'])}")
    out.append(f"multidomain.domains={json.dumps(others)}")
    return out


def _domain_file(path: Path) -> dict[str, Any]:
    """A domain's YAML file: ``data`` (its data section) and optionally ``name``."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--datasets {path}: invalid YAML: {err}") from err
    if not isinstance(loaded, dict) or not isinstance(loaded.get("data"), dict):
        raise ConfigError(f"--datasets {path}: a domain file needs a data section (a mapping of data keys)")
    other = sorted(set(loaded) - {"data", "name"})
    if other:
        raise ConfigError(
            f"--datasets {path}: a domain file holds a data section and optionally a name; found {other} "
            "(the other sections are shared by every domain: put them in the run's config)"
        )
    entry = dict(loaded["data"])
    if "root" not in entry:
        # Without it the domain would silently take data.root's default (or the config file's).
        raise ConfigError(f"--datasets {path}: the data section needs a root (the dataset folder)")
    if "name" in loaded:
        entry["name"] = loaded["name"]
    return entry


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _run_config(args)  # a config error answers before torch is imported
    from pixcon.train import run_training

    metrics = run_training(cfg, resume=args.resume)
    out = Path(cfg.train.out_dir)
    if metrics:
        print(
            f"{args.command}: val mIoU {_fmt(metrics.get('miou'))}, kappa {_fmt(metrics.get('kappa'))} -> {out}"
        )
    else:
        print(f"{args.command}: done -> {out / 'last.pt'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pixcon.inference import evaluate_checkpoint
    from pixcon.inference.outputs import check_output_file

    if args.out:
        check_output_file(args.out, "--out")  # before scoring, which may take minutes
    scores = evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        data_root=args.data_root,
        image_size=args.image_size,
        progress=not getattr(args, "quiet", False),
        domain=args.domain,
        prototype_head=args.prototype_head,
        labeled_split=args.labeled_split,
    )
    text = json.dumps(scores, indent=2)
    print(text if args.json else _score_table(scores))  # the scores reach the user whatever happens next
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


def _add_window_args(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--window",
        type=int,
        default=default,
        help=f"sliding-window tile size, a multiple of 32, for larger images (0: whole image at once; default {default})",
    )
    p.add_argument("--overlap", type=float, default=0.25, help="fraction of a tile its neighbours share")


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from pixcon.inference.outputs import check_output_dir
    from pixcon.pseudo import pseudo_label

    check_output_dir(args.out, "--out")
    summary = pseudo_label(
        args.checkpoint,
        args.out,
        threshold=args.threshold,
        data_root=args.data_root,
        progress=not args.quiet,
        window=args.window or None,
        overlap=args.overlap,
    )
    print(
        f"pseudo-labeled {summary['pseudo_labeled']} images, {100 * summary['kept_fraction']:.1f}% of pixels "
        f"kept -> {Path(args.out) / 'masks'}; next: --set data.labeled_split={Path(args.out) / 'labeled.txt'} "
        f"--set data.pseudo_masks={Path(args.out) / 'masks'}"
    )
    return 0


def _data_config(args: argparse.Namespace) -> Any:
    """The data section from CONFIG, --set overrides and the --format/--root shortcuts."""
    overrides = list(args.overrides)
    if args.format:
        overrides.append(f"data.format={args.format}")
    if args.root:
        overrides.append(f"data.root={args.root}")
    return load_config(_config_file(args.config), overrides).data


def cmd_split(args: argparse.Namespace) -> int:
    from pixcon.data.registry import open_dataset, split_ids
    from pixcon.data.splits import class_presence, write_label_splits
    from pixcon.inference.outputs import check_output_dir

    data = _data_config(args)
    pool = args.split or data.train_split
    ids = split_ids(data, pool)
    presence = None
    if args.stratify:
        presence = class_presence(open_dataset(data, ids=ids))
    out = Path(args.out) if args.out else Path(data.root) / "label_splits"
    check_output_dir(out, "--out" if args.out else "the split folder (ROOT/label_splits)")
    paths = write_label_splits(
        ids, _floats(args.fractions, "--fractions"), _ints(args.seeds, "--seeds"), out, presence=presence
    )
    for p in paths:
        print(p)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from pixcon.data.registry import check_dataset

    report = check_dataset(_data_config(args), splits=args.split or None)
    print(report.format())
    return 0 if report.ok else 1


def cmd_data_generate(args: argparse.Namespace) -> int:
    from pixcon.data.synthetic import generate_dataset, parse_class_frequencies

    freqs = parse_class_frequencies(args.class_frequencies) if args.class_frequencies else None
    root = generate_dataset(
        args.out,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        image_size=args.image_size,
        class_frequencies=freqs,
        fashion_path=args.fashion_path,
        overwrite=args.overwrite,
        style=args.style,
    )
    print(root)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pixcon.experiments.demo import run_demo

    opts = _demo_options(args)
    result = run_demo(opts)
    print(result.table)
    print(
        f"\nresults: {result.out_dir / 'results.json'}, {result.out_dir / 'results.csv'}, {result.out_dir / 'miou_vs_fraction.png'}"
        + (f", {result.out_dir / 'report.html'}" if opts.report else "")
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pixcon.inference.outputs import check_output_file
    from pixcon.report import ReportOptions, build_report

    if args.out:
        check_output_file(args.out, "--out")
    opts = ReportOptions(
        split=args.split,
        num_images=args.num_images,
        tsne_pixels=args.tsne_pixels,
        seed=args.seed,
        data_root=args.data_root,
        device=args.device,
        progress=not args.quiet,
    )
    print(build_report(args.run_dirs, args.out, opts))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pixcon.inference.outputs import check_output_dir
    from pixcon.predict import predict_files

    check_output_dir(args.out, "--out")
    skipped: list[tuple[Path, str]] = []
    written = predict_files(
        args.checkpoint,
        args.images,
        args.out,
        window=args.window or None,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
        domain=args.domain,
        strict=args.strict,
        skipped=skipped,
    )
    for mask, overlay in written:
        print(f"{mask}  {overlay}")
    if skipped:  # each was logged as a warning with its reason, visible with --quiet too
        total = len(written) + len(skipped)
        print(
            f"predict: {len(written)} of {total} images written to {args.out}, {len(skipped)} skipped: "
            + ", ".join(str(p) for p, _ in skipped)
        )
        return EXIT_FAILED  # partial: every good image is written, and a script sees that some were not
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from pixcon.diagnostics import diagnose_checkpoint, write_diagnosis
    from pixcon.inference.outputs import check_output_dir

    check_output_dir(args.out or Path(args.checkpoint).parent / "diagnose", "--out")
    result = diagnose_checkpoint(
        args.checkpoint,
        split=args.split,
        source=args.source,
        num_pixels=args.num_pixels,
        seed=args.seed,
        data_root=args.data_root,
        image_size=args.image_size,
        device=args.device,
        progress=not args.quiet,
        domain=args.domain,
    )
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "diagnose"
    paths = write_diagnosis(result, out)
    clusters = (
        f", k-means NMI {result['kmeans_nmi']:.3f} ARI {result['kmeans_ari']:.3f}"
        if "kmeans_nmi" in result
        else ""
    )
    print(
        f"effective rank {result['effective_rank']:.2f} of D={result['dim']}{clusters} -> {', '.join(map(str, paths))}"
    )
    return 0


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _score_table(scores: dict[str, Any]) -> str:
    lines = [
        f"{k:>15}: {_fmt(scores[k])}" for k in ("miou", "pixel_acc", "mean_class_acc", "kappa", "macro_f1")
    ]
    lines.append("  IoU per class:")
    lines += [f"{name:>15}: {_fmt(v)}" for name, v in scores["iou_per_class"].items()]
    return "\n".join(lines)


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from err


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from err


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Path, help="YAML config; only its data section is used")
    p.add_argument("--root", help="dataset folder (data.root)")
    p.add_argument("--format", choices=DATA_FORMATS, help="data.format")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _add_demo_args(p: argparse.ArgumentParser) -> None:
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
        "--style",
        choices=[s for s in STYLES if s != "aux"],
        help=f"embedded dataset: coarse (4 item classes, learnable in the demo's budget) or default "
        f"(the first version, 10 clothing classes) (default {d.style})",
    )
    p.add_argument(
        "--methods",
        help=f"comma-separated methods (default {','.join(METHODS)}), or 'all': {','.join(RECIPES)}",
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
    p.add_argument(
        "--data-seed",
        type=int,
        help=f"seed of the generated dataset, not of the runs (default {d.data_seed})",
    )
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: each recipe's own)")
    p.add_argument("--temperature", type=float, help="contrastive temperature (default: the recipes')")
    p.add_argument(
        "--variant",
        choices=typing.get_args(LossVariant),
        help="pixel-contrast pairs: batch, within (one image) or cross (image pairs) (default: the recipes')",
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


def _demo_options(args: argparse.Namespace) -> DemoOptions:
    """The demo's options from its command line (``DemoOptions``; unset flags keep its defaults)."""
    from pixcon.data.synthetic import parse_class_frequencies

    given = {k: v for k, v in vars(args).items() if k in DemoOptions.__dataclass_fields__ and v is not None}
    for key, conv in (("fractions", float), ("seeds", int), ("methods", str)):
        if key in given:
            try:
                given[key] = tuple(conv(x) for x in str(given[key]).split(",") if x.strip())
            except ValueError as err:
                raise ConfigError(f"--{key}: cannot parse {given[key]!r}") from err
    if "methods" in given:
        if given["methods"] == ("all",):
            given["methods"] = tuple(RECIPES)
        unknown = [m for m in given["methods"] if m not in RECIPES]
        if unknown:
            raise ConfigError(f"--methods: unknown {unknown}; choose from {list(RECIPES)} or 'all'")
    if given.get("jobs", 1) < 1:
        raise ConfigError(f"--jobs must be >= 1, got {given['jobs']}")
    if "class_frequencies" in given:
        given["class_frequencies"] = parse_class_frequencies(given["class_frequencies"])
    if getattr(args, "quiet", False):
        given["progress"] = False
    if getattr(args, "no_report", False):
        given["report"] = False
    return DemoOptions.quick(**given) if args.quick else DemoOptions(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixcon", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "-q", "--quiet", dest="global_quiet", action="store_true", help="no progress bars, warnings only"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("pretrain", "stage 1: supervised pixel contrastive pretraining on the labeled images"),
        ("finetune", "stage 2: cross-entropy fine-tuning of the whole network from a pretrain checkpoint"),
        ("train", "baseline: cross-entropy from scratch, or --joint CE + lambda * contrast"),
    ]:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_run_args(p, name)
        p.set_defaults(handler=cmd_run)

    p = sub.add_parser("evaluate", help="score a checkpoint on a split (dataset-level mIoU, kappa, ...)")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--data-root", help="dataset folder; default: the one in the checkpoint's config")
    p.add_argument("--image-size", type=int, help="resize for evaluation; default: native size")
    p.add_argument("--out", help="also write the scores as JSON here")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument(
        "--domain", help="multi-domain checkpoints: the domain (dataset) by name; default: the primary one"
    )
    p.add_argument(
        "--prototype-head",
        action="store_true",
        help="score the nearest-class-mean classifier of the checkpoint's features (class means of "
        "its run's labeled images) instead of its segmentation head, e.g. a pretraining checkpoint",
    )
    p.add_argument("--labeled-split", help="with --prototype-head: labeled ids to take the means of")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser(
        "pseudo-label", help="label the run's unlabeled training images with a fine-tuned checkpoint"
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", required=True, help="folder for masks/, labeled.txt and pseudo.json")
    p.add_argument("--threshold", type=float, default=0.9, help="keep pixels whose max softmax is >= this")
    p.add_argument("--data-root", help="dataset folder; default: the one in the checkpoint's config")
    _add_window_args(p, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_pseudo_label)

    p = sub.add_parser("split", help="nested, seeded label-fraction splits of a training split")
    _add_data_args(p)
    p.add_argument("--split", help="pool to sample from (default data.train_split)")
    p.add_argument("--fractions", default="0.01,0.02,0.05,0.1,1.0")
    p.add_argument("--seeds", default="0")
    p.add_argument(
        "--stratify",
        action="store_true",
        help="the smallest fraction covers every class of the pool where possible (reads all masks)",
    )
    p.add_argument("--out", help="output folder; default ROOT/label_splits")
    p.set_defaults(handler=cmd_split)

    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    g = dsub.add_parser(
        "generate", help="write the embedded default dataset (Fashion-MNIST items on real textures)"
    )
    g.add_argument("--out", default="data/fashion-scenes")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-train", type=int, default=400)
    g.add_argument("--num-val", type=int, default=100)
    g.add_argument("--num-test", type=int, default=200)
    g.add_argument("--image-size", type=int, default=96)
    g.add_argument("--class-frequencies", help="relative weights, e.g. 'bag=0.1,sandal=0.2' (others 1)")
    g.add_argument("--fashion-path", help="folder with the Fashion-MNIST idx files")
    g.add_argument(
        "--style",
        default="default",
        choices=STYLES,
        help="scene style: default (pixcon-fashion-scenes); aux, a second domain for multi-domain "
        "training (other textures, 4 coarse clothing classes, darker, desaturated, noisy); or coarse, "
        "the default's textures with 4 coarse clothing classes, larger items and a hue prior per class "
        "(learnable in the demo's budget, docs/experiments/learnability.md)",
    )
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(handler=cmd_data_generate)
    c = dsub.add_parser(
        "check",
        help="scan images and masks; print counts, sizes, class histogram and every problem with its file",
    )
    _add_data_args(c)
    c.add_argument("--split", action="append", help="check only this split (repeatable); default: everything")
    c.set_defaults(handler=cmd_data_check)

    p = sub.add_parser(
        "demo", help="label-efficiency experiment: CE-only vs contrastive pretraining + fine-tuning"
    )
    _add_demo_args(p)
    p.set_defaults(handler=cmd_demo)
    p = sub.add_parser(
        "study",
        help="label-efficiency study on any dataset: fractions x seeds x methods, tuned on validation, resumable",
    )
    add_study_arguments(p)
    p.set_defaults(handler=run_study)
    p = sub.add_parser(
        "condense",
        help="dataset condensation (DC, DCC): a few synthetic samples that train a network as the real set does",
    )
    add_condense_arguments(p)
    p.set_defaults(handler=run_condense)
    _add_analysis_parsers(sub)
    return parser


def _add_analysis_parsers(sub: Any) -> None:
    """``report``, ``predict`` and ``diagnose``."""
    p = sub.add_parser("report", help="one self-contained HTML report of demo or run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a demo output or training run directory")
    p.add_argument("--out", help="HTML file (default RUN_DIR/report.html of the first one)")
    p.add_argument("--split", default="test", help="split to score and sample embeddings on")
    p.add_argument("--num-images", type=int, default=4, help="images in the prediction grid")
    p.add_argument("--tsne-pixels", type=int, default=2000, help="class-balanced pixels for t-SNE")
    p.add_argument("--seed", type=int, default=0, help="seeds the pixel sample and t-SNE")
    p.add_argument("--data-root", help="dataset folder, if not where the checkpoints' configs say")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("predict", help="segment image files: index masks and colour overlays")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("images", nargs="+", help="PNG/JPEG, or (multi-band) TIFF")
    p.add_argument("--out", required=True, help="output folder: <name>_mask.png, <name>_overlay.png")
    _add_window_args(p, default=512)
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument(
        "--domain", help="multi-domain checkpoints: the domain (dataset) by name; default: the primary one"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first image that cannot be read or predicted (exit status 2); by default it is "
        "reported and skipped, the others are written, and the exit status is 1",
    )
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("diagnose", help="pixel-embedding spectrum and effective rank of a checkpoint")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="output folder (default: CHECKPOINT's folder/diagnose)")
    p.add_argument("--source", choices=SOURCES, default="projection")
    p.add_argument("--num-pixels", type=int, default=2000, help="class-balanced pixels to sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="dataset folder; default: the one in the checkpoint's config")
    p.add_argument("--image-size", type=int, help="resize images first; default: native size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument(
        "--domain", help="multi-domain checkpoints: the domain (dataset) by name; default: the primary one"
    )
    p.set_defaults(handler=cmd_diagnose)


# Exit statuses (docs/training.md#exit-statuses): 0 done; 1 the work ran and failed or was partial;
# 2 nothing (more) could be done with this input, path, setting or device; 130 Ctrl-C.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_SIGINT = {"received": False}


def _on_sigint(signum: int, frame: Any) -> None:
    _SIGINT["received"] = True  # a real Ctrl-C, not a KeyboardInterrupt raised by code
    raise KeyboardInterrupt


@contextlib.contextmanager
def _noting_sigint() -> Iterator[None]:
    """While a command runs, Ctrl-C still raises KeyboardInterrupt, and is noted as a real one.
    Only Python's own handler is replaced (an ignored SIGINT stays ignored), and only in the main
    thread; the handler from before is put back."""
    _SIGINT["received"] = False
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main else None
    if previous is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help (0) or an argument error (2, already printed): a return code
        return int(exit.code or 0)
    # `pixcon --quiet CMD` and `pixcon CMD --quiet` mean the same; handlers read args.quiet.
    args.quiet = args.global_quiet or getattr(args, "quiet", False)
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pixcon").setLevel(level)
    try:
        with _noting_sigint():
            return int(args.handler(args))
    except KeyboardInterrupt as err:
        # Ctrl-C: training stops after a whole step and says where its checkpoint is (its message);
        # anything else stops where it is. A KeyboardInterrupt raised by code is not ours to hide.
        if not (_SIGINT["received"] or getattr(err, "from_sigint", False)):
            raise
        print(f"pixcon {args.command}: {str(err) or 'interrupted (Ctrl-C)'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, ValueError, OSError) as err:
        # OSError: a path that is missing, a folder where a file belongs (or the reverse), no
        # permission, a read-only file system, a run folder that is taken (its message names it)
        print(f"pixcon {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        from pixcon.checkpoint import CheckpointError

        train = sys.modules.get("pixcon.train.loop")  # loaded if training ran
        failed = (CheckpointError,) + ((train.NonFiniteLossError,) if train is not None else ())
        study = sys.modules.get("pixcon.study.executors")  # loaded if a study ran
        failed += (study.StudyRunError,) if study is not None else ()
        if isinstance(err, failed):
            print(f"pixcon {args.command}: error: {err}", file=sys.stderr)
            return EXIT_FAILED
        raise


def _one_line(err: BaseException) -> str:
    """An error's message; an OSError raised by the system (``[Errno 13] Permission denied: 'x'``)
    as its reason and file."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.filename}: {err.strerror}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())

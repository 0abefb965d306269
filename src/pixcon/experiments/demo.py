"""The label-efficiency experiment behind ``pixcon demo`` (an experiment: the library never imports it).

For each label fraction and seed it trains, on the embedded dataset (Fashion-MNIST items pasted on
real textures, :mod:`pixcon.data.synthetic`; its ``coarse`` style by default, four item classes
learnable in the demo's budget, or ``--style default``, the first version with ten):

* ``ce``       -- cross-entropy only, for ``pretrain_steps + finetune_steps`` steps (compute-matched);
* ``contrast`` -- supervised pixel contrastive pretraining (Zhao et al.), then CE fine-tuning;
* with ``--methods``, any recipe of :mod:`pixcon.recipes` (``all``: every one, ``joint`` the
  single-stage CE + lambda * contrast baseline among them), all given the same number of optimizer
  steps (``multidomain`` also trains on ``DATA-aux``, a second dataset made with ``style="aux"``,
  one batch of each per step);

each with its recipe's record (learning rate, loss, projection head: :mod:`pixcon.recipes`, chosen
on validation with sweep seeds, docs/experiments/recipe_sweep.md), so the demo tunes nothing in
its own budget. It evaluates each run on the test split, and writes ``results.json``,
``results.csv``, a plot of mIoU against label fraction and ``report.html`` (:mod:`pixcon.report`;
``--no-report`` skips it). It is ``pixcon study`` (:mod:`pixcon.study`) on the embedded dataset
with the demo's own defaults: the last checkpoint of each run scored, a second demo into the same
folder skipping the runs it finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixcon.config import RunConfig, load_config
from pixcon.data.synthetic import generate_dataset
from pixcon.experiments.options import DemoOptions
from pixcon.recipes import RECIPES, merge_settings, recipe_defaults
from pixcon.study.run import Execution, StudyResult, run_study
from pixcon.study.spec import StudySpec


def _base_configs(opts: DemoOptions, data_dir: Path) -> dict[str, RunConfig]:
    """Each method's config: its recipe's record (:func:`pixcon.recipes.recipe_defaults`: the
    learning rate, loss and projection head chosen on the sweep seeds), the demo's data and budget
    settings over it, then the demo's flags and the ``--set`` overrides (which win)."""
    demo = {
        # No colour jitter: the dataset's colours carry class information (tinted textures, the
        # coarse style's hue prior) that test images share (docs/experiments/prototype_head.md).
        "data": {
            "root": str(data_dir),
            "image_size": opts.image_size,
            "batch_size": opts.batch_size,
            "color_jitter": 0.0,
        },
        "model": {"encoder": opts.encoder},
        "loss": {"max_pixels": opts.max_pixels},
        # every method gets the same pixel budget (dense SimCLR/DirectCLR: pairs, 2 pixels each)
        "ssl": {"max_pairs": max(2, opts.max_pixels // 2)},
        "hcsc": {"max_pixels": opts.max_pixels},
        "claws": {"max_pixels": opts.max_pixels},
        "ariel": {"max_pixels": opts.max_pixels},
        # one progress bar, the study's; a second demo into the same --out skips the finished runs
        "train": {"progress": False, "log_every": 5},
    }
    flags: dict[str, dict[str, Any]] = {"optim": {}, "loss": {}}
    if opts.lr is not None:
        flags["optim"]["lr"] = opts.lr
    for key in ("temperature", "variant", "joint_weight"):
        if getattr(opts, key) is not None:
            flags["loss"][key] = getattr(opts, key)
    return {
        method: load_config(
            overrides=opts.extra, defaults=merge_settings(recipe_defaults(method), demo, flags)
        )
        for method in opts.methods
    }


def run_demo(opts: DemoOptions) -> StudyResult:
    """Writes the embedded dataset and runs the demo's study on it (:func:`pixcon.study.run.run_study`);
    returns its runs, summary and printed table."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(opts.data_dir) if opts.data_dir else out / "data"
    sizes: dict[str, Any] = dict(num_train=opts.num_train, num_val=opts.num_val, num_test=opts.num_test)
    generate_dataset(
        data_dir,
        seed=opts.data_seed,
        image_size=opts.image_size,
        class_frequencies=opts.class_frequencies,
        style=opts.style,
        **sizes,
    )
    aux_dir = None
    if any(stage.aux_domain for m in opts.methods for stage in RECIPES[m].stages):
        # The second domain of the multi-domain method: other textures, four coarse clothing
        # classes, other image statistics; every training image labeled.
        aux_dir = data_dir.with_name(data_dir.name + "-aux")
        generate_dataset(aux_dir, seed=opts.data_seed, image_size=opts.image_size, style="aux", **sizes)
    spec = StudySpec(
        fractions=opts.fractions,
        seeds=opts.seeds,
        methods=opts.methods,
        pretrain_steps=opts.pretrain_steps,
        finetune_steps=opts.finetune_steps,
        aux_root=str(aux_dir) if aux_dir else None,
    )
    execution = Execution(jobs=opts.jobs, progress=opts.progress, report=opts.report)
    return run_study(spec, _base_configs(opts, data_dir), out, execution)

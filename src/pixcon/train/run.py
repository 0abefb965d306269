"""Assembling a training run: :func:`build_run` turns a config into one :class:`Run` record.

The record holds everything :func:`pixcon.train.loop.fit` steps through: Lightning Fabric, the
domains (a list of one for a single dataset), the network, the objectives, the optimizer, where
the run resumes, and where it writes. Variations of a run (several domains, a head
initialisation, a resume) are decided here, as values in the record; the step loop has no branch
on them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from torch.utils.data import DataLoader

from pixcon.checkpoint import CheckpointError, domain_record, latest_good_checkpoint, load_checkpoint
from pixcon.config import ConfigError, Domain, RunConfig, from_dict, resolve_domains, save_config, to_dict
from pixcon.inference import imprint_head
from pixcon.models import Segmenter, segmenter_from_config, use_domain
from pixcon.objectives import OBJECTIVES, DataInfo, DomainObjectives, create_objectives, objective_heads
from pixcon.train.build import (
    build_optimizer,
    freeze_unused,
    prepare_network,
    projection_loaded,
    set_deterministic,
)
from pixcon.train.data import Datasets, build_datasets, class_weights, infinite_batches, objective_dataset
from pixcon.train.logger import MetricsLogger
from pixcon.train.provenance import run_metadata
from pixcon.train.trainee import Trainee

log = logging.getLogger(__name__)


@dataclass
class DomainRun:
    """One dataset of a run: its name, its config (``cfg`` with the domain's data section), its
    datasets, its training set in the objective's form, and its validation loader (or None)."""

    name: str
    key: str  # the config key of its data section, for messages
    cfg: RunConfig
    data: Datasets
    train_set: Any
    val_loader: DataLoader | None = None


@dataclass
class Run:
    """Everything a training run steps through (see :func:`build_run`)."""

    cfg: RunConfig
    fabric: Fabric
    out: Path
    domains: list[DomainRun]
    model: Segmenter  # the network itself (checkpointed, validated)
    objective: DomainObjectives
    trainee: Any  # Trainee(model, objective) as set up by Fabric: its forward is the loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    start_step: int
    metrics: dict[str, Any]  # the last validation scores (from the checkpoint when resumed)
    meta: dict[str, Any]  # provenance (run.json)
    logger: MetricsLogger
    last: Path = field(init=False)
    previous: Path = field(init=False)

    def __post_init__(self) -> None:
        self.last, self.previous = self.out / "last.pt", self.out / "previous.pt"

    def batches(self) -> Iterator[tuple[Any, ...]]:
        """One batch of every domain per step, from ``start_step`` on, forever."""
        streams = [
            infinite_batches(d.train_set, d.cfg, self.fabric, self.start_step, stream=i, where=d.key)
            for i, d in enumerate(self.domains)
        ]
        return zip(*streams, strict=False)  # endless streams: strictness would never be checked

    def state(self, step: int) -> dict[str, Any]:
        """The checkpoint of the run at ``step`` (see :mod:`pixcon.checkpoint`)."""
        primary = self.domains[0].data
        return {
            "kind": self.cfg.train.objective,
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": step,
            "config": to_dict(self.cfg),
            "metrics": self.metrics,
            "num_classes": primary.num_classes,
            "in_channels": primary.in_channels,
            "class_names": primary.class_names,
            "ignore_index": primary.ignore_index,
            "domains": [
                domain_record(
                    d.name,
                    dataclasses.asdict(d.cfg.data),
                    d.data.num_classes,
                    d.data.class_names,
                    d.data.ignore_index,
                    d.data.in_channels,
                )
                for d in self.domains
            ],
            "rng": {"torch": torch.get_rng_state()},
            "meta": self.meta,
            "world_size": self.fabric.world_size,
        }


def build_run(cfg: RunConfig, resume: bool = False) -> Run:
    """Everything a run of ``cfg`` needs, in the order that keeps runs reproducible: Fabric and the
    seed, the datasets, the network (initialised from ``train.init_from`` or resumed from
    ``train.out_dir``), the head initialisation, the objectives, the optimizer.

    Raises:
        ConfigError: An unknown objective, or a setting the objective cannot honour.
        CheckpointError: ``--resume`` into a run of another config, data or world size; an
            ``init_from`` checkpoint that does not fit the network.
        DatasetError, FileNotFoundError, ValueError: Broken or missing data (the message names it).
    """
    t = cfg.train
    if t.objective not in OBJECTIVES:
        raise ConfigError(
            f"train.objective: unknown objective {t.objective!r}; available: {sorted(OBJECTIVES)}"
        )
    if t.head_init == "prototypes" and not objective_heads(t.objective)[0]:
        raise ConfigError(
            f"train.head_init: 'prototypes' initialises the segmentation head, which objective "
            f"{t.objective!r} does not train"
        )
    domains = resolve_domains(cfg)
    set_deterministic(t.deterministic)
    fabric = Fabric(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
    )
    fabric.launch()
    fabric.seed_everything(t.seed, verbose=False)
    configs = [dataclasses.replace(cfg, data=dom.data) for dom in domains]
    all_data = [build_datasets(c, where=dom.key) for c, dom in zip(configs, domains, strict=True)]
    _check_same_bands(domains, all_data)
    primary = all_data[0]
    model = segmenter_from_config(cfg.model, primary.num_classes, primary.in_channels)
    meta = run_metadata(
        to_dict(cfg),
        _role_ids(domains, all_data),
        files=[c.data.labeled_split for c in configs if c.data.labeled_split],
    )

    out = Path(t.out_dir)
    resumed = _resumed(cfg, out, meta, fabric) if resume else None
    init = load_checkpoint(t.init_from) if resumed is None and t.init_from else None
    names = [dom.name for dom in domains]
    model = prepare_network(model, cfg, init, t.init_from, [d.num_classes for d in all_data], names)
    if init is not None:
        log.info("initialised from %s (step %d, %s)", t.init_from, init["step"], init.get("kind", "?"))
        if t.head_init == "prototypes":
            # a projection head re-initialised on loading (another proj_dim) holds no pretraining
            kind = str(init.get("kind", "")) if projection_loaded(model, init) else ""
            for d, (c, ds) in enumerate(zip(configs, all_data, strict=True)):
                with use_domain(model, d):
                    imprint_head(
                        model,
                        c.data,
                        ds.train.ids,
                        batch_size=ds.val_batch_size,
                        device=fabric.device,
                        pretrained_by=kind,
                        space=t.prototype_space,
                        seed=t.seed,
                    )

    balanced = cfg.loss.class_weights == "balanced" and objective_heads(t.objective)[0]
    infos = [
        # CE weights read every labeled mask: only for objectives with a CE term
        DataInfo(
            ds.num_classes,
            ds.ignore_index,
            ds.in_channels,
            class_weights(ds.train, ds.num_classes, ds.ignore_index) if balanced else None,
        )
        for ds in all_data
    ]
    objective = create_objectives(t.objective, cfg, model, infos, names)
    runs = [
        DomainRun(dom.name, dom.key, c, ds, objective_dataset(c, ds, objective))
        for dom, c, ds in zip(domains, configs, all_data, strict=True)
    ]
    freeze_unused(model, objective)
    trainee = Trainee(model, objective, autocast=fabric.autocast if "mixed" in str(t.precision) else None)
    opt, sched = build_optimizer(cfg, trainee)
    start_step = 0
    if resumed is not None:
        path, state = resumed
        model.load_state_dict(state["model"])
        objective.load_state_dict(state.get("objective", {}))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        log.info("resumed from %s at step %d", path, start_step)
    if fabric.world_size > 1 and fabric.global_rank > 0:
        # Other ranks get their own augmentation and pixel-sampling streams (rank 0 keeps the
        # single-process stream; DDP copies rank 0's initial weights to every rank). On resume
        # they restart from (seed, rank, step), so only rank 0's stream is bit-exact across a resume.
        torch.manual_seed(t.seed + 1_000_003 * fabric.global_rank + start_step)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.compile:
        # In place (nn.Module.compile), so state_dict keys and checkpoints stay the same.
        model.net.encoder.compile()
        model.net.decoder.compile()
    wrapped, opt = fabric.setup(trainee, opt)  # its forward runs under the strategy (autocast, DDP)

    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        # The first start writes run.json; each resume adds run_resume_<step>.json beside it.
        name = "run.json" if resumed is None else f"run_resume_{start_step}.json"
        meta["resumed_from_step"] = start_step if resumed is not None else None
        (out / name).write_text(json.dumps(meta, indent=2))
    if objective.uses_segmentation_head:
        for d in runs:
            if d.data.val is not None:
                # Every rank scores a disjoint shard (no padding with repeated images, unlike
                # DistributedSampler); the confusion matrices are summed.
                shard = list(range(fabric.global_rank, len(d.data.val), fabric.world_size))
                d.val_loader = fabric.setup_dataloaders(
                    DataLoader(d.data.val, batch_size=d.data.val_batch_size, sampler=shard),
                    use_distributed_sampler=False,
                )
    return Run(
        cfg=cfg,
        fabric=fabric,
        out=out,
        domains=runs,
        model=model,
        objective=objective,
        trainee=wrapped,
        optimizer=opt,
        scheduler=sched,
        start_step=start_step,
        metrics=resumed[1].get("metrics", {}) if resumed is not None else {},
        meta=meta,
        logger=MetricsLogger(out, enabled=fabric.is_global_zero),
    )


def _role_ids(domains: list[Domain], all_data: list[Datasets]) -> dict[str, list[str]]:
    """The image ids of each role (``labeled``, ``val``; ``labeled:<name>`` for the other domains)
    whose digests go into the provenance record and are compared on resume."""
    ids: dict[str, list[str]] = {}
    for i, (dom, ds) in enumerate(zip(domains, all_data, strict=True)):
        suffix = "" if i == 0 else f":{dom.name}"
        ids[f"labeled{suffix}"] = ds.train.ids
        if ds.val is not None:
            ids[f"val{suffix}"] = ds.val.ids
    return ids


def _resumed(
    cfg: RunConfig, out: Path, meta: dict[str, Any], fabric: Fabric
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``--resume`` continues from, checked against this run; None if there is none."""
    found = latest_good_checkpoint([out / "last.pt", out / "previous.pt"])
    if found is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out)
        return None
    path, state = found
    _check_same_config(cfg, state, path)
    _check_same_data(meta, state, path)
    if int(state.get("world_size", 1)) != fabric.world_size:
        raise CheckpointError(
            f"--resume: {path} was written by a run on {state.get('world_size', 1)} process(es), "
            f"this one has {fabric.world_size}; the data order and global batch would change. "
            "Resume with the same --devices/--num-nodes, or start a new run with --init-from"
        )
    return found


def _check_same_bands(domains: list[Domain], all_data: list[Datasets]) -> None:
    first = all_data[0].in_channels
    for dom, ds in zip(domains[1:], all_data[1:], strict=True):
        if ds.in_channels != first:
            raise ConfigError(
                f"{dom.key} (domain {dom.name!r}, {dom.data.root}) has {ds.in_channels}-band images but the "
                f"primary domain {domains[0].name!r} ({domains[0].data.root}) has {first}; the domains share "
                "their convolutions, so every one needs the same number of bands"
            )


def _check_same_data(meta: dict[str, Any], state: dict[str, Any], path: Path) -> None:
    saved = state.get("meta", {}).get("data", {})
    for role, now in meta["data"].items():
        if role in saved and saved[role] != now:
            raise CheckpointError(
                f"--resume: the {role} image ids differ from those of the checkpoint {path} "
                f"({saved[role]['count']} ids, sha256 {saved[role]['sha256'][:12]} then; "
                f"{now['count']} ids, sha256 {now['sha256'][:12]} now); resume on the same data or use a new train.out_dir"
            )


def _check_same_config(cfg: RunConfig, state: dict[str, Any], path: Path) -> None:
    saved = from_dict(state["config"])
    for section in (f.name for f in dataclasses.fields(cfg) if f.name != "train"):
        if getattr(saved, section) != getattr(cfg, section):
            raise CheckpointError(
                f"--resume: the {section} section differs from the checkpoint {path}; "
                "resume with the same config or use a new train.out_dir"
            )

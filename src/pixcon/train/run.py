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
from typing import Any, cast

import torch
from lightning.fabric import Fabric
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pixcon.checkpoint import CheckpointError, domain_record, load_checkpoint
from pixcon.config import (
    ConfigError,
    DataConfig,
    Domain,
    RunConfig,
    from_dict,
    resolve_domains,
    save_config,
    to_dict,
)
from pixcon.data.registry import resolve_value_range, split_ids
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
from pixcon.train.folder import RunFolderError, RunFolderLock, check_run_folder, claim_run_folder
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
    lock: RunFolderLock | None = None  # rank 0's lock of the run folder (None on other ranks)
    last: Path = field(init=False)
    previous: Path = field(init=False)

    def __post_init__(self) -> None:
        self.last, self.previous = self.out / "last.pt", self.out / "previous.pt"

    def close(self) -> None:
        """Closes the logs and releases the run folder's lock (at the end of a run, also on errors)."""
        self.logger.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

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

    Before any expensive work: the settings Fabric needs (an accelerator that exists), the run
    folder (:func:`~pixcon.train.folder.check_run_folder`: writable, not another run's, a
    checkpoint to resume from), the ``init_from`` checkpoint. Then the value range of images deeper
    than 8 bits is measured (:func:`resolve_value_ranges`), and rank 0 takes the run folder's lock.

    Raises:
        ConfigError: An unknown objective, a setting the objective cannot honour, an accelerator
            that is not there, ``init_from`` inside the run folder.
        RunFolderError: The run folder holds another run (without ``train.overwrite``), or another
            process writes it.
        CheckpointError: ``--resume`` into a run of another objective, config, data or world
            size, or with no usable checkpoint; an ``init_from`` checkpoint that does not fit.
        DatasetError, FileNotFoundError, ValueError: Broken or missing data (the message names it).
        OSError: A path that cannot be written (the message names it and its setting).
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
    _check_accelerator(t.accelerator)
    resumed = check_run_folder(cfg, resume)  # read-only: every process fails alike
    init = load_checkpoint(t.init_from) if resumed is None and t.init_from else None
    cfg = resolve_value_ranges(cfg)
    domains = resolve_domains(cfg)
    set_deterministic(t.deterministic)
    fabric = _fabric(cfg)
    fabric.launch()
    lock = _claim(cfg, resume, fabric)
    try:
        return _assemble(cfg, fabric, domains, resumed, init, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def resolve_value_ranges(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``value_range`` measured for every domain whose images are deeper than 8 bits
    and that declares none (:func:`pixcon.data.registry.resolve_value_range`).

    The range is measured over the domain's whole training split (``data.train_split``, labeled
    and unlabeled images alike; pixel values only, no label is read), so every label fraction,
    seed and stage of a recipe on one dataset scales its images the same way, and a
    pseudo-labelling stage, whose label split grows, does not change it. It is kept in the run's
    config (``config.yaml``, every checkpoint): evaluation, prediction and pseudo-labelling scale
    images by it, and ``--resume`` compares it like every other data key. 8-bit data is unchanged
    (the same config object).
    """
    domains = resolve_domains(cfg)
    resolved = [_resolved_range(dom.data) for dom in domains]
    if all(new is dom.data for new, dom in zip(resolved, domains, strict=True)):
        return cfg
    values = to_dict(cfg)
    values["data"] = dataclasses.asdict(resolved[0])
    entries = [dict(e) for e in cfg.multidomain.domains]
    for entry, new, dom in zip(entries, resolved[1:], domains[1:], strict=True):
        if new is not dom.data:
            entry["value_range"] = list(new.value_range or [])
    values["multidomain"] = {**values["multidomain"], "domains": entries}
    return from_dict(values)


def _resolved_range(data: DataConfig) -> DataConfig:
    if data.value_range is not None or not Path(data.root).is_dir():
        return data  # declared, or no dataset there (build_datasets says so, naming the key)
    # the training split's ids first: a missing or broken split file is reported as training reports it
    return resolve_value_range(data, split_ids(data, data.train_split))


def _check_accelerator(accelerator: str) -> None:
    if accelerator in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.accelerator: {accelerator!r} needs a CUDA GPU, and torch finds none "
            "(torch.cuda.is_available() is False); use cpu or auto"
        )


def _fabric(cfg: RunConfig) -> Fabric:
    t = cfg.train
    try:
        return Fabric(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=t.precision,
        )
    except (RuntimeError, ValueError) as err:  # Lightning's messages name the value, not our key
        raise ConfigError(
            f"train.accelerator={t.accelerator!r}, train.devices={t.devices}, train.num_nodes={t.num_nodes}, "
            f"train.strategy={t.strategy!r}, train.precision={t.precision!r}: {err}"
        ) from err


def _claim(cfg: RunConfig, resume: bool, fabric: Fabric) -> RunFolderLock | None:
    """Rank 0 claims the run folder; under DDP its failure is broadcast, so every rank stops."""
    lock: RunFolderLock | None = None
    error: OSError | None = None
    if fabric.is_global_zero:
        try:
            lock = claim_run_folder(cfg, resume)
        except OSError as err:
            if fabric.world_size == 1:
                raise
            error = err
    if fabric.world_size > 1:
        message = fabric.broadcast(str(error) if error is not None else None, src=0)
        if error is not None:
            raise error
        if message is not None:
            raise RunFolderError(message)
    return lock


def _assemble(
    cfg: RunConfig,
    fabric: Fabric,
    domains: list[Domain],
    resumed: tuple[Path, dict[str, Any]] | None,
    init: dict[str, Any] | None,
    lock: RunFolderLock | None,
) -> Run:
    t = cfg.train
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
    if resumed is not None:
        _check_resumed(cfg, resumed, meta, fabric)
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
        DomainRun(dom.name, dom.key, c, ds, objective_dataset(c, ds, objective, where=dom.key))
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
        out.mkdir(parents=True, exist_ok=True)  # rank 0 has it (the lock); other ranks write nothing
        save_config(cfg, out / "config.yaml")
        # The first start writes run.json; each resume adds run_resume_<step>.json beside it.
        name = "run.json" if resumed is None else f"run_resume_{start_step}.json"
        meta["resumed_from_step"] = start_step if resumed is not None else None
        (out / name).write_text(json.dumps(meta, indent=2))
    if objective.uses_segmentation_head:
        for dom_run in runs:
            if dom_run.data.val is not None:
                # Every rank scores a disjoint shard (no padding with repeated images, unlike
                # DistributedSampler); the confusion matrices are summed.
                shard = list(range(fabric.global_rank, len(dom_run.data.val), fabric.world_size))
                val = cast("Dataset[tuple[Tensor, Tensor]]", dom_run.data.val)
                dom_run.val_loader = cast(
                    DataLoader,
                    fabric.setup_dataloaders(
                        DataLoader(val, batch_size=dom_run.data.val_batch_size, sampler=shard),
                        use_distributed_sampler=False,
                    ),
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
        # a resumed run drops the rows logged after its checkpoint (they are logged again)
        logger=MetricsLogger(
            out, enabled=fabric.is_global_zero, resume_step=start_step if resumed is not None else None
        ),
        lock=lock,
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


def _check_resumed(
    cfg: RunConfig, resumed: tuple[Path, dict[str, Any]], meta: dict[str, Any], fabric: Fabric
) -> None:
    """Checks the checkpoint ``--resume`` continues from against this run."""
    path, state = resumed
    saved = str(state["config"].get("train", {}).get("objective", state.get("kind", "?")))
    if saved != cfg.train.objective:
        raise CheckpointError(
            f"--resume: {path} is a run of objective {saved!r} (train.objective), this run trains "
            f"{cfg.train.objective!r}; resume with the same objective, or start a new {cfg.train.objective!r} "
            f"run from it with --init-from {path} and another --out"
        )
    _check_same_config(cfg, state, path)
    _check_same_data(meta, state, path)
    if int(state.get("world_size", 1)) != fabric.world_size:
        raise CheckpointError(
            f"--resume: {path} was written by a run on {state.get('world_size', 1)} process(es), "
            f"this one has {fabric.world_size}; the data order and global batch would change. "
            "Resume with the same --devices/--num-nodes, or start a new run with --init-from"
        )


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

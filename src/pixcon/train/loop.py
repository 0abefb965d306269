"""One training loop for every objective, on Lightning Fabric.

The objective (``train.objective``) is picked from the registry in :mod:`pixcon.objectives`:
``ce``, ``contrast`` and ``joint`` (Zhao et al. and its baselines), the self-supervised ones,
and the other contrastive methods. It says which batches it takes (one augmented view with masks,
or two views with their geometry), over which images (labeled, or the whole training split), and
which head it trains; its own trainable parts are optimised and checkpointed with the model.

Training is step-based. Data order comes from a seeded permutation per epoch
(:class:`EpochSampler`), and the checkpoint carries model, optimizer, scheduler, step and the
torch RNG state, so ``--resume`` continues where the run stopped.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

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
from pixcon.data.base import SegmentationDataset
from pixcon.data.folder import read_ids
from pixcon.data.registry import check_dataset, open_dataset, split_ids
from pixcon.data.transforms import eval_transform, train_transform
from pixcon.data.unlabeled import HiddenMasks
from pixcon.metrics import ConfusionMeter
from pixcon.models import Segmenter, create_segmenter
from pixcon.models.multidomain import MultiDomainSegmenter
from pixcon.models.prototype_head import PrototypeHead, load_head, prototype_head
from pixcon.objectives import OBJECTIVES, DataInfo, Objective, create_objective, objective_heads
from pixcon.train import multidomain as md
from pixcon.train.checkpoint import CheckpointError, latest_good_checkpoint, load_checkpoint, save_checkpoint
from pixcon.train.provenance import run_metadata
from pixcon.train.trainee import Trainee

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss term."""


class EpochSampler(Sampler[int]):
    """Seeded permutation per epoch, sharded over ranks, starting at a given position (for resume).

    Epoch ``e`` uses ``randperm(n)`` from a generator seeded with ``seed * 100_003 + e``, so the
    order depends only on (seed, epoch), not on how often the run was interrupted. Under DDP every
    rank draws the same permutation, drops the last ``n % world_size`` indices and takes every
    ``world_size``-th one from position ``rank`` (like ``DistributedSampler(drop_last=True)``):
    disjoint shards of equal length.
    """

    def __init__(
        self, n: int, seed: int, epoch: int = 0, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world_size = rank, world_size

    def indices(self) -> list[int]:
        """This rank's indices of the epoch, from ``start``."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        per_rank = self.n // self.world_size
        perm = torch.randperm(self.n, generator=g)[: per_rank * self.world_size]
        return perm[self.rank :: self.world_size][self.start :].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.n // self.world_size - self.start


@dataclass
class Datasets:
    train: SegmentationDataset  # the labeled images, with training augmentation
    val: SegmentationDataset | None
    unlabeled_ids: list[str]  # the rest of the training split (for self-supervised objectives)
    num_classes: int
    ignore_index: int
    class_names: list[str]
    in_channels: int
    val_batch_size: int  # data.eval_batch_size, or 1 for native-size images of different sizes


def _augmentation(d: DataConfig) -> Any:
    """The joint training augmentation of the ``data`` section."""
    return train_transform(d.image_size, scale=(d.scale_min, 1.0), hflip=d.hflip, color_jitter=d.color_jitter)


def build_datasets(cfg: RunConfig, check: bool = True, where: str = "data") -> Datasets:
    """The labeled training set (``data.labeled_split`` or the whole train split) and validation set.

    With ``check`` (the default) the labeled and validation images and masks are checked first
    (:func:`~pixcon.data.registry.check_dataset`), and a broken dataset is refused with every
    problem listed, as ``pixcon data check`` prints them. ``where`` is the config key of the data
    section, for messages (``multidomain.domains[0]`` for an extra domain).
    """
    d = cfg.data
    root = Path(d.root)
    if not root.exists():
        raise FileNotFoundError(
            f"{where}.root: dataset folder {root} not found (run `pixcon data generate` or point {where}.root)"
        )
    pool = split_ids(d, d.train_split)
    if d.labeled_split:
        ids = read_ids(d.labeled_split)
        members = set(pool)
        outside = [i for i in ids if i not in members]
        if outside:
            raise ValueError(
                f"{where}.labeled_split {d.labeled_split}: {len(outside)} ids are not in the "
                f"{d.train_split!r} split, e.g. {outside[:3]}"
            )
    else:
        ids = pool
    try:
        val_ids: list[str] | None = split_ids(d, d.val_split)
    except FileNotFoundError:
        val_ids = None
        log.info("no %r split in %s: training without validation", d.val_split, root)
    val_batch_size = d.eval_batch_size
    if check:
        check_dataset(d, ids=ids).raise_if_errors()
        if val_ids:
            report = check_dataset(d, ids=val_ids)
            report.raise_if_errors()
            if d.eval_size is None and not report.same_size:
                val_batch_size = 1
                log.info("validation images differ in size: evaluating one at a time (or set data.eval_size)")
    train = open_dataset(d, ids=ids, transform=_augmentation(d))
    plain = dataclasses.replace(d, pseudo_masks=None)  # validation always scores the true masks
    val = open_dataset(plain, ids=val_ids, transform=eval_transform(d.eval_size)) if val_ids else None
    labeled = set(ids)
    return Datasets(
        train,
        val,
        [i for i in pool if i not in labeled],
        train.num_classes,
        train.ignore_index,
        list(train.class_names),
        train.in_channels,
        val_batch_size,
    )


def objective_dataset(cfg: RunConfig, data: Datasets, objective: Objective, check: bool = True) -> Any:
    """The training images in the form ``objective`` takes them.

    One view over the labeled images is ``data.train``. ``images == "all"`` adds the unlabeled
    rest of the training split, their masks hidden (:class:`~pixcon.data.unlabeled.HiddenMasks`);
    ``views == 2`` gives :class:`~pixcon.data.views.TwoViews` batches.
    """
    if objective.views == 1 and objective.images == "labeled":
        return data.train
    d = cfg.data
    extra = data.unlabeled_ids if objective.images == "all" else []
    if check and extra:
        check_dataset(d, ids=extra).raise_if_errors()
    ids = list(data.train.ids) + list(extra)
    if objective.views == 1:
        return HiddenMasks(open_dataset(d, ids=ids, transform=_augmentation(d)), hidden=extra)
    from pixcon.data.views import TwoViews

    base = HiddenMasks(open_dataset(d, ids=ids, transform=None), hidden=extra)
    return TwoViews(
        base,
        size=d.image_size,
        scale=(cfg.ssl.view_scale_min, 1.0),
        hflip=d.hflip,
        color_jitter=d.color_jitter,
        min_overlap=cfg.ssl.min_overlap,
    )


def build_model(
    cfg: RunConfig, num_classes: int, in_channels: int | None = None, pretrained: bool = True
) -> Segmenter:
    """The run's segmenter. ``pretrained=False`` skips ``model.encoder_weights`` (for a network
    whose weights come from a checkpoint next: the weights file need not exist any more)."""
    m = cfg.model
    channels = m.in_channels or in_channels or 3
    if m.in_channels is not None and in_channels is not None and m.in_channels != in_channels:
        raise ValueError(
            f"model.in_channels={m.in_channels} but the images of {cfg.data.root} have {in_channels} bands "
            "(set model.in_channels to null to follow the data)"
        )
    return create_segmenter(
        arch=m.arch,
        encoder=m.encoder,
        num_classes=num_classes,
        in_channels=channels,
        proj_dim=m.proj_dim,
        proj_layers=m.proj_layers,
        encoder_weights=m.encoder_weights if pretrained else None,
    )


def build_optimizer(
    cfg: RunConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    o, steps = cfg.optim, cfg.train.steps
    # No weight decay on norms and biases.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0
        )
    else:
        opt = torch.optim.AdamW(groups, lr=o.lr)

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, steps - o.warmup_steps))
        if o.schedule == "poly":
            return (1.0 - progress) ** o.poly_power
        if o.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def class_weights(dataset: SegmentationDataset, num_classes: int, ignore_index: int) -> Tensor:
    """Inverse-frequency CE weights from the labeled masks, normalised to mean 1 over present classes."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(len(dataset)):
        mask = dataset.mask(i)  # (H, W)
        counts += torch.bincount(mask[mask != ignore_index], minlength=num_classes)[:num_classes].double()
    weights = torch.where(counts > 0, counts.sum() / counts.clamp(min=1), 0.0)
    present = counts > 0
    return (weights / weights[present].mean()).float()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    ignore_index: int,
    class_names: list[str] | None = None,
    fabric: Fabric | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Dataset-level scores from one confusion matrix (summed across ranks under DDP)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    meter = ConfusionMeter(num_classes, ignore_index=ignore_index, device=fabric.device if fabric else None)
    # Pass the unwrapped module under DDP: a DDP forward broadcasts buffers, a collective that a
    # rank with no validation images would never join.
    for images, masks in tqdm(loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True):
        # A fresh context per batch: a precision plugin may return a single-use context manager.
        with fabric.autocast() if fabric is not None else contextlib.nullcontext():
            logits = model(images)
        meter.update(logits.float(), masks)
    if fabric is not None and fabric.world_size > 1:
        meter.cm = fabric.all_reduce(meter.cm, reduce_op="sum")
    model.train(was_training)
    return meter.compute(class_names=class_names)


class _Logger:
    """CSV and TensorBoard scalars in the run directory (rank 0 only)."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.csv_path = out_dir / "metrics.csv"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "key", "value"])
            for k, v in values.items():
                w.writerow([step, k, v])
                if self.writer is not None:
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def stream_seed(seed: int, stream: int) -> int:
    """The data-order seed of stream ``stream``: ``seed`` itself for stream 0 (a single-domain run,
    or the primary domain of a multi-domain one), an independent one for the other domains."""
    if stream == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, stream]).generate_state(1)[0])  # any int seed


def _infinite_batches(
    dataset: Any, cfg: RunConfig, fabric: Fabric, start_step: int, stream: int = 0, where: str = "data"
) -> Iterator[Any]:
    """Batches forever, epoch after epoch, resumable at any step (drop_last keeps shapes fixed).

    ``stream`` numbers the domains of a multi-domain run: each cycles through its own images in its
    own seeded order (:func:`stream_seed`), one batch per step. ``where`` names the data section
    in messages.
    """
    bs, world = cfg.data.batch_size, fabric.world_size
    if len(dataset) // world < bs:
        raise ValueError(
            f"{where}.batch_size={bs} per rank times {world} rank(s) is larger than the {len(dataset)} "
            f"training images of objective {cfg.train.objective!r}; lower {where}.batch_size"
        )
    seed = stream_seed(cfg.train.seed, stream)
    per_epoch = len(dataset) // world // bs
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        sampler = EpochSampler(
            len(dataset),
            seed,
            epoch=epoch,
            start=offset * bs,
            rank=fabric.global_rank,
            world_size=world,
        )
        # Its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG
        # each time an iterator starts, and a run resumed mid-epoch would start one more than the
        # uninterrupted run, shifting every later augmentation.
        seeds = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919 * fabric.global_rank)
        loader = DataLoader(
            dataset,
            batch_size=bs,
            sampler=sampler,
            drop_last=True,
            num_workers=cfg.data.num_workers,
            generator=seeds,
        )
        for batch in loader:
            if cfg.train.channels_last and isinstance(batch, (tuple, list)):
                batch = [batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]]
            yield fabric.to_device(batch)
        epoch, offset = epoch + 1, 0


def run_training(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train according to ``cfg``; returns the final validation scores (empty for ``contrast``).

    Writes to ``train.out_dir``: ``config.yaml``, ``run.json`` (provenance), ``last.pt`` (and
    ``previous.pt``), ``metrics.csv``, ``tensorboard/`` and ``final.json``.

    With ``train.objective: multidomain`` every domain of :func:`~pixcon.config.resolve_domains`
    is trained at once (see :mod:`pixcon.train.multidomain`): one batch per domain per step,
    validation per domain (``val/<name>/miou``; the top-level scores are the primary domain's).
    """
    t = cfg.train
    out = Path(t.out_dir)
    if t.objective not in OBJECTIVES:
        raise ConfigError(
            f"train.objective: unknown objective {t.objective!r}; available: {sorted(OBJECTIVES)}"
        )
    md.check_setup(cfg)
    multi = t.objective == md.OBJECTIVE
    domains = resolve_domains(cfg) if multi else []
    _set_deterministic(t.deterministic)
    fabric = Fabric(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
    )
    fabric.launch()
    fabric.seed_everything(t.seed, verbose=False)
    data = build_datasets(cfg)
    # Every domain's datasets, the primary first (just [data] for a single-domain run).
    all_data = [data] + [build_datasets(_domain_config(cfg, dom), where=dom.key) for dom in domains[1:]]
    if multi:
        _check_same_bands(domains, all_data)
    model: nn.Module = build_model(cfg, data.num_classes, data.in_channels)
    ids = {"labeled": data.train.ids, **({"val": data.val.ids} if data.val is not None else {})}
    files = [cfg.data.labeled_split] if cfg.data.labeled_split else []
    for dom, ds in zip(domains[1:], all_data[1:], strict=True):
        ids[f"labeled:{dom.name}"] = ds.train.ids
        if ds.val is not None:
            ids[f"val:{dom.name}"] = ds.val.ids
        files += [dom.data.labeled_split] if dom.data.labeled_split else []
    meta = run_metadata(to_dict(cfg), ids, files=files)

    start_step, resumed = 0, None
    last, previous = out / "last.pt", out / "previous.pt"
    if resume:
        found = latest_good_checkpoint([last, previous])
        if found is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", out)
        else:
            resumed = found[1]
            _check_same_config(cfg, resumed, found[0])
            _check_same_data(meta, resumed, found[0])
            if int(resumed.get("world_size", 1)) != fabric.world_size:
                raise CheckpointError(
                    f"--resume: {found[0]} was written by a run on {resumed.get('world_size', 1)} process(es), "
                    f"this one has {fabric.world_size}; the data order and global batch would change. "
                    "Resume with the same --devices/--num-nodes, or start a new run with --init-from"
                )
    if t.head_init == "prototypes" and not objective_heads(t.objective)[0]:
        raise ConfigError(
            f"train.head_init: 'prototypes' initialises the segmentation head, which objective "
            f"{t.objective!r} does not train"
        )
    init = None
    if resumed is None and t.init_from:
        init = load_checkpoint(t.init_from)
    model = md.prepare_model(
        model,
        cfg,
        init,
        t.init_from,
        [ds.num_classes for ds in all_data] if multi else None,
        names=[dom.name for dom in domains],
    )
    if init is not None:
        log.info("initialised from %s (step %d, %s)", t.init_from, init["step"], init.get("kind", "?"))
        if t.head_init == "prototypes":
            # a projection head re-initialised on loading (another proj_dim) holds no pretraining
            kind = str(init.get("kind", "")) if _projection_loaded(model, init) else ""
            imprint_head(model, cfg, data, fabric.device, pretrained_by=kind)

    infos = []
    for ds in all_data:
        weights = None
        if cfg.loss.class_weights == "balanced" and objective_heads(t.objective)[0]:
            # CE weights read every labeled mask: only for objectives with a CE term
            weights = class_weights(ds.train, ds.num_classes, ds.ignore_index)
        infos.append(DataInfo(ds.num_classes, ds.ignore_index, ds.in_channels, weights))
    info = infos[0]
    if multi:
        info = dataclasses.replace(info, domains=tuple(infos), domain_names=tuple(d.name for d in domains))
    objective = create_objective(t.objective, cfg, model, info)
    train_sets = [objective_dataset(cfg, data, objective)] + [
        objective_dataset(_domain_config(cfg, dom), ds, objective)
        for dom, ds in zip(domains[1:], all_data[1:], strict=True)
    ]
    _freeze_unused(model, objective)
    trainee = Trainee(model, objective, autocast=fabric.autocast if "mixed" in str(t.precision) else None)
    opt, sched = build_optimizer(cfg, trainee)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        objective.load_state_dict(resumed.get("objective", {}))
        opt.load_state_dict(resumed["optimizer"])
        sched.load_state_dict(resumed["scheduler"])
        start_step = int(resumed["step"])
        torch.set_rng_state(resumed["rng"]["torch"])
        log.info("resumed from %s at step %d", last, start_step)
    if fabric.world_size > 1 and fabric.global_rank > 0:
        # Other ranks get their own augmentation and pixel-sampling streams (rank 0 keeps the
        # single-process stream; DDP copies rank 0's initial weights to every rank). On resume
        # they restart from (seed, rank, step), so only rank 0's stream is bit-exact across a resume.
        torch.manual_seed(t.seed + 1_000_003 * fabric.global_rank + start_step)
    raw_model = model
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.compile:
        # In place (nn.Module.compile), so state_dict keys and checkpoints stay the same.
        base = _segmenter(model)
        base.net.encoder.compile()
        base.net.decoder.compile()
    wrapped, opt = fabric.setup(trainee, opt)  # its forward runs under the strategy (autocast, DDP)

    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        # The first start writes run.json; each resume adds run_resume_<step>.json beside it.
        name = "run.json" if resumed is None else f"run_resume_{start_step}.json"
        meta["resumed_from_step"] = start_step if resumed is not None else None
        (out / name).write_text(json.dumps(meta, indent=2))
    logger = _Logger(out, enabled=fabric.is_global_zero)
    # (domain index, name, loader, datasets) of every domain with a validation split
    val_loaders: list[tuple[int, str, DataLoader, Datasets]] = []
    for d, ds in enumerate(all_data):
        if ds.val is not None and objective.uses_segmentation_head:
            # Every rank scores a disjoint shard (no padding with repeated images, unlike
            # DistributedSampler); the confusion matrices are summed.
            shard = list(range(fabric.global_rank, len(ds.val), fabric.world_size))
            loader = fabric.setup_dataloaders(
                DataLoader(ds.val, batch_size=ds.val_batch_size, sampler=shard),
                use_distributed_sampler=False,
            )
            val_loaders.append((d, domains[d].name if multi else "", loader, ds))

    metrics: dict[str, Any] = resumed.get("metrics", {}) if resumed else {}
    if multi:
        streams = [
            _infinite_batches(
                train_set, _domain_config(cfg, dom), fabric, start_step, stream=d, where=dom.key
            )
            for d, (dom, train_set) in enumerate(zip(domains, train_sets, strict=True))
        ]
        batches: Iterator[Any] = zip(*streams, strict=False)  # endless: one batch of every domain per step
    else:
        batches = _infinite_batches(train_sets[0], cfg, fabric, start_step)
    wrapped.train()
    progress = _progress(t.steps, start_step, enabled=t.progress and fabric.is_global_zero, desc=t.objective)
    tic = time.perf_counter()

    def _state(step: int) -> dict[str, Any]:
        state = {
            "kind": t.objective,
            "model": raw_model.state_dict(),
            "objective": objective.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "config": to_dict(cfg),
            "metrics": metrics,
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "class_names": data.class_names,
            "ignore_index": data.ignore_index,
            "rng": {"torch": torch.get_rng_state()},
            "meta": meta,
            "world_size": fabric.world_size,
        }
        if multi:
            state["domains"] = [
                md.domain_record(
                    dom.name, dom.data, ds.num_classes, ds.class_names, ds.ignore_index, ds.in_channels
                )
                for dom, ds in zip(domains, all_data, strict=True)
            ]
        return state

    def checkpoint(step: int) -> None:
        if fabric.is_global_zero:
            save_checkpoint(_state(step), last, backup=previous)

    def validate(step: int) -> dict[str, Any]:
        scores: dict[str, dict[str, Any]] = {}
        for d, name, loader, ds in val_loaders:
            net = md.DomainView(raw_model, d) if multi else raw_model  # type: ignore[arg-type]
            scores[name] = evaluate(net, loader, ds.num_classes, ds.ignore_index, ds.class_names, fabric)
        if not multi:
            result = scores[""]
            values = {f"val/{k}": v for k, v in result.items() if isinstance(v, float)}
        else:
            primary = domains[0].name
            result = dict(scores.get(primary, {}))
            mious = [s["miou"] for s in scores.values() if s.get("miou") is not None]
            result["domains"] = scores
            result["mean_miou"] = sum(mious) / len(mious) if mious else None
            values = {f"val/{k}": v for k, v in result.items() if isinstance(v, float)}
            for name, sc in scores.items():
                values.update({f"val/{name}/{k}": v for k, v in sc.items() if isinstance(v, float)})
        result["step"] = step
        logger.log(step, values)
        log.info("step %d: val mIoU %s", step, _fmt_miou(result.get("miou")))
        return result

    for step in range(start_step, t.steps):
        terms = wrapped(next(batches))
        loss = sum(terms.values())
        bad = [k for k, v in terms.items() if not torch.isfinite(v.detach())]
        any_bad = bool(bad)
        if fabric.world_size > 1:  # every rank must stop (or skip) together
            flag = fabric.all_reduce(torch.tensor(float(any_bad), device=fabric.device), reduce_op="sum")
            any_bad = float(flag) > 0
        skipped = False
        if any_bad:
            values = [float(terms[k].detach()) for k in bad]
            where = f"term(s) {bad} = {values}" if bad else "on another rank"
            msg = f"non-finite loss at step {step}: {where}"
            if not t.skip_nonfinite:
                # The weights from before this step, in their own file: last.pt and previous.pt
                # stay the last good checkpoints, however often a resumed run hits the NaN again.
                bad_path = out / "nonfinite.pt"
                if fabric.is_global_zero:
                    save_checkpoint(_state(step), bad_path)
                logger.close()
                raise NonFiniteLossError(
                    f"{msg}; the weights before it are saved to {bad_path} (last good checkpoint: {last})"
                )
            log.warning("%s; skipping the step (train.skip_nonfinite)", msg)
            opt.zero_grad(set_to_none=True)
            skipped = True
        else:
            opt.zero_grad(set_to_none=True)
            fabric.backward(loss)
            opt.step()
        sched.step()
        done = step + 1
        if not skipped and (done % t.log_every == 0 or done == t.steps):
            detached = {k: v.detach() for k, v in terms.items()}
            if fabric.world_size > 1:  # the mean over ranks is the global-batch value (see the loss)
                detached = {k: fabric.all_reduce(v, reduce_op="mean") for k, v in detached.items()}
            values = {f"train/{k}": float(v) for k, v in detached.items()}
            values["train/lr"] = sched.get_last_lr()[0]
            values["train/steps_per_s"] = (done - start_step) / (time.perf_counter() - tic)
            logger.log(done, values)
            progress.set_postfix(
                {
                    k.split("/")[1]: f"{v:.3f}"
                    for k, v in values.items()
                    if k.startswith("train/") and k != "train/lr"
                },
                refresh=False,
            )
        if val_loaders and (done % t.eval_every == 0 or done == t.steps):
            metrics = validate(done)
        if done % (t.checkpoint_every or t.eval_every) == 0 or done == t.steps:
            checkpoint(done)
        progress.update(1)
    progress.close()
    logger.close()
    if fabric.is_global_zero:
        (out / "final.json").write_text(json.dumps({"step": t.steps, "val": metrics}, indent=2))
    return metrics


def _fmt_miou(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _domain_config(cfg: RunConfig, domain: Domain) -> RunConfig:
    """``cfg`` with ``domain``'s data section (the other sections are shared)."""
    return dataclasses.replace(cfg, data=domain.data)


def _check_same_bands(domains: list[Domain], all_data: list[Datasets]) -> None:
    first = all_data[0].in_channels
    for dom, ds in zip(domains[1:], all_data[1:], strict=True):
        if ds.in_channels != first:
            raise ConfigError(
                f"{dom.key} (domain {dom.name!r}, {dom.data.root}) has {ds.in_channels}-band images but the "
                f"primary domain {domains[0].name!r} ({domains[0].data.root}) has {first}; the domains share "
                "their convolutions, so every one needs the same number of bands"
            )


def imprint_head(
    model: nn.Module, cfg: RunConfig, data: Datasets, device: torch.device, pretrained_by: str
) -> PrototypeHead:
    """``train.head_init: prototypes``: writes the nearest-class-mean head of the labeled images'
    features (no augmentation; see :mod:`pixcon.models.prototype_head`) into ``model``'s
    segmentation head and returns it. ``pretrained_by`` is the checkpoint's objective: ``auto``
    uses its embedding only if it trained the projection head."""
    tic = time.perf_counter()
    plain = open_dataset(cfg.data, ids=data.train.ids, transform=eval_transform(cfg.data.eval_size))
    # labeled images may differ in size: batches are split into groups of one size
    loader = DataLoader(plain, batch_size=data.val_batch_size, shuffle=False, collate_fn=_same_size_groups)
    base = _segmenter(model).to(device)
    batches = _OnDevice(loader, device)
    trained = pretrained_by in OBJECTIVES and objective_heads(pretrained_by)[1]
    head = prototype_head(
        base,
        batches,
        data.num_classes,
        data.ignore_index,
        cfg.train.prototype_space,
        seed=cfg.train.seed,
        projection_trained=trained,
    )
    load_head(base, head)
    log.info(
        "head_init prototypes (%s space, %d of %d classes labeled, scale %.3g): labeled-pixel CE %.3f, "
        "accuracy %.3f (%.1f s)",
        head.space,
        int((head.counts > 0).sum()),
        data.num_classes,
        head.scale,
        head.train_ce,
        head.train_acc,
        time.perf_counter() - tic,
    )
    return head


def _projection_loaded(model: nn.Module, init: dict[str, Any]) -> bool:
    """Whether ``init``'s projection head was loaded into ``model`` (every key, same shapes)."""
    own = {k: v for k, v in _segmenter(model).state_dict().items() if k.startswith("projection.")}
    theirs = init["model"]
    return all(k in theirs and theirs[k].shape == v.shape for k, v in own.items())


def _same_size_groups(items: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Collate (image, mask) pairs into stacked groups of consecutive images of one size."""
    groups: list[list[tuple[Tensor, Tensor]]] = []
    for item in items:
        if groups and groups[-1][0][0].shape == item[0].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [(torch.stack([i for i, _ in g]), torch.stack([m for _, m in g])) for g in groups]


@dataclass
class _OnDevice:
    """A loader of :func:`_same_size_groups` batches, moved to ``device`` (iterable more than once)."""

    loader: DataLoader
    device: torch.device

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for groups in self.loader:
            for images, masks in groups:
                yield images.to(self.device), masks.to(self.device)


def _segmenter(model: nn.Module) -> Segmenter:
    """The plain segmenter of a run's network (the shared one of a multi-domain network)."""
    return model.segmenter if isinstance(model, MultiDomainSegmenter) else model  # type: ignore[return-value]


def _freeze_unused(model: nn.Module, objective: Objective) -> None:
    """Parameters the objective never uses stay frozen: the optimizer skips them and DDP does not
    wait for their gradients (it would otherwise fail with "parameters that were not used")."""
    base = _segmenter(model)
    if not objective.uses_projection_head:
        base.projection.requires_grad_(False)
    if not objective.uses_segmentation_head:
        heads = model.heads if isinstance(model, MultiDomainSegmenter) else base.net.segmentation_head
        heads.requires_grad_(False)


def _progress(total: int, start: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc=desc, leave=False, dynamic_ncols=True)


def _load_model_weights(model: Segmenter, state: dict[str, Any], path: str | Path) -> None:
    """Initialise from another run's checkpoint; the segmentation head is kept only if its shape fits."""
    weights = dict(state["model"])
    own = model.state_dict()
    skipped = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    for k in skipped:
        del weights[k]
    result = model.load_state_dict(weights, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k not in skipped]  # skipped: re-initialised on purpose
    if unexpected or missing:
        raise CheckpointError(
            f"init_from {path}: model mismatch (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "was it trained with the same model.arch and model.encoder?"
        )
    if skipped:
        log.info("init_from %s: re-initialised %s (shape differs)", path, skipped)


def _set_deterministic(on: bool) -> None:
    """Deterministic kernels (CPU runs are then bit-reproducible); warn-only where CUDA has none."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.benchmark = not on


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


def load_model(path: str | Path, domain: str | None = None) -> tuple[Segmenter, dict[str, Any]]:
    """Model and checkpoint dict from a pixcon checkpoint (for evaluation and prediction).

    A multi-domain checkpoint gives one domain (``domain``, by name; the primary by default) as a
    plain segmenter, and a checkpoint dict describing that domain (its classes, ignore index and
    data section; see :func:`pixcon.train.multidomain.domain_state`).

    Raises:
        ValueError: ``domain`` is not a domain of the checkpoint (the message lists them), or is
            given for a single-domain checkpoint.
    """
    state = load_checkpoint(path)
    if md.is_multidomain(state):
        return md.model_from_checkpoint(state, path, domain)
    md.domain_index(state, domain, path)  # refuses a domain name for a single-domain checkpoint
    cfg = from_dict(state["config"])
    model = build_model(cfg, int(state["num_classes"]), state.get("in_channels"), pretrained=False)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state

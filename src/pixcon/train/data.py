"""Data plumbing of a training run: the datasets of each domain, in the form its objective takes
them, as endless, seeded, resumable streams of batches.

Training is step-based. Data order comes from a seeded permutation per epoch
(:class:`EpochSampler`) that depends only on (seed, epoch), so a run resumed at any step sees the
batches an uninterrupted run would. Each domain of a run has its own stream (:func:`stream_seed`).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from pixcon.config import ConfigError, DataConfig, RunConfig
from pixcon.data.base import SegmentationDataset
from pixcon.data.copies import DistortedCopies
from pixcon.data.folder import read_ids
from pixcon.data.registry import check_dataset, open_dataset, split_ids
from pixcon.data.transforms import eval_transform, train_transform
from pixcon.data.unlabeled import HiddenMasks
from pixcon.data.views import TwoViews
from pixcon.objectives import DomainObjectives

log = logging.getLogger(__name__)

DEFAULT_VAL_SPLIT = DataConfig.val_split  # missing: a warning; any other name missing: an error


class EpochSampler(Sampler[int]):
    """Seeded permutation per epoch, sharded over ranks, starting at a given position (for resume).

    Epoch ``e`` uses ``randperm(n * repeats)`` from a generator seeded with ``seed * 100_003 + e``,
    taken modulo ``n``, so the order depends only on (seed, epoch), not on how often the run was
    interrupted. With ``repeats == 1`` (the usual case) that is a permutation of the ``n`` images;
    with ``repeats = r > 1`` it is a uniformly shuffled list holding every image ``r`` times (the id
    list repeated, as semi-supervised segmentation code such as UniMatch (Yang et al., CVPR 2023)
    fills batches from a few labeled images; every occurrence gets its own augmentation). Under DDP
    every rank draws the same order, drops the last ``n * repeats % world_size`` entries and takes
    every ``world_size``-th one from position ``rank`` (like ``DistributedSampler(drop_last=True)``):
    shards of equal length, disjoint when ``repeats == 1``.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeats: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world_size, self.repeats = rank, world_size, repeats

    def indices(self) -> list[int]:
        """This rank's indices of the epoch, from ``start``."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        total = self.n * self.repeats
        per_rank = total // self.world_size
        kept = torch.randperm(total, generator=g)[: per_rank * self.world_size]  # (per_rank * world,)
        order = kept % self.n  # (per_rank * world,) image indices, each at most `repeats` times
        return order[self.rank :: self.world_size][self.start :].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.n * self.repeats // self.world_size - self.start


def epoch_repeats(n: int, batch_size: int, world_size: int) -> int:
    """How often an epoch lists each of ``n`` training images: 1 when they fill at least one batch
    of ``batch_size`` on each of ``world_size`` ranks, otherwise the fewest repeats that do
    (``ceil(batch_size * world_size / n)``)."""
    if n < 1:
        raise ValueError("no training images")
    if n // world_size >= batch_size:
        return 1
    return -(-batch_size * world_size // n)


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


def _augmentation(d: DataConfig, color_jitter: float | None = None) -> Any:
    """The joint training augmentation of the ``data`` section (``color_jitter``: another colour
    jitter strength than ``data.color_jitter``, as a distorted copy takes)."""
    jitter = d.color_jitter if color_jitter is None else color_jitter
    return train_transform(d.image_size, scale=(d.scale_min, 1.0), hflip=d.hflip, color_jitter=jitter)


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
    if not root.is_dir():
        raise NotADirectoryError(f"{where}.root: {root} is a file, not a dataset folder")
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
    except FileNotFoundError as err:
        if d.val_split != DEFAULT_VAL_SPLIT:
            # a name someone chose and mistyped: validation must not silently switch off
            raise FileNotFoundError(
                f"{where}.val_split {d.val_split!r}: no such split in {root} ({err}); name an existing "
                f"split, or leave {where}.val_split at {DEFAULT_VAL_SPLIT!r} (training runs without "
                "validation when that one is missing)"
            ) from err
        val_ids = None
        log.warning("no %r split in %s: training without validation (%s)", d.val_split, root, err)
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


def objective_dataset(
    cfg: RunConfig, data: Datasets, objective: DomainObjectives, check: bool = True, where: str = "data"
) -> Any:
    """The training images in the form ``objective`` takes them.

    One view over the labeled images is ``data.train``. ``images == "all"`` adds the unlabeled
    rest of the training split, their masks hidden (:class:`~pixcon.data.unlabeled.HiddenMasks`);
    ``views == 2`` gives :class:`~pixcon.data.views.TwoViews` batches. ``loss.partner: copy`` gives
    an objective that pairs images (``partners``) :class:`~pixcon.data.copies.DistortedCopies`.

    ``where`` names the data section in messages (``multidomain.domains[1]`` for an extra domain).

    Raises:
        ConfigError: ``loss.partner: copy`` with an odd ``data.batch_size``.
    """
    d = cfg.data
    if objective.partners and cfg.loss.partner == "copy":
        if d.batch_size % 2:
            raise ConfigError(
                f"loss.partner: 'copy' fills each batch of {where}.batch_size crops with half as many "
                f"images and a distorted copy of each: {where}.batch_size must be even, got {d.batch_size}"
            )
        if objective.images != "labeled" or objective.views != 1:  # no such objective is registered
            raise ValueError(
                f"objective {objective.name!r}: loss.partner 'copy' needs labeled (images, masks) batches"
            )
        distort = _augmentation(d, color_jitter=cfg.loss.copy_jitter)
        return DistortedCopies(open_dataset(d, ids=data.train.ids, transform=None), _augmentation(d), distort)
    if objective.views == 1 and objective.images == "labeled":
        return data.train
    extra = data.unlabeled_ids if objective.images == "all" else []
    if check and extra:
        check_dataset(d, ids=extra).raise_if_errors()
    ids = list(data.train.ids) + list(extra)
    if objective.views == 1:
        return HiddenMasks(open_dataset(d, ids=ids, transform=_augmentation(d)), hidden=extra)
    base = HiddenMasks(open_dataset(d, ids=ids, transform=None), hidden=extra)
    return TwoViews(
        base,
        size=d.image_size,
        scale=(cfg.ssl.view_scale_min, 1.0),
        hflip=d.hflip,
        color_jitter=d.color_jitter,
        min_overlap=cfg.ssl.min_overlap,
    )


def class_weights(dataset: SegmentationDataset, num_classes: int, ignore_index: int) -> Tensor:
    """Inverse-frequency CE weights from the labeled masks, normalised to mean 1 over present classes."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(len(dataset)):
        mask = dataset.mask(i)  # (H, W)
        counts += torch.bincount(mask[mask != ignore_index], minlength=num_classes)[:num_classes].double()
    weights = torch.where(counts > 0, counts.sum() / counts.clamp(min=1), 0.0)
    present = counts > 0
    return (weights / weights[present].mean()).float()


def ignore_sigint(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C: the training process finishes its step and stops them
    (a worker that died of SIGINT would fail the step's batch)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stream_seed(seed: int, stream: int) -> int:
    """The data-order seed of stream ``stream``: ``seed`` itself for stream 0 (a single-domain run,
    or the primary domain of a multi-domain one), an independent one for the other domains."""
    if stream == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, stream]).generate_state(1)[0])  # any int seed


def infinite_batches(
    dataset: Any, cfg: RunConfig, fabric: Fabric, start_step: int, stream: int = 0, where: str = "data"
) -> Iterator[Any]:
    """Batches forever, epoch after epoch, resumable at any step (drop_last keeps shapes fixed).

    A training set smaller than one batch per rank is not refused: each epoch lists its images as
    often as it takes to fill one (:func:`epoch_repeats`, :class:`EpochSampler`), and one log line
    says so. A set that fills a batch per rank is sampled as before (one permutation per epoch).

    ``stream`` numbers the domains of a multi-domain run: each cycles through its own images in its
    own seeded order (:func:`stream_seed`), one batch per step. ``where`` names the data section
    in messages.
    """
    # a dataset of image pairs (DistortedCopies) fills a batch of data.batch_size crops with half as many samples
    per_item = getattr(dataset, "crops_per_item", 1)
    bs, world = cfg.data.batch_size // per_item, fabric.world_size
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{where}: no training images for objective {cfg.train.objective!r}")
    repeats = epoch_repeats(n, bs, world)
    if repeats > 1:
        log.info(
            "%s: the %d training images of objective %r are fewer than %s.batch_size=%d%s per rank x %d "
            "rank(s): each epoch lists every image %d times (%d samples, %d batch(es) per rank), each "
            "time with fresh augmentation",
            where,
            n,
            cfg.train.objective,
            where,
            cfg.data.batch_size,
            " / 2 (images and their copies)" if per_item > 1 else "",
            world,
            repeats,
            n * repeats,
            n * repeats // world // bs,
        )
    seed = stream_seed(cfg.train.seed, stream)
    per_epoch = n * repeats // world // bs
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        sampler = EpochSampler(
            len(dataset),
            seed,
            epoch=epoch,
            start=offset * bs,
            rank=fabric.global_rank,
            world_size=world,
            repeats=repeats,
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
            worker_init_fn=ignore_sigint,
        )
        for batch in loader:
            if per_item > 1:  # (bs, 2, ...) -> (2 bs, ...): crops 2k and 2k + 1 are one sample's
                batch = [t.flatten(0, 1) for t in batch]
            if cfg.train.channels_last and isinstance(batch, (tuple, list)):
                batch = [batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]]
            yield fabric.to_device(batch)
        epoch, offset = epoch + 1, 0

"""Dataset condensation for semantic segmentation: pixcon's own extension of DC / DCC.

The published methods condense classification sets. Here a labeled segmentation set (any pixcon
dataset; its labeled split, or its training split) is condensed into K synthetic image/mask
pairs. The masks are those of K real labeled images, chosen at random and kept fixed; the images
start from those same images (or from noise) and are learned so that the segmentation network's
gradients on them match its gradients on real labeled batches.

Per-class losses are pixel losses: ``l_c`` is the mean cross-entropy over the pixels labelled c
(ignored pixels excluded). The matching rules of :mod:`pixcon.condense.matching` then read as in
the papers: ``dc`` matches the gradient of each class's pixel loss separately, ``dcc`` the
gradient of the class-balanced loss over all classes, ``(1/C) sum_c l_c``. A step matches the
classes present both in the real batch and in the synthetic masks. With DSA, the Siamese draw
moves the masks with the images (nearest neighbour; pixels from outside the image are ignored).

The network is a :class:`pixcon.models.Segmenter` (the one ``pixcon train`` trains). Its batch
norm statistics are set from a real batch and frozen before every matching step (as the DC code
does for BN networks); between steps it trains on the synthetic set in train mode. The images
stay in [0, 1] (they are clipped after every update) and are written as 8-bit PNGs.

The output folder is a pixcon folder dataset (``images/``, ``masks/``, ``classes.yaml``,
``splits/train.txt`` with the K condensed ids) that ``pixcon train --data-root OUT`` trains on;
the source's ``val`` and ``test`` splits are copied in too (unless turned off), so validation and
``pixcon evaluate --split test`` score real images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import Tensor, nn

from pixcon.condense.common import (
    CHECKPOINT_NAME,
    GRID_NAME,
    History,
    MatchingConfig,
    derive_seed,
    freeze_batchnorm,
    generator,
    global_rng,
    progress_bar,
    resume_synthetic,
    save_state,
    seeded,
    to_jsonable,
    write_grid,
    write_json,
)
from pixcon.condense.dsa import apply_dsa, apply_dsa_mask, sample_dsa
from pixcon.condense.matching import matched_parameters, matching_loss, matching_rule
from pixcon.condense.options import check_strategy
from pixcon.data.folder import read_ids, write_ids
from pixcon.data.registry import open_dataset, split_ids
from pixcon.data.transforms import eval_transform
from pixcon.models import create_segmenter

if TYPE_CHECKING:
    from pixcon.config import DataConfig

log = logging.getLogger(__name__)

TASK = "segmentation"
CONDENSED_PREFIX = "condensed_"
EVAL_SPLITS: tuple[str, ...] = ("val", "test")
_STREAM_SELECT = 2**40  # which labeled images lend their masks
_STREAM_NOISE = 2**40 + 1
_STREAM_GLOBAL = 2  # (seed, k, _STREAM_GLOBAL): torch's global generator during iteration k
_STREAM_NET = 1  # (seed, k, _STREAM_NET): iteration k's network


@dataclass(frozen=True)
class SegmentationConfig:
    """Settings of one segmentation condensation.

    Attributes:
        num_images: K, condensed image/mask pairs.
        batch_real: Real labeled images per matching step (and per batch-norm statistics batch).
        batch_train: Synthetic images per network-training step.
        arch: Segmenter architecture (:data:`pixcon.models.ARCHITECTURES`).
        encoder: Segmenter encoder (an smp name or ``tu-<timm model>``); weights start random.
        copy_eval_splits: Copy the source's val and test splits into the output folder.
        matching: The loop and optimiser; ``net_steps`` counts SGD steps here, not epochs.
    """

    num_images: int = 10
    batch_real: int = 8
    batch_train: int = 8
    arch: str = "deeplabv3plus"
    encoder: str = "resnet18"
    copy_eval_splits: bool = True
    # lr_images 1e-4: see pixcon.condense.cli.SEGMENTATION_LR_IMAGES (gradients ~10^3 x the ConvNet's)
    matching: MatchingConfig = field(
        default_factory=lambda: MatchingConfig(iterations=200, net_steps=5, lr_images=1e-4)
    )

    def __post_init__(self) -> None:
        for name in ("num_images", "batch_real", "batch_train"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class LabeledSet:
    """The labeled images of a segmentation dataset, in memory at one size.

    Attributes:
        ids: Sample ids, (N,).
        images: (N, C, H, W) float in [0, 1].
        masks: (N, H, W) int64 class ids (``ignore_index`` where unlabeled).
        class_names: One name per class.
        palette: One (r, g, b) per class, or None.
        ignore_index: The mask value that is no class.
    """

    ids: list[str]
    images: Tensor
    masks: Tensor
    class_names: list[str]
    palette: list[tuple[int, ...]] | None
    ignore_index: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_labeled_set(
    data: DataConfig, labeled_split: str | Path | None = None, image_size: int | None = None
) -> LabeledSet:
    """Reads a dataset's labeled images into memory.

    Args:
        data: The dataset (``format``, ``root`` and the format's options).
        labeled_split: File of labeled ids (``pixcon split``); None: the whole training split
            (``data.train_split``).
        image_size: Resize every pair to (size, size) (masks: nearest); None keeps the native
            size, which must then be the same for every image.

    Raises:
        ValueError: Images of several sizes without `image_size`, no labeled image, or images
            that are not 3-channel (the message names the dataset).
    """

    ids = read_ids(labeled_split) if labeled_split else split_ids(data, data.train_split)
    if not ids:
        source = labeled_split or f"split {data.train_split!r} of {data.root}"
        raise ValueError(f"no labeled image in {source}")
    dataset = open_dataset(data, ids=ids, transform=eval_transform(image_size) if image_size else None)
    if dataset.in_channels != 3:
        raise ValueError(
            f"{data.format} dataset {data.root} has {dataset.in_channels}-band images; condensation "
            "writes RGB PNGs, so it needs 3-band images"
        )
    pairs = [dataset[i] for i in range(len(dataset))]
    sizes = sorted({tuple(img.shape[-2:]) for img, _ in pairs})
    if len(sizes) > 1:
        raise ValueError(
            f"the labeled images of {data.root} have {len(sizes)} sizes (e.g. {sizes[:3]}); "
            "give image_size (--image-size) to resize them to one"
        )
    return LabeledSet(
        ids=list(dataset.ids),
        images=torch.stack([img for img, _ in pairs]),  # (N, 3, H, W)
        masks=torch.stack([mask for _, mask in pairs]),  # (N, H, W)
        class_names=list(dataset.class_names),
        palette=[tuple(c) for c in dataset.palette] if dataset.palette else None,
        ignore_index=int(dataset.ignore_index),
    )


def pixel_class_losses(
    logits: Tensor, masks: Tensor, classes: Sequence[int], ignore_index: int
) -> list[Tensor]:
    """Mean cross-entropy over the pixels of each class: ``l_c`` for c in `classes`.

    Args:
        logits: (B, C, H, W).
        masks: (B, H, W) int64.
        classes: Class ids, each present in `masks`.
        ignore_index: Excluded pixels.

    Returns:
        One scalar per class, in the order of `classes`.
    """
    ce = F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    return [ce[masks == c].mean() for c in classes]


def shared_classes(real_masks: Tensor, syn_masks: Tensor, ignore_index: int) -> list[int]:
    """The classes labelled both in the real batch and in the synthetic masks, sorted."""
    real = set(torch.unique(real_masks).tolist())
    syn = set(torch.unique(syn_masks).tolist())
    return sorted((real & syn) - {ignore_index})


def _augment(images: Tensor, masks: Tensor, params: Any, ignore_index: int) -> tuple[Tensor, Tensor]:
    return apply_dsa(images, params), apply_dsa_mask(masks, params, ignore_index)


def seg_match_step(
    net: nn.Module,
    params: Sequence[Tensor],
    rule: str,
    syn: Tensor,
    syn_masks: Tensor,
    labeled: LabeledSet,
    batch_real: int,
    gen: torch.Generator,
    dsa_strategy: Sequence[str] | None,
) -> float:
    """One synthetic-set update's matching loss; its gradient is accumulated into ``syn.grad``.

    Returns:
        The matching loss (0 when the batch shares no class with the synthetic masks: then no
        gradient is accumulated).
    """
    device = syn.device
    pick = torch.randperm(len(labeled.ids), generator=gen)[:batch_real]
    real, real_masks = labeled.images[pick].to(device), labeled.masks[pick].to(device)
    syn_in, syn_m = syn, syn_masks
    if dsa_strategy is not None:  # one Siamese draw for both batches, images and masks
        p = sample_dsa(dsa_strategy, 1, (syn.shape[-2], syn.shape[-1]), gen)
        real, real_masks = _augment(real, real_masks, p, labeled.ignore_index)
        syn_in, syn_m = _augment(syn, syn_masks, p, labeled.ignore_index)
    classes = shared_classes(real_masks, syn_m, labeled.ignore_index)
    if not classes:
        log.debug("matching step skipped: no class shared by the real batch and the synthetic masks")
        return 0.0
    l_real = pixel_class_losses(net(real), real_masks, classes, labeled.ignore_index)
    l_syn = pixel_class_losses(net(syn_in), syn_m, classes, labeled.ignore_index)
    if rule == "dcc":
        loss = matching_loss("dcc", l_syn, l_real, params)
        loss.backward()
        return float(loss.detach())
    total = 0.0
    for syn_c, real_c in zip(l_syn, l_real, strict=True):  # one class's double-backward graph at a time
        loss = matching_loss("dc", [syn_c], [real_c], params)
        loss.backward(retain_graph=True)
        total += float(loss.detach())
    return total


def train_steps(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    masks: Tensor,
    steps: int,
    batch_size: int,
    ignore_index: int,
    gen: torch.Generator,
    dsa_strategy: Sequence[str] | None = None,
) -> None:
    """`steps` SGD steps of pixel cross-entropy on random batches of (images, masks)."""
    net.train()
    for _ in range(steps):
        pick = torch.randperm(len(images), generator=gen)[:batch_size].to(images.device)
        x, y = images[pick], masks[pick]
        if dsa_strategy is not None:
            x, y = _augment(
                x, y, sample_dsa(dsa_strategy, len(x), (x.shape[-2], x.shape[-1]), gen), ignore_index
            )
        loss = F.cross_entropy(net(x), y, ignore_index=ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@dataclass
class SegmentationResult:
    """What `condense_segmentation` returns.

    Attributes:
        images: Condensed images (K, 3, H, W) in [0, 1].
        masks: Their masks (K, H, W), from the labeled images `source_ids`.
        source_ids: The labeled images whose masks (and initial images) were taken.
        iterations_done: Outer iterations completed (resumed ones included).
        history: Mean matching loss, wall and CPU seconds per iteration.
        paths: Files written.
    """

    images: Tensor
    masks: Tensor
    source_ids: list[str]
    iterations_done: int
    history: History
    paths: dict[str, Path]


def condense_segmentation(
    labeled: LabeledSet,
    cfg: SegmentationConfig,
    out_dir: str | Path,
    *,
    source: dict[str, Any] | None = None,
    data: DataConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> SegmentationResult:
    """Condenses a labeled segmentation set into ``cfg.num_images`` image/mask pairs.

    The loop is that of :func:`pixcon.condense.classification.condense_classification` (K
    networks, T matching steps each, ``net_steps`` network steps between them, DCC's warm-up),
    with the segmentation network and the pixel losses of the module docstring.

    Args:
        labeled: The labeled images (`load_labeled_set`).
        cfg: Settings.
        out_dir: Output folder; it becomes a pixcon folder dataset.
        source: Where the labeled set came from (e.g. ``{"format", "root", "labeled_split"}``);
            saved with the config, and a resumed run must name the same.
        data: The source dataset, to copy its ``val``/``test`` splits (``cfg.copy_eval_splits``).
        resume: Continue from ``out_dir/checkpoint.pt`` (same settings; iterations may grow).
        progress: A tqdm bar over the outer iterations.
        device: ``"cpu"`` or ``"cuda"``.

    Raises:
        FileExistsError: A checkpoint exists and `resume` is False.
        ValueError: More condensed images than labeled ones, or a checkpoint from other settings.
    """

    m = cfg.matching
    n = len(labeled.ids)
    if cfg.num_images > n:
        raise ValueError(f"num_images={cfg.num_images} but the labeled set has only {n} images")
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    dev = torch.device(device)
    dsa = check_strategy(m.dsa_strategy) if m.dsa else None
    config = {**to_jsonable(cfg), "source": to_jsonable(source or {})}

    chosen = torch.randperm(n, generator=generator(m.seed, _STREAM_SELECT))[: cfg.num_images]  # (K,)
    source_ids = [labeled.ids[i] for i in chosen.tolist()]
    syn_masks = labeled.masks[chosen].to(dev)  # (K, H, W), fixed
    if m.init == "real":
        start_images = labeled.images[chosen].clone()
    else:
        start_images = torch.rand(labeled.images[chosen].shape, generator=generator(m.seed, _STREAM_NOISE))
    syn = start_images.to(dev).requires_grad_(True)  # (K, 3, H, W)
    opt = torch.optim.SGD([syn], lr=m.lr_images, momentum=m.momentum_images)
    history, start = resume_synthetic(
        ckpt_path, TASK, config, syn, opt, resume=resume, iterations=m.iterations
    )

    def checkpoint(done: int) -> None:
        save_state(
            {
                "task": TASK,
                "config": config,
                "iteration": done,
                "images": syn.detach().cpu(),
                "masks": syn_masks.cpu(),
                "source_ids": source_ids,
                "optimizer": opt.state_dict(),
                "history": to_jsonable(history),
            },
            ckpt_path,
        )

    def iteration(k: int) -> list[float]:
        """Outer iteration k: a fresh segmenter, T matching steps, network training in between."""
        gen = generator(m.seed, k)
        net = seeded(
            create_segmenter,
            derive_seed(m.seed, k, _STREAM_NET),
            arch=cfg.arch,
            encoder=cfg.encoder,
            num_classes=labeled.num_classes,
            in_channels=3,
        ).to(dev)
        params = matched_parameters(list(net.named_parameters()), skip_prefixes=("projection.",))
        net_opt = torch.optim.SGD(
            [p for name, p in net.named_parameters() if not name.startswith("projection.")], lr=m.lr_net
        )
        losses = []
        for t in range(m.matching_steps):
            bn_batch = labeled.images[torch.randperm(n, generator=gen)[: cfg.batch_real]].to(dev)
            freeze_batchnorm(net, bn_batch)
            net.eval()  # frozen statistics, no dropout: the gradients of a fixed network
            rule = matching_rule(m.method, k, t, m.warmup_iterations, m.warmup_steps)
            opt.zero_grad(set_to_none=True)
            losses.append(
                seg_match_step(net, params, rule, syn, syn_masks, labeled, cfg.batch_real, gen, dsa)
            )
            opt.step()
            with torch.no_grad():
                syn.clamp_(0.0, 1.0)
            if t < m.matching_steps - 1 and m.net_steps > 0:
                train_steps(
                    net,
                    net_opt,
                    syn.detach(),
                    syn_masks,
                    m.net_steps,
                    cfg.batch_train,
                    labeled.ignore_index,
                    gen,
                    dsa,
                )
        return losses

    bar = progress_bar(m.iterations, start, f"condense {m.method} K={cfg.num_images}", progress)
    for k in range(start, m.iterations):
        tic, cpu_tic = time.perf_counter(), time.process_time()
        with global_rng(derive_seed(m.seed, k, _STREAM_GLOBAL), dev):  # dropout draws from it
            losses = iteration(k)
        history.loss.append(float(np.mean(losses)))
        history.seconds.append(time.perf_counter() - tic)
        history.cpu_seconds.append(time.process_time() - cpu_tic)
        bar.update(1)
        bar.set_postfix(loss=f"{history.loss[-1]:.4f}")
        log.info(
            "iteration %d/%d: matching loss %.4f (%.1f s)",
            k + 1,
            m.iterations,
            history.loss[-1],
            history.seconds[-1],
        )
        if (k + 1) % m.checkpoint_every == 0 or k + 1 == m.iterations:
            checkpoint(k + 1)
    bar.close()
    images, masks = syn.detach().cpu(), syn_masks.cpu()
    paths = {"checkpoint": ckpt_path}
    paths.update(
        write_condensed_folder(
            images, masks, labeled, out, source_ids=source_ids, data=data if cfg.copy_eval_splits else None
        )
    )
    write_json(
        {"config": config, "iterations": max(start, m.iterations), "source_ids": source_ids},
        out / "condense.json",
    )
    return SegmentationResult(
        images=images,
        masks=masks,
        source_ids=source_ids,
        iterations_done=max(start, m.iterations),
        history=history,
        paths=paths,
    )


def _to_uint8_image(image: Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def _save_pair(root: Path, sample_id: str, image: Tensor, mask: Tensor) -> None:

    for sub in ("images", "masks"):
        (root / sub / sample_id).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8_image(image)).save(root / "images" / f"{sample_id}.png")
    Image.fromarray(mask.numpy().astype(np.uint8)).save(root / "masks" / f"{sample_id}.png")


def write_condensed_folder(
    images: Tensor,
    masks: Tensor,
    labeled: LabeledSet,
    out: Path,
    *,
    source_ids: Sequence[str],
    data: DataConfig | None = None,
) -> dict[str, Path]:
    """Writes the condensed pairs as a pixcon folder dataset, and their grid.

    ``images/condensed_000.png`` ... (RGB), ``masks/condensed_000.png`` (index PNGs),
    ``splits/train.txt`` (the condensed ids), ``classes.yaml`` (names, palette, ignore index)
    and, with `data`, the source's ``val``/``test`` splits under their own ids.

    Raises:
        ValueError: More than 256 classes (masks are 8-bit).
    """

    if labeled.num_classes > 255 or not 0 <= labeled.ignore_index <= 255:
        raise ValueError(
            f"{labeled.num_classes} classes with ignore index {labeled.ignore_index}: 8-bit mask PNGs need "
            "at most 255 classes and an ignore index in 0..255"
        )
    ids = [f"{CONDENSED_PREFIX}{i:03d}" for i in range(len(images))]
    for sample_id, image, mask in zip(ids, images, masks, strict=True):
        _save_pair(out, sample_id, image, mask)
    paths = {"train_split": write_ids(out / "splits" / "train.txt", ids)}
    classes: dict[str, Any] = {"classes": list(labeled.class_names), "ignore_index": labeled.ignore_index}
    if labeled.palette is not None:
        classes["palette"] = [list(c) for c in labeled.palette]
    (out / "classes.yaml").write_text(yaml.safe_dump(classes, sort_keys=False))
    paths["classes"] = out / "classes.yaml"
    write_json(dict(zip(ids, source_ids, strict=True)), out / "condensed_sources.json")
    if data is not None:
        paths.update(_copy_eval_splits(data, out))
    paths["grid"] = write_grid(_grid_tiles(images, masks, labeled), out / GRID_NAME, nrow=len(images))
    return paths


def _grid_tiles(images: Tensor, masks: Tensor, labeled: LabeledSet) -> Tensor:
    """Images on the first row, their masks in the palette's colours on the second: (2K, 3, H, W)."""
    colours = torch.tensor(
        labeled.palette
        if labeled.palette is not None
        else [[(37 * c) % 256, (91 * c) % 256, (173 * c) % 256] for c in range(labeled.num_classes)],
        dtype=torch.float32,
    )  # (C, 3)
    lut = torch.zeros(256, 3)
    lut[: len(colours)] = colours / 255.0
    coloured = lut[masks.clamp(0, 255)].permute(0, 3, 1, 2)  # (K, 3, H, W); ignored pixels black
    return torch.cat([images.clamp(0, 1), coloured])


def _copy_eval_splits(data: DataConfig, out: Path) -> dict[str, Path]:
    """Writes the source's val and test images (as PNGs) and split files into `out`."""

    paths = {}
    for split in EVAL_SPLITS:
        try:
            ids = split_ids(data, split)
        except (FileNotFoundError, ValueError, KeyError):
            log.info("the source has no %r split: not copied", split)
            continue
        clash = [i for i in ids if i.startswith(CONDENSED_PREFIX)]
        if clash:
            raise ValueError(
                f"source {split} ids {clash[:3]} clash with the condensed ids ({CONDENSED_PREFIX}*)"
            )
        dataset = open_dataset(data, ids=ids)
        for i, sample_id in enumerate(dataset.ids):
            image, mask = dataset[i]
            _save_pair(out, sample_id, image, mask)
        paths[f"{split}_split"] = write_ids(out / "splits" / f"{split}.txt", dataset.ids)
    return paths

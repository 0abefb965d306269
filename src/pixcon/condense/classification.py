"""Dataset condensation for image classification (DC, DSA and DCC as published), on Fashion-MNIST.

Two datasets, both from the Fashion-MNIST idx files on disk (:mod:`pixcon.data.fashion`):

* ``fashion``: the items as published, 28x28 grey on black (DC's benchmark);
* ``fashion-cluttered``: every item pasted at a random offset on a 32x32 RGB background cut from
  the embedded dataset's real textures (brick, grass, gravel, regolith; one or two per image, see
  :mod:`pixcon.data.synthetic`), in a random colour: the setting where, by DCC's analysis,
  task-irrelevant content dominates and class-wise matching loses the signals that tell the
  classes apart. Image i of a split is drawn from its own generator seeded by ``(seed, split, i)``.

Images are normalised per channel with the training split's mean and standard deviation; the
synthetic set lives in that normalised space (as in the official code).

`condense_classification` learns ``ipc`` synthetic images per class (DC Algorithm 1 with the
matching rule of :mod:`pixcon.condense.matching`); `train_and_test` trains a freshly initialised
ConvNet on a (synthetic, random or full) training set and scores it on the test split.
"""

from __future__ import annotations

import colorsys
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
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
    has_batchnorm,
    load_state,
    progress_bar,
    resume_synthetic,
    save_state,
    seeded,
    to_jsonable,
    write_grid,
)
from pixcon.condense.convnet import ConvNet
from pixcon.condense.dsa import apply_dsa, sample_dsa, siamese_dsa
from pixcon.condense.matching import matched_parameters, matching_loss, matching_rule
from pixcon.condense.options import DATASETS, DEFAULT_STRATEGY, NORMS, check_strategy
from pixcon.data.fashion import FASHION_CLASSES, load_fashion_mnist
from pixcon.data.synthetic import DEFAULT_STYLE, ITEM_THRESHOLD, _texture_layer, load_textures

log = logging.getLogger(__name__)

TASK = "classification"
CLUTTER_SIZE = 32  # side of the cluttered images; items (28x28) are pasted at offsets 0..4
_CLUTTER_SPLIT_CODES = {"train": 0, "test": 1}
SYNTHETIC_NAME = "synthetic.pt"
# Keys of the random streams outside the outer iterations (which use (seed, k)): far above any k.
_STREAM_INIT = 2**40
_STREAM_RANDOM_SUBSET = 2**40 + 1
_STREAM_EVAL_NET = 2**40 + 2
_STREAM_EVAL_DATA = 2**40 + 3
_STREAM_GLOBAL = 2  # (seed, k, _STREAM_GLOBAL): torch's global generator during iteration k
_STREAM_NET = 1  # (seed, k, _STREAM_NET): the initial weights of iteration k's network


@dataclass(frozen=True)
class ClassificationData:
    """A classification dataset in memory, normalised.

    Attributes:
        name: One of `DATASETS`.
        train_images: (N, C, H, W) float32, normalised with `mean` and `std`.
        train_labels: (N,) int64 in ``0 .. num_classes - 1``.
        test_images: (N_test, C, H, W) float32, normalised the same way.
        test_labels: (N_test,) int64.
        mean: Per-channel mean of the raw training images in [0, 1].
        std: Per-channel standard deviation, same.
        class_names: One name per class.
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def denormalize(self, images: Tensor) -> Tensor:
        """Normalised (N, C, H, W) -> [0, 1] (clipped)."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)


def clutter_items(items: np.ndarray, *, split: str, seed: int = 0) -> np.ndarray:
    """Pastes Fashion-MNIST items on textured backgrounds (the ``fashion-cluttered`` images).

    Each image: one of the embedded dataset's stuff textures (two, split by a random straight
    line, half of the time), cut, rotated, resized and tinted by :mod:`pixcon.data.synthetic`'s own
    texture renderer; then the item's pixels at or above `pixcon.data.synthetic.ITEM_THRESHOLD`
    pasted at a random offset, in a random colour shaded by the item's grey levels.

    Args:
        items: (N, 28, 28) uint8 Fashion-MNIST images.
        split: ``"train"`` or ``"test"`` (separate random streams).
        seed: Base seed; image i uses a generator seeded by ``(seed, split, i)``.

    Returns:
        (N, 32, 32, 3) uint8.
    """

    if split not in _CLUTTER_SPLIT_CODES:
        raise ValueError(f"split must be one of {list(_CLUTTER_SPLIT_CODES)}, got {split!r}")
    if items.ndim != 3 or items.shape[1:] != (28, 28):
        raise ValueError(f"expected Fashion-MNIST items (N, 28, 28), got {items.shape}")
    textures = load_textures()
    tints = [np.asarray(t, dtype=np.float64) for t in DEFAULT_STYLE.stuff_tints]
    size, side = CLUTTER_SIZE, items.shape[1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)  # (S, S)
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([seed, _CLUTTER_SPLIT_CODES[split], i]))
        )
        first = int(rng.integers(len(textures)))
        image = _texture_layer(rng, textures[first], tints[first], size)  # (S, S, 3) float
        if rng.random() < 0.5:  # a second texture beyond a random straight line
            second = int(rng.integers(len(textures)))
            other = _texture_layer(rng, textures[second], tints[second], size)
            angle, offset = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3) * size
            beyond = (xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle) > offset  # (S, S)
            image[beyond] = other[beyond]
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        silhouette = item >= ITEM_THRESHOLD  # (28, 28)
        colour = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.75, 1.0)))
        shading = 0.3 + 0.7 * item.astype(np.float64) / 255.0  # (28, 28): keeps the item's texture
        patch = image[top : top + side, left : left + side]  # (28, 28, 3) view
        patch[silhouette] = shading[silhouette, None] * colour
        out[i] = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return out


def _normalise(
    train: np.ndarray, test: np.ndarray
) -> tuple[Tensor, Tensor, tuple[float, ...], tuple[float, ...]]:
    """uint8 (N, H, W, C) arrays -> normalised float (N, C, H, W) tensors, mean, std (train split's)."""
    tr = torch.from_numpy(train).permute(0, 3, 1, 2).float().div_(255.0)  # (N, C, H, W)
    te = torch.from_numpy(test).permute(0, 3, 1, 2).float().div_(255.0)  # (N_test, C, H, W)
    mean = tr.mean(dim=(0, 2, 3))  # (C,)
    std = tr.std(dim=(0, 2, 3))  # (C,)
    view = (1, -1, 1, 1)
    tr = (tr - mean.view(view)) / std.view(view)
    te = (te - mean.view(view)) / std.view(view)
    return tr, te, tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_classification_data(
    name: str, fashion_path: str | Path | None = None, seed: int = 0, cache_dir: str | Path | None = None
) -> ClassificationData:
    """Loads ``fashion`` or ``fashion-cluttered`` (see the module docstring).

    Args:
        name: One of `DATASETS`.
        fashion_path: Folder of the Fashion-MNIST idx files; None searches the defaults
            (``/usr/share/datasets/fashion-mnist``, ``$PIXCON_FASHION_MNIST``).
        seed: Seed of the cluttered backgrounds.
        cache_dir: ``fashion-cluttered`` only: keep the rendered images in
            ``cache_dir/fashion-cluttered-seed{seed}.npz`` and reuse them (rendering 70,000 images
            takes about 20 s on one core).

    Raises:
        ValueError: Unknown name.
        FileNotFoundError: Fashion-MNIST files not found (the message says how to install them).
    """

    if name not in DATASETS:
        raise ValueError(f"unknown classification dataset {name!r}; choose one of {list(DATASETS)}")
    train_items, train_labels = load_fashion_mnist(fashion_path, "train")  # (N, 28, 28), (N,)
    test_items, test_labels = load_fashion_mnist(fashion_path, "test")
    if name == "fashion":
        train, test = train_items[..., None], test_items[..., None]  # (N, 28, 28, 1)
    else:
        cache = (
            Path(cache_dir) / f"fashion-cluttered-seed{seed}-n{len(train_items)}-{len(test_items)}.npz"
            if cache_dir
            else None
        )
        if cache is not None and cache.is_file():
            with np.load(cache) as stored:
                train, test = stored["train"], stored["test"]
            log.info("loaded the cluttered images from %s", cache)
        else:
            start = time.perf_counter()
            train = clutter_items(train_items, split="train", seed=seed)  # (N, 32, 32, 3)
            test = clutter_items(test_items, split="test", seed=seed)
            log.info(
                "rendered %d cluttered images in %.1f s", len(train) + len(test), time.perf_counter() - start
            )
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cache, train=train, test=test)
    tr, te, mean, std = _normalise(train, test)
    return ClassificationData(
        name=name,
        train_images=tr,
        train_labels=torch.from_numpy(train_labels).long(),
        test_images=te,
        test_labels=torch.from_numpy(test_labels).long(),
        mean=mean,
        std=std,
        class_names=FASHION_CLASSES,
    )


@dataclass(frozen=True)
class NetConfig:
    """The ConvNet (:class:`pixcon.condense.convnet.ConvNet`): the papers' width 128, depth 3."""

    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"width and depth must be >= 1, got {self.width}, {self.depth}")

    def build(self, data: ClassificationData, seed: int) -> ConvNet:
        """A ConvNet for `data`, initialised from `seed` alone."""
        return seeded(
            ConvNet,
            seed,
            data.channels,
            data.num_classes,
            image_size=data.image_size,
            width=self.width,
            depth=self.depth,
            norm=self.norm,
        )


@dataclass(frozen=True)
class ClassificationConfig:
    """Settings of one classification condensation.

    Attributes:
        dataset: One of `DATASETS`.
        ipc: Synthetic images per class.
        batch_real: Real images per class in a matching step (the papers: 256).
        batch_train: Batch size of the network trained on the synthetic set (256).
        net: The ConvNet.
        matching: The loop and optimiser (:class:`pixcon.condense.common.MatchingConfig`).
    """

    dataset: str = "fashion"
    ipc: int = 10
    batch_real: int = 256
    batch_train: int = 256
    net: NetConfig = field(default_factory=NetConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {list(DATASETS)}, got {self.dataset!r}")
        for name in ("ipc", "batch_real", "batch_train"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass
class ClassificationResult:
    """What `condense_classification` returns.

    Attributes:
        images: The synthetic images (C * ipc, channels, H, W), normalised, class-major order.
        labels: Their labels (C * ipc,), ``[0]*ipc + [1]*ipc + ...``.
        iterations_done: Outer iterations completed (resumed ones included).
        history: Mean matching loss, wall and CPU seconds per iteration.
        paths: Files written (checkpoint, synthetic set, grid).
    """

    images: Tensor
    labels: Tensor
    iterations_done: int
    history: History
    paths: dict[str, Path]


def class_indices(labels: Tensor, num_classes: int) -> list[Tensor]:
    """The indices of every class's samples, (n_c,) each; raises if a class has none."""
    out = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    empty = [c for c, idx in enumerate(out) if len(idx) == 0]
    if empty:
        raise ValueError(f"classes {empty} have no training samples")
    return out


def sample_class(images: Tensor, indices: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """n (or all, if fewer) images drawn without replacement from one class: (n, C, H, W)."""
    pick = torch.randperm(len(indices), generator=gen)[:n]  # (n,)
    return images[indices[pick]]


def initial_images(
    data: ClassificationData, ipc: int, init: str, per_class: Sequence[Tensor], gen: torch.Generator
) -> Tensor:
    """The synthetic set's starting point, (C * ipc, channels, H, W): real samples chosen at random
    (``init="real"``) or standard Gaussian noise in the normalised space (``"noise"``)."""
    if init == "noise":
        shape = (data.num_classes * ipc, data.channels, data.image_size, data.image_size)
        return torch.randn(shape, generator=gen)
    too_small = [c for c, idx in enumerate(per_class) if len(idx) < ipc]
    if too_small:
        raise ValueError(f"classes {too_small} have fewer than ipc={ipc} training samples")
    return torch.cat([sample_class(data.train_images, idx, ipc, gen) for idx in per_class]).clone()


def _class_mean_losses(logits: Tensor, labels: Tensor, blocks: Sequence[int]) -> list[Tensor]:
    """Per-class mean cross-entropy of consecutive class blocks of the given sizes."""
    ce = F.cross_entropy(logits, labels, reduction="none")  # (B,)
    return [chunk.mean() for chunk in ce.split(list(blocks))]


def match_step(
    net: nn.Module,
    params: Sequence[Tensor],
    rule: str,
    syn: Tensor,
    ipc: int,
    data: ClassificationData,
    per_class: Sequence[Tensor],
    batch_real: int,
    gen: torch.Generator,
    dsa_strategy: Sequence[str] | None,
) -> float:
    """One synthetic-set update's matching loss; its gradient is accumulated into ``syn.grad``.

    ``dc`` matches class by class (a forward/backward per class, as the official code; the
    backward runs per class so that only one class's double-backward graph is alive at a time).
    ``dcc`` matches the loss over all classes: one forward of every class's real batch, one of the
    whole synthetic set. With DSA, each class draws its own Siamese augmentation, applied to its
    real batch and its synthetic images (as the official DCC code does).

    Args:
        net: The network (in train mode, or eval with frozen batch-norm statistics).
        params: Parameters whose gradients are matched (`matched_parameters`).
        rule: ``"dc"`` or ``"dcc"``.
        syn: Synthetic images (C * ipc, channels, H, W), a leaf requiring grad.
        ipc: Images per class in `syn`.
        data: The real data (on the same device as `syn`).
        per_class: Training indices per class.
        batch_real: Real images per class.
        gen: Random draws (real batches, DSA).
        dsa_strategy: DSA families, or None for no augmentation.

    Returns:
        The matching loss, as a float.
    """
    device = syn.device
    reals: list[Tensor] = []
    syns: list[Tensor] = []
    for c, idx in enumerate(per_class):
        real_c = sample_class(data.train_images, idx, batch_real, gen).to(device)  # (B_r, ch, H, W)
        syn_c = syn[c * ipc : (c + 1) * ipc]  # (ipc, ch, H, W)
        if dsa_strategy is not None:
            real_c, syn_c, _ = siamese_dsa(real_c, syn_c, dsa_strategy, gen)
        reals.append(real_c)
        syns.append(syn_c)
    if rule == "dc":
        total = 0.0
        for c, (real_c, syn_c) in enumerate(zip(reals, syns, strict=True)):
            l_real = F.cross_entropy(net(real_c), torch.full((len(real_c),), c, device=device))
            l_syn = F.cross_entropy(net(syn_c), torch.full((len(syn_c),), c, device=device))
            loss = matching_loss("dc", [l_syn], [l_real], params)
            loss.backward()
            total += float(loss.detach())
        return total
    real_labels = torch.cat([torch.full((len(r),), c, device=device) for c, r in enumerate(reals)])
    syn_labels = torch.arange(len(syns), device=device).repeat_interleave(ipc)  # (C * ipc,)
    class_real = _class_mean_losses(net(torch.cat(reals)), real_labels, [len(r) for r in reals])
    class_syn = _class_mean_losses(net(torch.cat(syns)), syn_labels, [ipc] * len(syns))
    loss = matching_loss("dcc", class_syn, class_real, params)
    loss.backward()
    return float(loss.detach())


def train_epochs(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    epochs: int,
    batch_size: int,
    gen: torch.Generator,
    dsa_strategy: Sequence[str] | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> float:
    """Trains `net` with cross-entropy for whole epochs over (images, labels), shuffled by `gen`;
    with DSA, every image gets its own random augmentation. Returns the last batch's loss."""
    net.train()
    last = float("nan")
    for epoch in range(epochs):
        for batch in torch.randperm(len(images), generator=gen).split(batch_size):
            x, y = images[batch.to(images.device)], labels[batch.to(labels.device)]
            if dsa_strategy is not None:
                x = apply_dsa(x, sample_dsa(dsa_strategy, len(x), (x.shape[-2], x.shape[-1]), gen))
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last = float(loss.detach())
        if on_epoch is not None:
            on_epoch(epoch)
    return last


def _config_dict(cfg: ClassificationConfig) -> dict[str, Any]:
    return to_jsonable(cfg)


def condense_classification(
    data: ClassificationData,
    cfg: ClassificationConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> ClassificationResult:
    """Learns ``cfg.ipc`` synthetic images per class by gradient matching (DC Algorithm 1).

    For each outer iteration k (a ConvNet initialised from ``(seed, k)``) and inner step t:
    update the synthetic set by one SGD step on the matching loss of rule
    ``matching_rule(method, k, t, K_w, T_w)``; then, except after the last step, train the network
    for ``net_steps`` epochs on the synthetic set (DSA on, if set). The checkpoint
    (``out_dir/checkpoint.pt``: images, optimiser state, iteration, config) is written every
    ``checkpoint_every`` iterations and at the end; ``out_dir/synthetic.pt`` and
    ``out_dir/synthetic_grid.png`` at the end.

    Args:
        data: The real data (`load_classification_data`).
        cfg: Settings; ``cfg.dataset`` must name `data`.
        out_dir: Output folder.
        resume: Continue from ``out_dir/checkpoint.pt`` if it exists (same settings; only
            ``matching.iterations`` may grow). Without it, an existing checkpoint is an error.
        progress: A tqdm bar over the outer iterations.
        device: Where the networks and images live (``"cpu"``, ``"cuda"``).

    Returns:
        The synthetic set, its history and the files written.

    Raises:
        FileExistsError: A checkpoint exists and `resume` is False.
        ValueError: Settings that do not fit the data, or a checkpoint from other settings.
    """
    if cfg.dataset != data.name:
        raise ValueError(f"config dataset {cfg.dataset!r} but the data is {data.name!r}")
    m = cfg.matching
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    dev = torch.device(device)
    per_class = class_indices(data.train_labels, data.num_classes)
    labels = torch.arange(data.num_classes).repeat_interleave(cfg.ipc)  # (C * ipc,)
    dsa = m.dsa_strategy if m.dsa else None
    if dsa is not None:
        check_strategy(dsa)
    config = _config_dict(cfg)

    images = initial_images(data, cfg.ipc, m.init, per_class, generator(m.seed, _STREAM_INIT))
    syn = images.to(dev).requires_grad_(True)  # (C * ipc, ch, H, W)
    opt = torch.optim.SGD([syn], lr=m.lr_images, momentum=m.momentum_images)
    history, start = resume_synthetic(
        ckpt_path, TASK, config, syn, opt, resume=resume, iterations=m.iterations
    )
    data_dev = data if dev.type == "cpu" else _to_device(data, dev)

    def checkpoint(done: int) -> None:
        save_state(
            {
                "task": TASK,
                "config": config,
                "iteration": done,
                "images": syn.detach().cpu(),
                "labels": labels,
                "optimizer": opt.state_dict(),
                "history": to_jsonable(history),
            },
            ckpt_path,
        )

    def iteration(k: int) -> list[float]:
        """Outer iteration k: a fresh network, T matching steps, network training in between."""
        gen = generator(m.seed, k)
        net = cfg.net.build(data, derive_seed(m.seed, k, _STREAM_NET)).to(dev)
        params = matched_parameters(list(net.named_parameters()))
        net_opt = torch.optim.SGD(net.parameters(), lr=m.lr_net)
        losses = []
        for t in range(m.matching_steps):
            net.train()
            if has_batchnorm(net):  # 16 real images per class set the frozen statistics (DC code)
                freeze_batchnorm(
                    net, torch.cat([sample_class(data_dev.train_images, idx, 16, gen) for idx in per_class])
                )
            rule = matching_rule(m.method, k, t, m.warmup_iterations, m.warmup_steps)
            opt.zero_grad(set_to_none=True)
            losses.append(
                match_step(net, params, rule, syn, cfg.ipc, data_dev, per_class, cfg.batch_real, gen, dsa)
            )
            opt.step()
            if t < m.matching_steps - 1 and m.net_steps > 0:
                train_epochs(
                    net, net_opt, syn.detach(), labels.to(dev), m.net_steps, cfg.batch_train, gen, dsa
                )
        return losses

    bar = progress_bar(m.iterations, start, f"condense {m.method} ipc={cfg.ipc}", progress)
    for k in range(start, m.iterations):
        tic, cpu_tic = time.perf_counter(), time.process_time()
        with global_rng(derive_seed(m.seed, k, _STREAM_GLOBAL), dev):
            losses = iteration(k)
        history.loss.append(float(np.mean(losses)))
        history.seconds.append(time.perf_counter() - tic)
        history.cpu_seconds.append(time.process_time() - cpu_tic)
        bar.update(1)
        bar.set_postfix(loss=f"{history.loss[-1]:.4f}")
        if (k + 1) % max(1, m.iterations // 20) == 0 or k == start:
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
    final = syn.detach().cpu()
    paths = {
        "checkpoint": ckpt_path,
        **write_classification_outputs(final, labels, data, cfg, max(start, m.iterations), out),
    }
    return ClassificationResult(
        images=final, labels=labels, iterations_done=max(start, m.iterations), history=history, paths=paths
    )


def _to_device(data: ClassificationData, device: torch.device) -> ClassificationData:
    return ClassificationData(
        name=data.name,
        train_images=data.train_images.to(device),
        train_labels=data.train_labels.to(device),
        test_images=data.test_images.to(device),
        test_labels=data.test_labels.to(device),
        mean=data.mean,
        std=data.std,
        class_names=data.class_names,
    )


def write_classification_outputs(
    images: Tensor,
    labels: Tensor,
    data: ClassificationData,
    cfg: ClassificationConfig,
    iterations: int,
    out: Path,
) -> dict[str, Path]:
    """Writes ``synthetic.pt`` (images, labels, normalisation, class names, config) and the grid
    (one row per class; one column per image, or one row of all classes for ipc 1)."""
    synthetic = out / SYNTHETIC_NAME
    save_state(
        {
            "task": TASK,
            "images": images,
            "labels": labels,
            "mean": list(data.mean),
            "std": list(data.std),
            "class_names": list(data.class_names),
            "config": _config_dict(cfg),
            "iterations": iterations,
        },
        synthetic,
    )
    nrow = cfg.ipc if cfg.ipc > 1 else data.num_classes
    grid = write_grid(data.denormalize(images), out / GRID_NAME, nrow=nrow)
    return {"synthetic": synthetic, "grid": grid}


def load_synthetic(path: str | Path) -> dict[str, Any]:
    """Reads ``synthetic.pt``: ``images`` (N, C, H, W) normalised, ``labels``, ``mean``, ``std``,
    ``class_names``, ``config``, ``iterations``."""
    return load_state(path, TASK)


def random_subset(data: ClassificationData, ipc: int, seed: int) -> tuple[Tensor, Tensor]:
    """``ipc`` real training images per class chosen at random (the "random selection" baseline),
    class-major: ((C * ipc, ch, H, W), (C * ipc,))."""
    gen = generator(seed, _STREAM_RANDOM_SUBSET)
    per_class = class_indices(data.train_labels, data.num_classes)
    images = initial_images(data, ipc, "real", per_class, gen)
    return images, torch.arange(data.num_classes).repeat_interleave(ipc)


@dataclass(frozen=True)
class EvalConfig:
    """Training a fresh network to score a training set (the papers' protocol: SGD, lr 0.01,
    momentum 0.9, weight decay 5e-4, batch 256, the learning rate divided by 10 after half the
    epochs; 300 epochs without augmentation, 1000 with DSA)."""

    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = False
    dsa_strategy: tuple[str, ...] = DEFAULT_STRATEGY

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(
                f"epochs and batch_size must be >= 1 and lr > 0, got {self.epochs}, {self.batch_size}, {self.lr}"
            )
        check_strategy(self.dsa_strategy)


@torch.no_grad()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `net` (eval mode) on (images, labels)."""
    net.eval()
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        correct += int((net(x).argmax(1) == y).sum())
    return correct / max(1, len(labels))


def train_and_test(
    train_images: Tensor,
    train_labels: Tensor,
    data: ClassificationData,
    *,
    net: NetConfig,
    eval_cfg: EvalConfig,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """Trains a ConvNet initialised from `seed` on a training set and tests it on ``data``'s test split.

    Returns:
        ``{"test_acc", "train_acc", "seconds", "cpu_seconds"}`` (accuracies in [0, 1]; wall-clock
        and process CPU seconds).
    """
    dev = torch.device(device)
    tic, cpu_tic = time.perf_counter(), time.process_time()
    model = net.build(data, derive_seed(seed, _STREAM_EVAL_NET)).to(dev)
    x, y = train_images.to(dev), train_labels.to(dev)
    gen = generator(seed, _STREAM_EVAL_DATA)
    dsa = eval_cfg.dsa_strategy if eval_cfg.dsa else None
    half = eval_cfg.epochs // 2
    bar = progress_bar(eval_cfg.epochs, 0, f"train on {len(x)} images", progress)
    for lr, epochs in ((eval_cfg.lr, half), (eval_cfg.lr * 0.1, eval_cfg.epochs - half)):
        if epochs == 0:
            continue
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=eval_cfg.momentum, weight_decay=eval_cfg.weight_decay
        )
        train_epochs(
            model, opt, x, y, epochs, eval_cfg.batch_size, gen, dsa, on_epoch=lambda _e: bar.update(1)
        )
    bar.close()
    test_acc = accuracy(model, data.test_images.to(dev), data.test_labels.to(dev))
    train_acc = accuracy(model, x, y)
    return {
        "test_acc": test_acc,
        "train_acc": train_acc,
        "seconds": time.perf_counter() - tic,
        "cpu_seconds": time.process_time() - cpu_tic,
    }

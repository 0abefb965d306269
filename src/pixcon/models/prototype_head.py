"""Prototype initialisation of the segmentation head: fine-tuning starts from the contrastive classifier.

After label-based pixel contrastive pretraining (Zhao et al.) the embedding already separates the
classes: a nearest-class-mean classifier over it is a working segmenter. Fine-tuning from a
*randomly* initialised head throws that classifier away, and the first CE steps, driven by the
random head's errors, distort the pretrained features (Kumar et al., ICLR 2022, "Fine-tuning can
distort pretrained features"). Initialising the head's weights from class means ("weight
imprinting", Qi et al., CVPR 2018) makes fine-tuning start where pretraining ended.

Both classifiers below are exactly linear in the features ``u`` the head's convolution sees (the
decoder output; bilinear upsampling commutes with a per-pixel affine map), so the head computes
them with no change to the network:

* ``embedding`` (needs a one-layer projection head, ``model.proj_layers: 1``, i.e.
  ``z = W u + b`` before the L2 normalisation): the class means ``mu_c`` of the unit embeddings
  (renormalised). Head row ``c`` = ``kappa * mu_c^T W``, bias ``kappa * mu_c^T b``: its argmax is
  the cosine nearest mean over the contrastive embedding, since ``|W u + b|`` is the same for
  every class of a pixel.
* ``features`` (any projection head): Euclidean nearest mean over ``u`` itself. Row ``c`` =
  ``kappa * m_c``, bias ``-kappa * |m_c|^2 / 2``.

``kappa`` is fitted by minimising the cross-entropy of the labeled pixels (temperature scaling;
the CE is convex in ``kappa``). A class with no labeled pixel gets weight 0 and a bias
``ABSENT_MARGIN`` below the top logit of every labeled pixel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixcon.models.segmenter import Segmenter

log = logging.getLogger(__name__)

Space = Literal["auto", "embedding", "features"]
ABSENT_MARGIN = math.log(1e4)  # an absent class is 1e4 times less likely than the top class
MAX_FORWARD_PIXELS = 2**18  # pixels per forward pass of the class-mean passes
ROW_CHUNK = 2**16  # pixel rows cast to float64 at a time


@dataclass(frozen=True)
class PrototypeHead:
    """The imprinted head and what it was made from.

    Attributes:
        weight: (K, C_dec) rows of the head's convolution (centre tap).
        bias: (K,).
        space: ``embedding`` or ``features``.
        scale: The fitted kappa.
        counts: (K,) labeled pixels per class.
        train_ce: CE of the sampled labeled pixels under the head (nats).
        train_acc: Pixel accuracy of the sampled labeled pixels under the head.
    """

    weight: Tensor
    bias: Tensor
    space: str
    scale: float
    counts: Tensor
    train_ce: float
    train_acc: float


def resolve_space(model: Segmenter, space: Space, projection_trained: bool = True) -> str:
    """``auto`` -> ``embedding`` when the projection head is one 1x1 convolution and the pretraining
    trained it (``projection_trained``; self-supervised objectives with heads of their own do not),
    else ``features``."""
    linear = _linear_projection(model.projection.net) is not None
    if space == "auto":
        return "embedding" if linear and projection_trained else "features"
    if space == "embedding" and not linear:
        raise ValueError(
            "prototype space 'embedding' needs a one-layer projection head (model.proj_layers: 1): "
            f"this model's has {len(model.projection.net)} modules; use 'features' or 'auto'"
        )
    if space not in ("embedding", "features"):
        raise ValueError(f"prototype space must be auto, embedding or features, got {space!r}")
    return space


def _linear_projection(net: nn.Sequential) -> nn.Conv2d | None:
    """The projection head's only layer, if it is a single 1x1 convolution."""
    if len(net) == 1 and isinstance(net[0], nn.Conv2d) and net[0].kernel_size == (1, 1):
        return net[0]
    return None


def _affine(conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """A 1x1 convolution as (W (D, C_dec), b (D,)) in float64 on the CPU."""
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return conv.weight[:, :, 0, 0].detach().double().cpu(), bias.detach().double().cpu()


def _embed(u: Tensor, proj: tuple[Tensor, Tensor] | None) -> Tensor:
    """u (N, C_dec) -> the rows the class means are taken of: unit embeddings or u itself."""
    if proj is None:
        return u
    return F.normalize(F.linear(u, *proj), dim=1)  # (N, D)


def _pixels(model: Segmenter, images: Tensor, masks: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """The head inputs and labels of every labeled pixel: (N, C_dec), (N,)."""
    u = model.head_inputs(images)  # (B, C_dec, H, W)
    u = u.permute(0, 2, 3, 1).reshape(-1, u.shape[1])
    y = masks.reshape(-1).to(u.device)
    keep = y != ignore_index
    return u[keep], y[keep]


def _pieces(
    model: Segmenter, images: Tensor, masks: Tensor, ignore_index: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """:func:`_pixels` of a batch, a few images at a time (at most ``MAX_FORWARD_PIXELS`` pixels,
    one image at least), in the batch's row order: full-resolution decoder features of a batch of
    large images would not fit in memory."""
    h, w = images.shape[-2:]
    step = max(1, MAX_FORWARD_PIXELS // (h * w))
    for i in range(0, len(images), step):
        yield _pixels(model, images[i : i + step], masks[i : i + step], ignore_index)


def _rows(u: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(start, float64 rows on the CPU) in chunks of ``ROW_CHUNK`` rows."""
    for r in range(0, len(u), ROW_CHUNK):
        yield r, u[r : r + ROW_CHUNK].double().cpu()


def linear_classifier(
    means: Tensor, present: Tensor, proj: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor]:
    """Class means (K, E) -> unscaled head (weight (K, C_dec), bias (K,)); absent rows are zero.

    ``proj`` is the one-layer projection (W (D, C_dec), b (D,)) the means were taken after, or
    None for means of the features themselves.
    """
    if proj is None:  # Euclidean nearest mean: u.m_c - |m_c|^2 / 2
        weight, bias = means.clone(), -0.5 * (means * means).sum(1)
    else:  # cosine nearest mean over z = W u + b: mu_c.(W u + b)
        mu = F.normalize(means, dim=1)
        weight, bias = mu @ proj[0], mu @ proj[1]
    return weight * present[:, None], bias * present


def fit_scale(logits: Tensor, targets: Tensor, lo: float = 1e-4, hi: float = 1e4) -> float:
    """argmin over kappa > 0 of CE(kappa * logits, targets): a log-grid, then golden-section search.

    logits (N, K), targets (N,). The CE is convex in kappa, so the grid's best point brackets the
    minimum.
    """

    def ce(log_k: float) -> float:
        return F.cross_entropy(logits * math.exp(log_k), targets).item()

    grid = torch.linspace(math.log(lo), math.log(hi), 41).tolist()
    values = [ce(g) for g in grid]
    i = min(range(len(grid)), key=values.__getitem__)
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    inv_phi = (math.sqrt(5) - 1) / 2
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = ce(c), ce(d)
    for _ in range(40):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = ce(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = ce(d)
    return math.exp((a + b) / 2)


@torch.no_grad()
def prototype_head(
    model: Segmenter,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    ignore_index: int,
    space: Space = "auto",
    max_pixels: int = 65536,
    seed: int = 0,
    projection_trained: bool = True,
) -> PrototypeHead:
    """The nearest-class-mean head of ``model``'s features over the labeled ``batches``.

    ``batches`` yields (images (B, C, H, W), masks (B, H, W)) without augmentation; it is read
    twice (class means, then the scale fit on at most ``max_pixels`` pixels, a seeded sample). The
    model runs in eval mode (BN running statistics) and is left in the mode it was in; a batch of
    large images goes through it a few images at a time.
    ``projection_trained`` says whether the pretraining trained the projection head (see
    :func:`resolve_space`).

    Raises:
        ValueError: no labeled pixel, or ``space`` does not fit the projection head.
    """
    space_used = resolve_space(model, space, projection_trained)
    conv = _linear_projection(model.projection.net)
    proj = _affine(conv) if space_used == "embedding" and conv is not None else None
    was_training = model.training
    model.eval()
    try:
        sums: Tensor | None = None
        counts = torch.zeros(num_classes, dtype=torch.long)
        for images, masks in batches:
            for u, y in _pieces(model, images, masks, ignore_index):
                for r, rows in _rows(u):
                    e = _embed(rows, proj)  # (n, E)
                    if sums is None:
                        sums = torch.zeros(num_classes, e.shape[1], dtype=torch.float64)
                    labels = y[r : r + ROW_CHUNK].cpu()
                    sums.index_add_(0, labels, e)
                    counts += torch.bincount(labels, minlength=num_classes)
        if sums is None or counts.sum() == 0:
            raise ValueError("prototype head: the labeled images have no labeled pixel")
        present = counts > 0
        means = sums / counts.clamp(min=1)[:, None]
        weight, bias = linear_classifier(means, present, proj)
        # scale fit on a seeded sample of the labeled pixels; the lowest top logit over all of them
        keep_p = min(1.0, max_pixels / int(counts.sum()))
        gen = torch.Generator().manual_seed(seed)
        logits, targets = [], []
        lowest_top = math.inf
        for images, masks in batches:
            for u, y in _pieces(model, images, masks, ignore_index):
                pick = torch.rand(len(y), generator=gen) < keep_p
                for r, rows in _rows(u):
                    full = (rows @ weight.T + bias)[:, present]  # (n, K present)
                    lowest_top = min(lowest_top, full.max(1).values.min().item())
                    chosen = pick[r : r + ROW_CHUNK]
                    logits.append(full[chosen])
                    targets.append(y[r : r + ROW_CHUNK].cpu()[chosen])
        z, t = torch.cat(logits), torch.cat(targets)
        remap = torch.cumsum(present.long(), 0) - 1  # class id -> column among the present ones
        t = remap[t]
        scale = fit_scale(z, t)
        weight, bias = weight * scale, bias * scale
        bias[~present] = scale * lowest_top - ABSENT_MARGIN
        scaled = z * scale
        train_ce = F.cross_entropy(scaled, t).item()
        train_acc = (scaled.argmax(1) == t).double().mean().item()
    finally:
        model.train(was_training)
    return PrototypeHead(weight.float(), bias.float(), space_used, scale, counts, train_ce, train_acc)


def load_head(model: Segmenter, head: PrototypeHead) -> None:
    """Write ``head`` into the segmentation head's convolution (centre tap of a k x k kernel)."""
    conv = model.net.segmentation_head[0]
    if not isinstance(conv, nn.Conv2d) or conv.out_channels != head.weight.shape[0]:
        raise ValueError(f"segmentation head {conv} does not take a {tuple(head.weight.shape)} classifier")
    if conv.in_channels != head.weight.shape[1]:
        raise ValueError(
            f"segmentation head takes {conv.in_channels} channels, prototypes have {head.weight.shape[1]}"
        )
    kh, kw = conv.kernel_size
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, kh // 2, kw // 2] = head.weight.to(conv.weight)
        cast(Tensor, conv.bias).copy_(head.bias.to(conv.bias))  # smp's head convolution has a bias

"""Pixel-wise supervised contrastive loss (Zhao et al., ICCV 2021), exact and memory-efficient.

The math lives in pure functions over flat tensors: embeddings ``z`` of shape (N, D) and integer
labels of shape (N,). Two forms are supported:

``form="zhao"`` -- Zhao et al., "Contrastive Learning for Label-Efficient Semantic Segmentation"
(arXiv 2012.06985, Eq. 1). For an anchor i with positives P(i) (same label, i itself excluded)
and negatives N(i) (other labels), with a_ij = cos(z_i, z_j) / t::

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(a_ip) / (exp(a_ip) + sum_{n in N(i)} exp(a_in)) )

Each positive is contrasted against the anchor's negatives only, not against the other positives.

``form="supcon"`` -- the L_out form of Khosla et al., "Supervised Contrastive Learning" (NeurIPS
2020, Eq. 2): the denominator runs over every other pixel in scope, positives included.

Both are averaged over anchors that have at least one positive. Variants restrict which pairs count
(see :func:`pair_scopes`): ``"batch"`` (every pixel of the batch in one bag), ``"within"`` (pairs
inside one image) and ``"cross"`` (images paired as (0, 1), (2, 3), ...: positives from the
anchor's image and its partner, negatives from the anchor's own image).

Memory: a dense implementation materialises several (N, N) matrices and keeps them for backward,
which is 1 GiB per matrix at N = 16k in float32. :func:`pixel_contrastive_sum` never does: it
dispatches CUDA tensors to the Triton kernels of :mod:`pixcon.losses.fused` (flash-attention
style, statistics per row, tiles recomputed in backward, no host synchronisation) and everything
else to the torch path of :mod:`pixcon.losses.blocked` (symmetric tiles over label-sorted pixels,
the gradient accumulated in the forward pass). Both need O(N * D) memory beyond a few tiles.
:func:`pixel_contrastive_loss_dense` is the dense formula, kept for tests and benchmarks. No peer
library provides an exact multi-positive pixel loss without the N x N matrix; see docs/loss.md.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pixcon.losses.blocked import BlockedPixelContrast, plan_tiles

Form = Literal["zhao", "supcon"]
Variant = Literal["batch", "within", "cross"]
FORMS: tuple[str, ...] = ("zhao", "supcon")
VARIANTS: tuple[str, ...] = ("batch", "within", "cross")
Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")

# Target number of float32 elements of one (block, N) similarity tile: 4M elements = 16 MiB,
# a handful of such tiles are alive at once. Small enough for the memory target at N = 16k-32k,
# large enough that the matmuls stay efficient.
_TILE_ELEMENTS = 1 << 22


def check_hyperparameters(temperature: float, form: str, max_pixels: int) -> None:
    """The checks every pixel-contrast module runs in ``__init__``; raises ValueError naming the value."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {sorted(FORMS)}")
    if max_pixels < 2:
        raise ValueError(f"max_pixels must be >= 2, got {max_pixels}")


def pair_scopes(image_ids: Tensor | None, variant: str) -> tuple[Tensor | None, Tensor | None]:
    """Group ids that restrict positive and negative pairs for a variant.

    A pair (i, j) may be a positive only if ``pos_groups[i] == pos_groups[j]`` and a negative only
    if ``neg_groups[i] == neg_groups[j]``; ``None`` means no restriction.

    Args:
        image_ids: Image index of every pixel, shape (N,). Required unless ``variant="batch"``.
        variant: ``"batch"``, ``"within"`` or ``"cross"``.

    Returns:
        ``(pos_groups, neg_groups)``, each of shape (N,) or ``None``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if variant == "batch":
        return None, None
    if image_ids is None:
        raise ValueError(f"variant={variant!r} needs image_ids (the image index of every pixel)")
    if variant == "within":
        return image_ids, image_ids
    # cross: image 2k is paired with image 2k + 1 (another image or another view of the batch).
    return torch.div(image_ids, 2, rounding_mode="floor"), image_ids


def _tile_masks(
    rows: slice,
    labels: Tensor,
    pos_groups: Tensor | None,
    neg_groups: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks of the anchors in ``rows`` against all pixels, (b, N) each."""
    n = labels.shape[0]
    same = labels[rows, None] == labels[None, :]  # (b, N)
    not_self = torch.arange(rows.start, rows.stop, device=labels.device)[:, None] != torch.arange(
        n, device=labels.device
    )  # (b, N)
    pos = same & not_self
    neg = ~same
    if pos_groups is not None:
        pos &= pos_groups[rows, None] == pos_groups[None, :]
    if neg_groups is not None:
        neg &= neg_groups[rows, None] == neg_groups[None, :]
    return pos, neg


def _tile_forward(logits: Tensor, pos: Tensor, neg: Tensor, form: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per-anchor loss, positive count and log-normaliser for one tile.

    Args:
        logits: a_ij for the tile, (b, N). pos, neg: (b, N) masks.

    Returns:
        ``(loss_b, num_pos_b, log_norm_b)``: the per-anchor loss before averaging (0 where the
        anchor has no positive), |P(i)|, and log of the negative sum (zhao) or of the full
        denominator (supcon); about -3.4e38 (float32) where that set is empty.
    """
    # A finite fill instead of -inf: an empty set then gives a huge negative log-normaliser whose
    # contributions vanish, and autograd through logsumexp stays free of NaN (the dense path).
    neg_inf = torch.finfo(logits.dtype).min
    num_pos = pos.sum(dim=1)  # (b,)
    if form == "zhao":
        log_norm = torch.logsumexp(logits.masked_fill(~neg, neg_inf), dim=1)  # (b,)
        # log(exp(a_ip) / (exp(a_ip) + sum_n exp(a_in))) = -softplus(log_neg - a_ip), stable for -inf.
        log_prob = -F.softplus(log_norm[:, None] - logits)  # (b, N)
    else:
        log_norm = torch.logsumexp(logits.masked_fill(~(pos | neg), neg_inf), dim=1)  # (b,)
        log_prob = logits - log_norm[:, None]  # (b, N)
    pos_sum = torch.where(pos, log_prob, 0.0).sum(dim=1)  # (b,)
    loss = -pos_sum / num_pos.clamp(min=1)  # (b,)
    return loss, num_pos, log_norm


def _validate(z: Tensor, labels: Tensor, temperature: float, form: str) -> None:
    if z.dim() != 2:
        raise ValueError(f"z must have shape (N, D), got {tuple(z.shape)}")
    if labels.shape != z.shape[:1]:
        raise ValueError(f"labels must have shape (N,) = ({z.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {sorted(FORMS)}")


def _prepare(
    z: Tensor,
    labels: Tensor,
    temperature: float,
    form: str,
    ignore_index: int | None,
    image_ids: Tensor | None,
    variant: str,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Validate, drop ignored pixels, normalise (differentiably) and derive the pair scopes."""
    _validate(z, labels, temperature, form)
    pos_groups, neg_groups = pair_scopes(image_ids, variant)
    if image_ids is not None and image_ids.shape != labels.shape:
        raise ValueError(f"image_ids must have shape {tuple(labels.shape)}, got {tuple(image_ids.shape)}")
    if ignore_index is not None:
        keep = labels != ignore_index
        if not bool(keep.all()):
            z, labels = z[keep], labels[keep]  # (N', D), (N',)
            pos_groups = None if pos_groups is None else pos_groups[keep]
            neg_groups = None if neg_groups is None else neg_groups[keep]
    # The similarity is computed in at least float32, also under mixed precision.
    z = F.normalize(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=1)
    return z, labels, pos_groups, neg_groups


def default_block_size(n: int) -> int:
    """Rows per tile so that one (block, N) tile holds about 4M elements (a row-streaming schedule)."""
    return max(1, min(n, max(32, _TILE_ELEMENTS // max(n, 1))))


def _fused_supported(z: Tensor) -> bool:
    """Whether the Triton kernel (:mod:`pixcon.losses.fused`) can take ``z``: CUDA, Triton installed."""
    global _TRITON_FOUND
    if not z.is_cuda or z.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if _TRITON_FOUND is None:
        _TRITON_FOUND = importlib.util.find_spec("triton") is not None
    return _TRITON_FOUND and z.shape[1] <= FUSED_MAX_DIM


_TRITON_FOUND: bool | None = None
# Widest embedding the fused kernel keeps in registers; wider ones take the torch path.
FUSED_MAX_DIM = 512


def pixel_contrastive_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    form: Form = "zhao",
    ignore_index: int | None = 255,
    *,
    image_ids: Tensor | None = None,
    variant: Variant = "batch",
    block_size: int | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Pixel-wise supervised contrastive loss, exact, without an N x N matrix.

    Args:
        z: Pixel embeddings, shape (N, D). L2-normalised here (in float32 at least).
        labels: Integer class ids, shape (N,). Pixels equal to ``ignore_index`` are dropped.
        temperature: t > 0 (the torch path needs t >= 0.003).
        form: ``"zhao"`` (Zhao et al. Eq. 1) or ``"supcon"`` (Khosla et al. L_out).
        ignore_index: Label to drop, or ``None``.
        image_ids: Image index of every pixel, shape (N,); needed for ``"within"``/``"cross"``.
        variant: ``"batch"``, ``"within"`` or ``"cross"`` (see module docstring).
        block_size: Rows per block of the torch path; ``None`` picks a default.
        backend: ``"auto"`` (the Triton kernel for CUDA tensors when Triton is installed, else
            the torch path), ``"torch"`` or ``"triton"``.

    Returns:
        Scalar: mean over anchors with at least one positive. A batch without any such anchor
        (one pixel, everything ignored, every label unique) gives 0 with the graph kept.
    """
    total, count = pixel_contrastive_sum(
        z,
        labels,
        temperature,
        form,
        ignore_index,
        image_ids=image_ids,
        variant=variant,
        block_size=block_size,
        backend=backend,
    )
    return total / count.clamp(min=1)


def pixel_contrastive_sum(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    form: Form = "zhao",
    ignore_index: int | None = 255,
    *,
    image_ids: Tensor | None = None,
    variant: Variant = "batch",
    block_size: int | None = None,
    anchors: tuple[int, int] | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """The per-anchor losses of :func:`pixel_contrastive_loss` summed, and how many anchors count.

    Args:
        anchors: ``(start, stop)``: only pixels ``start:stop`` (indices into `z`, ignored pixels
            included) act as anchors; every pixel still acts as a positive or negative. Under DDP
            each rank takes its own pixels of the gathered batch as anchors, so the ranks' sums
            add up to the global sum without computing any row twice.
        Others: as in :func:`pixel_contrastive_loss`.

    Returns:
        ``(sum, count)``: a differentiable scalar and an int64 scalar (anchors with a positive).
    """
    start, stop = (0, z.shape[0]) if anchors is None else anchors
    if not 0 <= start <= stop <= z.shape[0]:
        raise ValueError(f"anchors must satisfy 0 <= start <= stop <= {z.shape[0]}, got {anchors}")
    if block_size is not None and int(block_size) < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    fused = _fused_supported(z)
    if backend == "triton" and not fused and not _interpreting():
        raise ValueError(
            "backend='triton' needs Triton and a CUDA tensor of float32/bfloat16/float16 with "
            f"D <= {FUSED_MAX_DIM} (or TRITON_INTERPRET=1), got {z.dtype} of shape {tuple(z.shape)} "
            f"on {z.device}"
        )
    if backend == "triton" or (backend == "auto" and fused):
        _validate(z, labels, temperature, form)
        if image_ids is not None and image_ids.shape != labels.shape:
            raise ValueError(f"image_ids must have shape {tuple(labels.shape)}, got {tuple(image_ids.shape)}")
        pos_groups, neg_groups = pair_scopes(image_ids, variant)
        # Imported here: it imports Triton, needed only when a CUDA tensor (or the interpreter) takes this path.
        from pixcon.losses.fused import fused_pixel_contrastive_sum

        return fused_pixel_contrastive_sum(
            z,
            labels,
            float(temperature),
            form,
            ignore_index,
            pos_groups=pos_groups,
            neg_groups=neg_groups,
            anchors=(start, stop),
        )
    z_all = z
    if ignore_index is not None and anchors is not None:
        kept = (labels != ignore_index).long().cumsum(0)  # (N,)
        start, stop = (int(kept[i - 1]) if i > 0 else 0 for i in (start, stop))
    z, labels, pos_groups, neg_groups = _prepare(
        z, labels, temperature, form, ignore_index, image_ids, variant
    )
    n = z.shape[0]
    if anchors is None:
        start, stop = 0, n
    if n < 2 or start == stop:
        return z_all.sum() * 0.0, torch.zeros((), dtype=torch.long, device=z.device)
    plan = plan_tiles(labels, pos_groups, neg_groups, (start, stop), block_size)
    return BlockedPixelContrast.apply(z, plan, float(temperature), form)


def _interpreting() -> bool:
    """Triton's CPU interpreter is on (``TRITON_INTERPRET=1``): the kernel runs on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def pixel_contrastive_loss_dense(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    form: Form = "zhao",
    ignore_index: int | None = 255,
    *,
    image_ids: Tensor | None = None,
    variant: Variant = "batch",
) -> Tensor:
    """The same loss as :func:`pixel_contrastive_loss`, written densely with autograd.

    Materialises several (N, N) matrices: O(N^2) memory. Kept as a second, independent
    implementation for tests and as the baseline of ``bench/loss.py``.
    """
    z_all = z
    z, labels, pos_groups, neg_groups = _prepare(
        z, labels, temperature, form, ignore_index, image_ids, variant
    )
    n = z.shape[0]
    if n < 2:
        return z_all.sum() * 0.0
    logits = z @ z.t() / temperature  # (N, N)
    pos, neg = _tile_masks(slice(0, n), labels, pos_groups, neg_groups)  # (N, N) each
    loss, num_pos, _ = _tile_forward(logits, pos, neg, form)  # (N,)
    has_pos = num_pos > 0
    if not bool(has_pos.any()):
        return z_all.sum() * 0.0
    return loss[has_pos].mean()

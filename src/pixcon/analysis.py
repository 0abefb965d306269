"""Analysis of pixel embeddings: spectrum, effective rank, cluster scores, class-balanced sampling.

A contrastive objective can collapse the embedding into a few directions. The spectrum of the
embedding covariance shows it: with embeddings ``z`` (N, D), the covariance
``C = (z - mean)^T (z - mean) / (N - 1)`` (D, D) is symmetric positive semi-definite, its singular
values are its eigenvalues, and the *effective rank* (Roy & Vetterli, "The effective rank: a
measure of effective dimensionality", EUSIPCO 2007) is ``exp(H(p))`` with ``p = s / sum(s)`` the
normalised singular values and ``H`` the Shannon entropy (natural log, ``0 log 0 = 0``). It is D
for an isotropic embedding (identity covariance) and 1 when all variance lies along one direction.

:func:`sample_pixel_embeddings` collects a class-balanced, seeded set of pixel embeddings from a
model (its projection head, or its decoder features) over a dataset;
:func:`embedding_diagnostics` turns embeddings and labels into the JSON-safe dict that
``pixcon diagnose`` writes (:mod:`pixcon.diagnostics`) and the report shows (:mod:`pixcon.report`).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pixcon.clustering import cluster_scores
from pixcon.data.base import SegmentationDataset
from pixcon.losses.dense import balanced_quotas, downsample_labels

if TYPE_CHECKING:
    from pixcon.models.segmenter import Segmenter

log = logging.getLogger(__name__)

Source = Literal["projection", "decoder"]
SOURCES: tuple[str, ...] = ("projection", "decoder")


def embedding_spectrum(z: Tensor | np.ndarray) -> np.ndarray:
    """Singular values of the covariance of ``z``, largest first.

    Args:
        z: Embeddings, shape (N, D), N >= 2. Computed in float64.

    Returns:
        float64, shape (D,), non-negative, descending.

    Raises:
        ValueError: ``z`` is not 2-D or has fewer than 2 rows.
    """
    x = z.detach().cpu().double().numpy() if isinstance(z, Tensor) else np.asarray(z, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"embeddings must have shape (N, D) with N >= 2, got {x.shape}")
    centred = x - x.mean(axis=0, keepdims=True)  # (N, D)
    cov = centred.T @ centred / (x.shape[0] - 1)  # (D, D)
    return np.linalg.svd(cov, compute_uv=False)  # (D,)


def effective_rank(singular_values: Tensor | np.ndarray) -> float:
    """Effective rank ``exp(H(s / sum(s)))`` of Roy & Vetterli (2007).

    Args:
        singular_values: Non-negative values, shape (D,).

    Returns:
        A float in [1, D]; 0.0 if every value is 0 (an embedding collapsed to a single point).

    Raises:
        ValueError: A negative or non-finite value.
    """
    s = np.asarray(singular_values, dtype=np.float64).reshape(-1)  # (D,)
    if not np.isfinite(s).all() or (s < 0).any():
        raise ValueError("singular values must be finite and non-negative")
    total = s.sum()
    if total == 0:
        return 0.0
    p = s[s > 0] / total  # (D',) 0 log 0 = 0: zero values drop out
    return float(np.exp(-(p * np.log(p)).sum()))


def pixel_embeddings(model: Segmenter, images: Tensor, source: Source = "projection") -> Tensor:
    """Dense embeddings of a batch at feature resolution.

    Args:
        model: A :class:`~pixcon.models.Segmenter` (``project`` and ``features``).
        images: (B, C, H, W) in [0, 1]; any size (padded to the model's stride for ``decoder``).
        source: ``"projection"``: the L2-normalised projection-head output (B, D, h, w);
            ``"decoder"``: the decoder features (B, C_dec, h, w), not normalised.

    Returns:
        (B, D, h, w) with ``h = ceil(H / r)``, r the feature stride (4 for DeepLabV3+).
    """
    if source == "projection":
        return model.project(images)  # (B, D, h, w)
    if source != "decoder":
        raise ValueError(f"unknown embedding source {source!r}; choose from {list(SOURCES)}")
    h, w = images.shape[-2:]
    stride = int(getattr(model, "stride", 32))
    pad_h, pad_w = (-h) % stride, (-w) % stride
    if pad_h or pad_w:
        mode = "reflect" if min(h, w) > max(pad_h, pad_w) else "replicate"
        images = F.pad(images, (0, pad_w, 0, pad_h), mode=mode)  # (B, C, H', W')
    _, decoded = model.features(images)  # (B, C_dec, H'/r, W'/r)
    scale = images.shape[-2] / decoded.shape[-2]  # input pixels per feature pixel
    return decoded[..., : math.ceil(h / scale), : math.ceil(w / scale)]


def _keep_lowest_per_class(prio: Tensor, labels: Tensor, limit: Tensor) -> Tensor:
    """Indices of the ``limit[c]`` lowest priorities of each class c; prio, labels (N,) -> (M,)."""
    order = torch.argsort(labels.double() * 2.0 + prio)  # grouped by class, ascending priority
    sorted_labels = labels[order]  # (N,)
    counts = torch.bincount(sorted_labels, minlength=len(limit))  # (C,)
    starts = torch.cumsum(counts, 0) - counts  # (C,)
    rank = torch.arange(len(order)) - starts[sorted_labels]  # (N,) rank within its class
    return order[rank < limit[sorted_labels]]


@torch.no_grad()
def sample_pixel_embeddings(
    model: Segmenter,
    dataset: SegmentationDataset,
    num_pixels: int = 2000,
    source: Source = "projection",
    seed: int = 0,
    max_images: int | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """A class-balanced, seeded sample of pixel embeddings and their labels.

    Every non-ignored pixel at feature resolution (masks downsampled with nearest, as the loss
    does) gets a uniform random priority from a generator seeded with ``seed``. The pool keeps the
    ``num_pixels`` lowest priorities per class, so memory stays bounded over any dataset, and the
    result takes equal shares per class (small classes give the rest away, see
    :func:`~pixcon.losses.dense.balanced_quotas`): a uniform sample within each class. The same
    seed and dataset give the same pixels for any model with the same feature stride, so
    embeddings of two models (before / after pretraining) are paired pixel by pixel.

    Args:
        model: A :class:`~pixcon.models.Segmenter`; used in eval mode on its own device.
        dataset: Yields ``(image (C, H, W), mask (H, W))``.
        num_pixels: Total pixels N to return (fewer if the dataset has fewer).
        source: ``"projection"`` or ``"decoder"`` (see :func:`pixel_embeddings`).
        seed: Seeds the pixel priorities.
        max_images: Only the first images of the dataset (None: all).
        batch_size: Images per forward pass (1 for images of different sizes).
        progress: Show a progress bar.

    Returns:
        ``(z (N, D) float32 on the CPU, labels (N,) int64)``, grouped by class.
    """
    if num_pixels < 1:
        raise ValueError(f"num_pixels must be >= 1, got {num_pixels}")
    ignore = int(getattr(dataset, "ignore_index", 255))
    num_classes = int(dataset.num_classes)
    n_images = len(dataset) if max_images is None else min(len(dataset), max_images)
    # torch's annotation asks for a Dataset subclass; a map-style dataset (__getitem__, __len__) is all it uses
    subset = torch.utils.data.Subset(cast("Dataset[tuple[Tensor, Tensor]]", dataset), range(n_images))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    limit = torch.full((num_classes,), num_pixels, dtype=torch.long)  # (C,)
    pool: tuple[Tensor, Tensor, Tensor] | None = None  # kept: z (P, D), labels (P,), priorities (P,)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    for images, masks in tqdm(loader, desc=f"embeddings ({source})", disable=not progress, leave=False):
        emb = pixel_embeddings(model, images.to(device), source).float().cpu()  # (B, D, h, w)
        labels = downsample_labels(masks, (emb.shape[-2], emb.shape[-1])).reshape(-1)  # (B*h*w,)
        z = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])  # (B*h*w, D)
        prio = torch.rand(labels.shape, generator=g, dtype=torch.float64)  # (B*h*w,)
        keep = (labels != ignore) & (labels >= 0) & (labels < num_classes)
        z, labels, prio = z[keep], labels[keep], prio[keep]
        if pool is not None:
            z, labels, prio = (
                torch.cat([old, new]) for old, new in zip(pool, (z, labels, prio), strict=True)
            )
        idx = _keep_lowest_per_class(prio, labels, limit)
        pool = (z[idx], labels[idx], prio[idx])
    model.train(was_training)
    if pool is None or len(pool[1]) == 0:
        raise ValueError("the dataset has no labelled pixel to sample embeddings from")
    z, y, p = pool
    quotas = balanced_quotas(torch.bincount(y, minlength=num_classes), num_pixels)  # (C,)
    idx = _keep_lowest_per_class(p, y, quotas)
    return z[idx], y[idx]


def embedding_diagnostics(
    z: Tensor | np.ndarray, labels: Tensor | np.ndarray, class_names: list[str] | None = None
) -> dict[str, Any]:
    """Diagnostics of one set of embeddings, as a JSON-safe dict.

    Keys: ``dim`` (D), ``num_pixels`` (N), ``class_counts`` ({name: pixels}), ``singular_values``
    (of the covariance, largest first), ``effective_rank``, and CLAWS's cluster scores
    (:func:`pixcon.clustering.cluster_scores`: ``kmeans_nmi``, ``kmeans_ari``, ``gmm_nmi``,
    ``gmm_ari``, ``cluster_k``, ``cluster_points``): how well k-means and a Gaussian mixture with
    one cluster per present class recover the labels.

    Args:
        z: Embeddings, shape (N, D).
        labels: Class ids, shape (N,).
        class_names: Names for the ids; defaults to the ids as strings.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)  # (N,)
    s = embedding_spectrum(z)  # (D,)
    ids, counts = np.unique(y, return_counts=True)

    def name(i: int) -> str:
        return class_names[i] if class_names is not None and 0 <= i < len(class_names) else str(i)

    return {
        "dim": int(s.shape[0]),
        "num_pixels": int(y.shape[0]),
        "class_counts": {name(int(i)): int(c) for i, c in zip(ids, counts, strict=True)},
        "singular_values": [float(v) for v in s],
        "effective_rank": effective_rank(s),
        **(cluster_scores(z, y, ignore_index=None) if len(ids) > 1 else {}),
    }

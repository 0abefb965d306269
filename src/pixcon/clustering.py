"""Clustering of pixel embeddings: k-means in torch (HCSC's prototypes) and cluster scores (CLAWS).

* :func:`kmeans` -- Lloyd's algorithm with k-means++ seeding (Arthur & Vassilvitskii, 2007), in
  torch on the embeddings' device (CPU or GPU), seeded by a CPU generator so that a seed gives the
  same clustering on every device. ``spherical=True`` (the default) clusters directions: the
  points and the centroids are unit vectors and the nearest centroid is the one of highest cosine
  similarity (spherical k-means, Dhillon & Modha 2001).
* :func:`hierarchical_kmeans` -- HCSC's hierarchy of prototypes (Guo et al., "HCSC: Hierarchical
  Contrastive Selective Coding", CVPR 2022, Sec. 3.2): level 0 clusters the embeddings, level
  l + 1 clusters the centroids of level l, so every prototype has exactly one parent one level up
  (e.g. 64 -> 16 -> 4 prototypes).
* :func:`concentration` -- the per-prototype temperature phi of PCL (Li et al., "Prototypical
  Contrastive Learning of Unsupervised Representations", ICLR 2021, Eq. 12), which HCSC reuses.
* :func:`cluster_scores` -- CLAWS's evaluation (Herrera-Gerena et al., "CLAWS: Contrastive Learning
  with hard Attention and Weak Supervision", 2021): cluster the embeddings with k-means and with a
  Gaussian mixture (scikit-learn) and score the clusters against the labels with NMI and ARI.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from torch import Tensor

__all__ = [
    "Hierarchy",
    "KMeansResult",
    "cluster_scores",
    "concentration",
    "hierarchical_kmeans",
    "kmeans",
    "kmeans_plus_plus",
    "squared_distances",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KMeansResult:
    """The outcome of :func:`kmeans`.

    Attributes:
        centroids: (K, D), unit norm when spherical.
        assignments: (N,) int64, index of each point's nearest centroid (of *these* centroids).
        inertia: Sum of squared distances of the points to their centroids (for unit vectors
            2 * sum(1 - cos)).
        iterations: Lloyd iterations run.
    """

    centroids: Tensor
    assignments: Tensor
    inertia: float
    iterations: int


@dataclass(frozen=True)
class Hierarchy:
    """HCSC's tree of prototypes, finest level first.

    Attributes:
        centroids: Level l: (K_l, D).
        parents: Level l < L - 1: (K_l,) int64, the level-(l + 1) prototype each level-l prototype
            belongs to (its nearest one). ``len(parents) == L - 1``.
        assignments: Level l: (N,) int64, the level-l prototype of each input point (the nearest
            level-0 prototype, then up the tree).
        concentration: Level l: (K_l,), phi of :func:`concentration`.
    """

    centroids: list[Tensor]
    parents: list[Tensor]
    assignments: list[Tensor]
    concentration: list[Tensor]


def squared_distances(x: Tensor, centroids: Tensor) -> Tensor:
    """||x_i - c_k||^2 for every pair, (N, D) x (K, D) -> (N, K), clamped at 0."""
    d2 = x.pow(2).sum(1, keepdim=True) + centroids.pow(2).sum(1)[None, :] - 2.0 * x @ centroids.t()  # (N, K)
    return d2.clamp_min_(0.0)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): indices of k distinct points of ``x``.

    The first centre is uniform; each next one is drawn with probability proportional to the
    squared distance to the nearest centre chosen so far. The draws use the CPU ``generator``, so a
    seed picks the same centres on every device.

    Args:
        x: Points, shape (N, D).
        k: Number of centres, 1 <= k <= N.
        generator: A CPU ``torch.Generator``.

    Returns:
        int64 indices into ``x``, shape (k,), on CPU.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of points), got {k}")
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    closest = squared_distances(x, x[chosen[0]][None])[:, 0]  # (N,)
    for _ in range(1, k):
        weights = closest.double().cpu()
        weights[chosen] = 0.0
        if float(weights.sum()) <= 0.0:  # fewer distinct points than k: any unused point will do
            weights = torch.ones(n, dtype=torch.float64)
            weights[chosen] = 0.0
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(nxt)
        closest = torch.minimum(closest, squared_distances(x, x[nxt][None])[:, 0])
    return torch.tensor(chosen, dtype=torch.long)


def _update_centroids(x: Tensor, assignments: Tensor, centroids: Tensor, spherical: bool) -> Tensor:
    """Mean of each cluster's points; an empty cluster takes the point farthest from its centroid."""
    k, d = centroids.shape
    sums = torch.zeros(k, d, dtype=x.dtype, device=x.device).index_add_(0, assignments, x)  # (K, D)
    counts = torch.bincount(assignments, minlength=k)  # (K,)
    new = sums / counts.clamp_min(1)[:, None].to(x.dtype)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        # Re-seed each empty cluster with the worst-served point (deterministic, no RNG needed).
        far = squared_distances(x, centroids).gather(1, assignments[:, None])[:, 0]  # (N,)
        order = torch.argsort(far, descending=True).tolist()
        for c, i in zip(empty, order, strict=False):
            new[c] = x[i]
    return F.normalize(new, dim=1) if spherical else new


def kmeans(
    x: Tensor,
    k: int,
    *,
    iters: int = 20,
    spherical: bool = True,
    seed: int = 0,
    n_init: int = 1,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding, on ``x``'s device.

    Stops when the assignments no longer change or after ``iters`` iterations; the returned
    assignments are always those of the returned centroids (each point's nearest centroid). Ties
    go to the lower centroid index.

    Args:
        x: Points, shape (N, D), float. With ``spherical=True`` they are L2-normalised here.
        k: Number of clusters, 1 <= k <= N.
        iters: Maximum Lloyd iterations, >= 1 (PCL and HCSC run 20).
        spherical: Cluster directions (unit centroids, cosine similarity) instead of points.
        seed: Seed of the CPU generator of the k-means++ draws.
        n_init: Independent seedings; the one of lowest inertia is kept.

    Returns:
        A :class:`KMeansResult`.
    """
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (N, D), got {tuple(x.shape)} {x.dtype}")
    if iters < 1 or n_init < 1:
        raise ValueError(f"iters and n_init must be >= 1, got {iters} and {n_init}")
    x = F.normalize(x, dim=1) if spherical else x
    generator = torch.Generator().manual_seed(int(seed))
    best: KMeansResult | None = None
    for _ in range(n_init):
        centroids = x[kmeans_plus_plus(x, k, generator).to(x.device)].clone()  # (K, D)
        previous: Tensor | None = None
        iterations = 0
        while iterations < iters:
            iterations += 1
            assignments = squared_distances(x, centroids).argmin(1)  # (N,)
            if previous is not None and torch.equal(assignments, previous):
                break
            previous = assignments
            centroids = _update_centroids(x, assignments, centroids, spherical)
        d2 = squared_distances(x, centroids)  # (N, K)
        assignments = d2.argmin(1)  # (N,), consistent with the returned centroids
        inertia = float(d2.gather(1, assignments[:, None]).sum())
        result = KMeansResult(centroids, assignments, inertia, iterations)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best


def concentration(
    x: Tensor, centroids: Tensor, assignments: Tensor, temperature: float, alpha: float = 10.0
) -> Tensor:
    """Per-cluster concentration phi (PCL, Li et al. ICLR 2021, Eq. 12), as HCSC uses it.

    phi_k = sum_{z in k} ||z - c_k|| / (n_k * log(n_k + alpha)): tight, populous clusters get a small
    temperature. As in the reference implementations of PCL and HCSC, clusters with fewer than two
    points take the largest phi, the values are clipped to their 10th-90th percentile and rescaled
    to mean ``temperature``.

    Args:
        x: Points, shape (N, D).
        centroids: (K, D).
        assignments: (N,) int64 in [0, K).
        temperature: The mean of the returned phi, > 0.
        alpha: Smoothing of log(n_k + alpha), > 0.

    Returns:
        phi, shape (K,), positive, mean ``temperature``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = centroids.shape[0]
    dist = (x - centroids[assignments]).norm(dim=1).double()  # (N,)
    sums = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, assignments, dist)  # (K,)
    counts = torch.bincount(assignments, minlength=k).double()  # (K,)
    phi = sums / (counts.clamp_min(1) * torch.log(counts + alpha))  # (K,)
    small = counts < 2
    if bool(small.all()):
        phi = torch.ones_like(phi)
    elif bool(small.any()):
        phi[small] = phi[~small].max()
    lo, hi = torch.quantile(phi, 0.1), torch.quantile(phi, 0.9)
    phi = phi.clamp(lo, hi)
    if float(phi.mean()) <= 0:  # every cluster is a single repeated point
        phi = torch.ones_like(phi)
    return (temperature * phi / phi.mean()).to(x.dtype)


def hierarchical_kmeans(
    x: Tensor,
    ks: Sequence[int],
    *,
    iters: int = 20,
    spherical: bool = True,
    seed: int = 0,
    temperature: float = 0.2,
) -> Hierarchy:
    """HCSC's hierarchical prototypes (Guo et al., CVPR 2022, Sec. 3.2): k-means on k-means.

    Level 0 clusters the points into ``ks[0]`` prototypes; level l + 1 clusters the ``ks[l]``
    prototypes of level l into ``ks[l + 1]``. The parent of a prototype is its k-means assignment
    one level up, i.e. its nearest prototype there, so the tree is consistent by construction. A
    point's level-l prototype follows the parents from its level-0 prototype.

    Args:
        x: Points, shape (N, D).
        ks: Prototypes per level, finest first, non-increasing, ``ks[0] <= N``.
        iters, spherical: As in :func:`kmeans`.
        seed: Level l uses ``seed + l``.
        temperature: Mean of each level's :func:`concentration`.

    Returns:
        A :class:`Hierarchy`.
    """
    ks = [int(k) for k in ks]
    if not ks or any(b > a for a, b in itertools.pairwise(ks)) or ks[-1] < 1:
        raise ValueError(f"ks must be a non-empty, non-increasing list of positive sizes, got {ks}")
    points = F.normalize(x, dim=1) if spherical else x
    centroids: list[Tensor] = []
    parents: list[Tensor] = []
    assignments: list[Tensor] = []
    phis: list[Tensor] = []
    inputs = points
    for level, k in enumerate(ks):
        result = kmeans(inputs, k, iters=iters, spherical=spherical, seed=seed + level)
        if level == 0:
            assignments.append(result.assignments)  # (N,)
        else:
            parents.append(result.assignments)  # (K_{l-1},)
            assignments.append(result.assignments[assignments[-1]])  # (N,)
        phis.append(concentration(inputs, result.centroids, result.assignments, temperature))
        centroids.append(result.centroids)
        inputs = result.centroids
    return Hierarchy(centroids, parents, assignments, phis)


def cluster_scores(
    z: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    k: int | None = None,
    seed: int = 0,
    *,
    ignore_index: int | None = 255,
    max_points: int | None = 20_000,
    gmm_covariance: str = "diag",
    normalize: bool = True,
) -> dict[str, Any]:
    """CLAWS's cluster evaluation: NMI and ARI of k-means and Gaussian-mixture clusters vs labels.

    Clusters the embeddings with ``sklearn.cluster.KMeans`` and ``sklearn.mixture.GaussianMixture``
    (k components each) and compares the clusters with the labels by normalised mutual
    information and the adjusted Rand index (``sklearn.metrics``). Both scores are 1 for a
    clustering equal to the labels up to renaming, and about 0 for one independent of them.

    Args:
        z: Embeddings, shape (N, D), e.g. the pixels of ``Segmenter.project``.
        labels: Class ids, shape (N,).
        k: Clusters; defaults to the number of distinct (non-ignored) labels.
        seed: ``random_state`` of both estimators and of the subsampling.
        ignore_index: Pixels with this label are dropped first (None keeps all).
        max_points: Uniform random subsample of at most this many points (None: all), for speed.
        gmm_covariance: ``covariance_type`` of the mixture; ``"diag"`` stays cheap and well-posed
            in 256 dimensions, ``"full"`` suits low-dimensional embeddings.
        normalize: L2-normalise the embeddings first (the contrastive losses compare directions).

    Returns:
        A JSON-safe dict, ready to merge into a report: ``cluster_k``, ``cluster_points`` (ints),
        ``kmeans_nmi``, ``kmeans_ari``, ``gmm_nmi``, ``gmm_ari`` (floats).
    """
    zt = torch.as_tensor(z).detach().cpu().double()
    yt = torch.as_tensor(labels).detach().cpu().long().flatten()
    if zt.dim() != 2 or yt.shape[0] != zt.shape[0]:
        raise ValueError(f"expected z (N, D) and labels (N,), got {tuple(zt.shape)} and {tuple(yt.shape)}")
    if ignore_index is not None:
        keep = yt != ignore_index
        zt, yt = zt[keep], yt[keep]
    if max_points is not None and zt.shape[0] > max_points:
        idx = torch.randperm(zt.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        zt, yt = zt[idx], yt[idx]
    n = int(zt.shape[0])
    k = int(k) if k is not None else int(torch.unique(yt).numel())
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= number of points, got k={k} for {n} points")
    if normalize:
        zt = F.normalize(zt, dim=1)
    x, y = zt.numpy(), yt.numpy()
    kmeans_pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    gmm_pred = GaussianMixture(
        n_components=k, covariance_type=gmm_covariance, random_state=seed, reg_covar=1e-5
    ).fit_predict(x)
    scores = {
        "cluster_k": k,
        "cluster_points": n,
        "kmeans_nmi": float(normalized_mutual_info_score(y, kmeans_pred)),
        "kmeans_ari": float(adjusted_rand_score(y, kmeans_pred)),
        "gmm_nmi": float(normalized_mutual_info_score(y, gmm_pred)),
        "gmm_ari": float(adjusted_rand_score(y, gmm_pred)),
    }
    log.debug("cluster scores on %d points, k=%d: %s", n, k, scores)
    return {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in scores.items()}

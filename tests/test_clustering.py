"""k-means, HCSC's hierarchy, PCL's concentration and CLAWS's cluster scores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixcon.clustering import (
    cluster_scores,
    concentration,
    hierarchical_kmeans,
    kmeans,
    kmeans_plus_plus,
    squared_distances,
)


def _blobs(k: int, d: int, per: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit directions e_0..e_{k-1} plus noise, shuffled; returns points and true labels."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(d)[:k]  # (k, d), orthogonal
    labels = torch.arange(k).repeat_interleave(per)
    x = centers[labels] + noise * torch.randn(k * per, d, generator=g)
    perm = torch.randperm(k * per, generator=g)
    return x[perm], labels[perm]


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two labelings define the same partition (equal up to renaming)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize(("k", "d", "seed"), [(2, 4, 0), (5, 8, 1), (8, 16, 2)])
def test_kmeans_recovers_well_separated_clusters_exactly(k: int, d: int, seed: int) -> None:
    x, labels = _blobs(k, d, per=30, noise=0.05, seed=seed)
    result = kmeans(x, k, seed=seed)
    assert _same_partition(result.assignments, labels)
    # each centroid is the normalised direction of its cluster: close to a basis vector
    assert torch.allclose(result.centroids.norm(dim=1), torch.ones(k), atol=1e-5)
    assert (result.centroids.max(dim=1).values > 0.98).all()


def test_euclidean_kmeans_recovers_clusters_and_means() -> None:
    g = torch.Generator().manual_seed(3)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(20)
    x = centers[labels] + 0.3 * torch.randn(60, 2, generator=g)
    result = kmeans(x, 3, spherical=False, seed=0)
    assert _same_partition(result.assignments, labels)
    for c in range(3):  # a converged centroid is the plain mean of its members
        members = x[result.assignments == c]
        torch.testing.assert_close(result.centroids[c], members.mean(0))


def test_kmeans_returns_a_lloyd_fixed_point_and_is_seeded() -> None:
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    result = kmeans(x, 7, iters=100, seed=5)
    xn = F.normalize(x, dim=1)
    assert result.iterations < 100  # converged
    assert torch.equal(result.assignments, squared_distances(xn, result.centroids).argmin(1))
    for c in range(7):  # spherical update: the normalised mean of the members
        torch.testing.assert_close(
            result.centroids[c], F.normalize(xn[result.assignments == c].mean(0), dim=0)
        )
    again = kmeans(x, 7, iters=100, seed=5)
    assert torch.equal(again.assignments, result.assignments)
    assert torch.equal(again.centroids, result.centroids)
    assert result.inertia == pytest.approx(
        float(((xn - result.centroids[result.assignments]) ** 2).sum()), rel=1e-5
    )


def test_kmeans_plus_plus_draws_proportionally_to_squared_distance() -> None:
    # Points 0, 1, 3 on a line: after a first centre at 0, the next is 1 or 3 with odds 1 : 9.
    x = torch.tensor([[0.0], [1.0], [3.0]])
    seconds = []
    for seed in range(3000):
        first, second = kmeans_plus_plus(x, 2, torch.Generator().manual_seed(seed)).tolist()
        if first == 0:
            seconds.append(second)
    assert len(seconds) > 800
    share_of_3 = seconds.count(2) / len(seconds)
    assert share_of_3 == pytest.approx(0.9, abs=0.03)
    assert 0 not in seconds  # a chosen point is never drawn again


def test_kmeans_handles_duplicates_and_rejects_bad_k() -> None:
    x = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    result = kmeans(x, 3, seed=0)  # more clusters than distinct points: no crash, no NaN
    assert torch.isfinite(result.centroids).all()
    assert set(result.assignments.tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, 11)


def test_hierarchy_is_consistent() -> None:
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    h = hierarchical_kmeans(x, [20, 6, 2], seed=0)
    assert [c.shape for c in h.centroids] == [(20, 8), (6, 8), (2, 8)]
    assert [p.shape for p in h.parents] == [(20,), (6,)]
    xn = F.normalize(x, dim=1)
    assert torch.equal(h.assignments[0], (xn @ h.centroids[0].t()).argmax(1))
    for level, parents in enumerate(h.parents):
        fine, coarse = h.centroids[level], h.centroids[level + 1]
        # each fine centroid's parent is its nearest (most similar) coarse centroid
        assert torch.equal(parents, (fine @ coarse.t()).argmax(1))
        assert torch.equal(h.assignments[level + 1], parents[h.assignments[level]])
        assert set(parents.tolist()) == set(range(coarse.shape[0]))  # no empty coarse cluster
    for c, phi in zip(h.centroids, h.concentration, strict=True):
        assert torch.allclose(c.norm(dim=1), torch.ones(c.shape[0]), atol=1e-5)
        assert float(phi.mean()) == pytest.approx(0.2, rel=1e-5)


def test_hierarchy_recovers_nested_structure() -> None:
    # Two super-clusters (around e_0 and e_1), each made of three sub-clusters.
    g = torch.Generator().manual_seed(4)
    supers = torch.eye(6)[:2]
    offsets = 0.25 * torch.eye(6)[2:5]
    centers = torch.stack([supers[s] + offsets[j] for s in range(2) for j in range(3)])  # (6, 6)
    fine_labels = torch.arange(6).repeat_interleave(25)
    x = centers[fine_labels] + 0.01 * torch.randn(150, 6, generator=g)
    h = hierarchical_kmeans(x, [6, 2], seed=0)
    assert _same_partition(h.assignments[0], fine_labels)
    assert _same_partition(h.assignments[1], fine_labels // 3)


def _concentration_reference(x, centroids, assignments, temperature, alpha=10.0) -> np.ndarray:
    k = len(centroids)
    phi = np.zeros(k)
    counts = np.array([(assignments == c).sum() for c in range(k)])
    for c in range(k):
        dists = [np.linalg.norm(x[i] - centroids[c]) for i in range(len(x)) if assignments[i] == c]
        if len(dists) > 1:
            phi[c] = sum(dists) / (len(dists) * math.log(len(dists) + alpha))
    phi[counts < 2] = phi[counts >= 2].max()
    phi = np.clip(phi, np.percentile(phi, 10), np.percentile(phi, 90))
    return temperature * phi / phi.mean()


def test_concentration_matches_pcl_formula() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    centroids = torch.randn(7, 4, generator=g, dtype=torch.float64)
    assignments = torch.randint(6, (60,), generator=g)  # cluster 6 is empty
    assignments[0] = 5
    assignments[assignments == 5] = 4
    assignments[0] = 5  # cluster 5 has a single point
    got = concentration(x, centroids, assignments, temperature=0.3)
    expected = _concentration_reference(x.numpy(), centroids.numpy(), assignments.numpy(), 0.3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_cluster_scores_are_one_for_separated_embeddings() -> None:
    x, labels = _blobs(4, 8, per=50, noise=0.02, seed=0)
    scores = cluster_scores(x, labels, seed=0)
    assert scores["cluster_k"] == 4 and scores["cluster_points"] == 200
    for key in ("kmeans_nmi", "kmeans_ari", "gmm_nmi", "gmm_ari"):
        assert scores[key] == pytest.approx(1.0), key


def test_cluster_scores_are_near_zero_for_random_labels() -> None:
    x, _ = _blobs(4, 8, per=400, noise=0.02, seed=1)
    random_labels = torch.randint(4, (1600,), generator=torch.Generator().manual_seed(9))
    scores = cluster_scores(x, random_labels, seed=0)
    for key in ("kmeans_nmi", "kmeans_ari", "gmm_nmi", "gmm_ari"):
        assert abs(scores[key]) < 0.02, (key, scores[key])


def test_cluster_scores_drop_ignored_pixels_subsample_and_serialise() -> None:
    x, labels = _blobs(3, 5, per=40, noise=0.02, seed=2)
    labels = labels.clone()
    labels[:10] = 255
    scores = cluster_scores(x.numpy(), labels.numpy(), k=3, seed=1, max_points=100)
    assert scores["cluster_points"] == 100 and scores["cluster_k"] == 3
    assert scores["kmeans_ari"] == pytest.approx(1.0)
    json.dumps(scores, allow_nan=False)
    with pytest.raises(ValueError, match="k <="):
        cluster_scores(x[:2], labels[:2] * 0, k=3)

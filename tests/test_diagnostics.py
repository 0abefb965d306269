"""Embedding spectrum and effective rank against numpy, the pixel sampler, and `pixcon diagnose`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixcon.analysis import (
    effective_rank,
    embedding_diagnostics,
    embedding_spectrum,
    sample_pixel_embeddings,
)
from pixcon.cli import main


def _direct_effective_rank(s: np.ndarray) -> float:
    """Roy & Vetterli (2007), written out: p_k = s_k / ||s||_1, erank = exp(-sum p_k log p_k)."""
    p = s / np.abs(s).sum()
    return float(np.exp(-sum(pk * np.log(pk) for pk in p if pk > 0)))


def _whitened(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(N, D) with a sample covariance of exactly the identity."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x -= x.mean(0)
    evals, evecs = np.linalg.eigh(x.T @ x / (n - 1))
    return x @ evecs @ np.diag(evals**-0.5) @ evecs.T


@pytest.mark.parametrize("d", [1, 4, 64])
def test_identity_covariance_has_full_effective_rank(d: int) -> None:
    assert effective_rank(np.ones(d)) == pytest.approx(d)
    s = embedding_spectrum(_whitened(500, d))
    np.testing.assert_allclose(s, np.ones(d), atol=1e-9)
    assert effective_rank(s) == pytest.approx(d, rel=1e-9)


def test_rank_one_embedding_has_effective_rank_one() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 1)) * rng.normal(size=(1, 32))  # every row along one direction
    assert effective_rank(embedding_spectrum(z)) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(np.array([3.0, 0.0, 0.0])) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_effective_rank_matches_direct_computation(seed: int) -> None:
    s = np.sort(np.random.default_rng(seed).exponential(size=20))[::-1]
    assert effective_rank(s) == pytest.approx(_direct_effective_rank(s), rel=1e-12)
    assert 1.0 <= effective_rank(s) <= 20.0


def test_spectrum_is_numpy_svd_of_the_covariance() -> None:
    z = np.random.default_rng(3).normal(size=(200, 12)) @ np.random.default_rng(4).normal(size=(12, 12))
    expected = np.linalg.svd(np.cov(z, rowvar=False), compute_uv=False)
    np.testing.assert_allclose(embedding_spectrum(z), expected, rtol=1e-10)
    z32 = torch.from_numpy(z).float()  # tensors are computed in float64 too
    expected32 = np.linalg.svd(np.cov(z32.double().numpy(), rowvar=False), compute_uv=False)
    np.testing.assert_allclose(embedding_spectrum(z32), expected32, rtol=1e-10)


def test_collapsed_embedding_has_effective_rank_at_most_two() -> None:
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(64, 2)))[0].T  # (2, 64) orthonormal
    z = rng.normal(size=(1000, 2)) * [3.0, 1.0] @ basis + rng.normal(size=64)  # in a 2-D affine subspace
    r = effective_rank(embedding_spectrum(z))
    assert 1.0 < r <= 2.0 + 1e-9
    assert effective_rank(embedding_spectrum(rng.normal(size=(1000, 64)))) > 50


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        effective_rank(np.array([1.0, -0.1]))
    with pytest.raises(ValueError, match=r"\(N, D\) with N >= 2"):
        embedding_spectrum(np.ones((1, 4)))
    assert effective_rank(np.zeros(5)) == 0.0


class _Labels:
    """Images whose first channel holds label / 10 in 4x4 blocks; masks are the labels."""

    num_classes, ignore_index, class_names = 3, 255, ["a", "b", "c"]

    def __init__(self, n: int = 5, size: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        blocks = torch.randint(0, 3, (n, size // 4, size // 4), generator=g)
        blocks[blocks == 2] = torch.where(torch.rand(int((blocks == 2).sum()), generator=g) < 0.9, 1, 2)
        self.masks = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (n, H, W), class 2 rare
        self.masks[0, :4, :4] = 255

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        label = self.masks[i].clamp(max=9).float() / 10
        return torch.stack([label, torch.zeros_like(label), torch.zeros_like(label)]), self.masks[i]


class _BlockMean(nn.Module):
    """project(x) = the 4x4 block means of x, so an embedding's first entry is its label / 10."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def project(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 4) + self.w  # (B, 3, H/4, W/4)


def test_sampler_is_class_balanced_seeded_and_paired_with_labels() -> None:
    data = _Labels()
    z, y = sample_pixel_embeddings(_BlockMean(), data, num_pixels=90, seed=0)
    counts = torch.bincount(y, minlength=3).tolist()
    rare = int((data.masks[:, ::4, ::4] == 2).sum())
    assert sum(counts) == 90 and counts[2] == min(rare, 30) and abs(counts[0] - counts[1]) <= 1
    assert torch.equal((z[:, 0] * 10).round().long(), y)  # each embedding comes with its own label
    z2, y2 = sample_pixel_embeddings(_BlockMean(), data, num_pixels=90, seed=0, batch_size=2)
    assert torch.equal(z, z2) and torch.equal(y, y2)
    z3, _ = sample_pixel_embeddings(_BlockMean(), data, num_pixels=90, seed=1)
    assert not torch.equal(z, z3) or rare < 30


def test_diagnostics_dict_is_json_safe() -> None:
    z, y = torch.randn(50, 6), torch.randint(0, 2, (50,))
    result = embedding_diagnostics(z, y, ["x", "y"])
    clusters = {"cluster_k", "cluster_points", "kmeans_nmi", "kmeans_ari", "gmm_nmi", "gmm_ari"}
    assert set(result) == {
        "dim",
        "num_pixels",
        "class_counts",
        "singular_values",
        "effective_rank",
        *clusters,
    }
    assert result["dim"] == 6 and sum(result["class_counts"].values()) == 50
    json.dumps(result, allow_nan=False)


@pytest.fixture(scope="module")
def pretrained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre")
    argv = ["pretrain", "--data-root", str(tiny_dataset), "--out", str(out), "--steps", "2", "--quiet"]
    argv += ["--set", "data.image_size=32", "--set", "data.batch_size=4", "--set", "model.proj_dim=16"]
    assert main(argv) == 0
    return out / "last.pt"


@pytest.mark.parametrize("source, dim", [("projection", 16), ("decoder", 256)])
def test_diagnose_cli_writes_json_and_plot(
    pretrained: Path, source: str, dim: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["diagnose", str(pretrained), "--out", str(tmp_path), "--source", source, "--num-pixels", "120"]
    assert main([*argv, "--quiet"]) == 0
    result = json.loads((tmp_path / "diagnose.json").read_text())
    assert result["dim"] == dim and result["source"] == source and result["split"] == "test"
    assert result["num_pixels"] == 120 and len(result["singular_values"]) == dim
    assert 1.0 <= result["effective_rank"] <= dim
    assert (tmp_path / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"effective rank {result['effective_rank']:.2f} of D={dim}" in capsys.readouterr().out
    assert result["cluster_k"] == len(result["class_counts"]) and -1 <= result["kmeans_ari"] <= 1


def test_separated_classes_cluster_perfectly() -> None:
    centers = torch.eye(8)[:3] * 10  # three far-apart class centres
    y = torch.arange(3).repeat_interleave(40)
    z = centers[y] + 0.01 * torch.randn(120, 8, generator=torch.Generator().manual_seed(0))
    result = embedding_diagnostics(z, y)
    assert result["kmeans_nmi"] == pytest.approx(1.0) and result["gmm_ari"] == pytest.approx(1.0)


def test_diagnose_cli_names_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", str(tmp_path / "none.pt"), "--quiet"]) == 2  # a path not found: 2 (issue 18)
    assert f"checkpoint not found: {tmp_path / 'none.pt'}" in capsys.readouterr().err

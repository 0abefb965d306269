"""Fixtures: a tiny fake Fashion-MNIST in the idx layout (no system package needed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest


def _items(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n ellipses, labels i % 10, the class shaping the ellipse: (n, 28, 28) uint8, (n,) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        ry, rx = 4 + label, 13 - label  # tall thin to short wide: learnable from shape
        inside = ((yy - 14 + rng.uniform(-1, 1)) / ry) ** 2 + ((xx - 14 + rng.uniform(-1, 1)) / rx) ** 2 <= 1
        images[i][inside] = rng.integers(120, 256, size=int(inside.sum()))
    return images, labels


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion(directory: Path, n_train: int = 80, n_test: int = 30) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = _items(n, seed)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, 0x803)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x801)
    return directory


@pytest.fixture(scope="session")
def fake_fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fashion(tmp_path_factory.mktemp("fashion"))

"""Shared fixtures: small datasets written by the tests themselves (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import settings
from PIL import Image

# Property tests draw the same examples on every run (`make test` must not flake); explore new ones
# with `pytest --hypothesis-profile=explore`.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile("default")


def write_folder_dataset(
    root: Path, counts: dict[str, int] | None = None, size: int = 32, num_classes: int = 3, seed: int = 0
) -> Path:
    """Images of noisy coloured rectangles on a background, index masks, splits and classes.yaml."""
    counts = counts or {"train": 8, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, size=(num_classes, 3))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        ids = []
        for i in range(n):
            mask = np.zeros((size, size), dtype=np.uint8)
            for c in range(1, num_classes):
                y0, x0 = rng.integers(0, size // 2, size=2)
                h, w = rng.integers(size // 4, size // 2, size=2)
                mask[y0 : y0 + h, x0 : x0 + w] = c
            image = colors[mask] + rng.integers(-20, 20, size=(size, size, 3))
            sid = f"{split}_{i:03d}"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{sid}.png")
            Image.fromarray(mask).save(root / "masks" / f"{sid}.png")
            ids.append(sid)
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    classes = {"classes": [f"c{k}" for k in range(num_classes)], "ignore_index": 255}
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_dataset64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset at 64 px: two-view objectives need crops of at least two encoder strides."""
    return write_folder_dataset(tmp_path_factory.mktemp("data64") / "tiny64", size=64)


@pytest.fixture(scope="session")
def tiny_dataset_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different tiny dataset (5 classes, other colours): a second domain."""
    counts = {"train": 6, "val": 3, "test": 2}
    return write_folder_dataset(tmp_path_factory.mktemp("data_b") / "bee", counts, num_classes=5, seed=1)


@pytest.fixture
def crash_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch):
    """``arm()`` makes training die (KeyboardInterrupt) right after its next checkpoint is written;
    the object is the list of the steps saved meanwhile, and ``restore()`` puts the real writer
    back for the ``--resume`` that follows."""
    import pixcon.train.loop as loop

    real_save = loop.save_checkpoint

    def crash(state: dict, path: Path, **kwargs: Path) -> Path:
        real_save(state, path, **kwargs)
        saved.append(state["step"])
        raise KeyboardInterrupt  # the process dies right after this checkpoint

    class Saved(list):
        def arm(self) -> Saved:
            monkeypatch.setattr(loop, "save_checkpoint", crash)
            return self

        def restore(self) -> None:
            monkeypatch.setattr(loop, "save_checkpoint", real_save)

    saved = Saved()
    return saved


def run_cli_processes(argv: list[str], timeout: float = 300) -> None:
    """``python -m pixcon.cli ARGV`` in a subprocess (one thread per process, as multi-process
    runs need on 2 cores); fails the test with the end of its stderr."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pixcon.cli", *argv], env=env, capture_output=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]


@pytest.fixture
def pixcon_subprocess():
    """:func:`run_cli_processes`, as a fixture (test modules do not import conftest)."""
    return run_cli_processes


@pytest.fixture
def untrained_checkpoint(tmp_path: Path) -> Path:
    """``tmp_path/m.pt``: a checkpoint of a freshly built 3-class, 3-band segmenter (seed 0), for
    commands that only need a model to load."""
    import torch

    from pixcon.checkpoint import save_checkpoint
    from pixcon.config import load_config, to_dict
    from pixcon.models import segmenter_from_config

    cfg = load_config(overrides=["model.proj_dim=8", f"data.root={tmp_path}"])
    torch.manual_seed(0)
    model = segmenter_from_config(cfg.model, 3, 3)
    state = {
        "model": model.state_dict(),
        "step": 0,
        "config": to_dict(cfg),
        "num_classes": 3,
        "in_channels": 3,
    }
    return save_checkpoint(state, tmp_path / "m.pt")

"""Inverse-frequency CE weights from the labeled masks (loss.class_weights=balanced)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixcon.data.folder import SegmentationFolder
from pixcon.data.transforms import train_transform
from pixcon.train.data import class_weights


def test_weights_are_inverse_frequency_with_mean_one(tiny_dataset: Path) -> None:
    ds = SegmentationFolder(tiny_dataset, split="train", transform=train_transform(16))
    counts = np.zeros(4)
    for sid in ds.ids:
        mask = np.asarray(Image.open(tiny_dataset / "masks" / f"{sid}.png"))
        counts += np.bincount(mask.ravel(), minlength=4)
    # class 3 never occurs: weight 0, and it does not enter the mean
    expected = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    expected /= expected[counts > 0].mean()
    got = class_weights(ds, num_classes=4, ignore_index=255)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert got[3] == 0 and got[:3].mean().item() == pytest.approx(1.0)
    assert ds.transform is not None  # the dataset is left as it was


def test_mask_equals_untransformed_sample(tiny_dataset: Path) -> None:
    ds = SegmentationFolder(tiny_dataset, split="val")
    for i in range(len(ds)):
        torch.testing.assert_close(ds.mask(i), ds[i][1])


@pytest.mark.parametrize("objective, reads", [("contrast", False), ("ce", True)])
def test_weights_are_computed_only_for_objectives_with_a_ce_term(
    objective: str, reads: bool, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pixcon.train.run as loop
    from pixcon.config import load_config
    from pixcon.train import run_training

    calls = []
    real = loop.class_weights
    monkeypatch.setattr(loop, "class_weights", lambda *a: calls.append(a) or real(*a))
    cfg = load_config(
        overrides=[
            f"data.root={tiny_dataset}",
            f"train.out_dir={tmp_path}",
            f"train.objective={objective}",
            "loss.class_weights=balanced",
            "train.steps=1",
            "data.image_size=32",
            "data.batch_size=2",
            "model.proj_dim=16",
            "train.progress=false",
        ]
    )
    run_training(cfg)
    assert bool(calls) == reads

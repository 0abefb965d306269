"""``loss.partner: copy`` (Zhao et al.'s distorted copy of each image as its cross-image partner):
the pairs, the batches of crops they make, their resumability, the refusals, and a tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric

from pixcon.checkpoint import load_checkpoint
from pixcon.config import ConfigError, load_config
from pixcon.data.copies import DistortedCopies
from pixcon.data.registry import open_dataset
from pixcon.data.transforms import train_transform
from pixcon.objectives.base import DataInfo
from pixcon.objectives.supervised import CrossEntropy, PixelContrast, pixel_contrast_from_config
from pixcon.train import run_training
from pixcon.train.data import build_datasets, infinite_batches, objective_dataset


def _cfg(root: Path, *extra: str):
    return load_config(
        overrides=[
            f"data.root={root}",
            "data.image_size=32",
            "data.batch_size=4",
            "loss.partner=copy",
            "model.proj_dim=16",
            "train.objective=contrast",
            *extra,
        ]
    )


def test_a_sample_is_the_image_and_its_distorted_copy(tiny_dataset: Path) -> None:
    cfg = _cfg(tiny_dataset)
    plain = open_dataset(cfg.data, split="train")
    # no geometric change: the copy differs from the image by its colour jitter only
    same = train_transform(32, scale=(1.0, 1.0), hflip=False, color_jitter=0.0)
    jitter = train_transform(32, scale=(1.0, 1.0), hflip=False, color_jitter=0.8)
    torch.manual_seed(0)
    images, masks = DistortedCopies(plain, same, jitter)[3]
    image, mask = plain[3]
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)
    assert torch.equal(images[0], image) and torch.equal(masks[0], mask) and torch.equal(masks[1], mask)
    assert not torch.allclose(images[1], image)  # distorted
    assert len(DistortedCopies(plain, same, jitter)) == len(plain)
    assert DistortedCopies(plain, same, jitter).class_names == plain.class_names  # a view of the dataset


def test_batches_hold_batch_size_crops_in_copy_pairs_and_resume_at_any_step(tiny_dataset: Path) -> None:
    # no geometric augmentation and no colour jitter on either crop: a copy equals its image, so
    # the pairs are visible in the batch
    cfg = _cfg(
        tiny_dataset, "data.scale_min=1.0", "data.hflip=false", "data.color_jitter=0", "loss.copy_jitter=0"
    )
    data = build_datasets(cfg)
    dataset = objective_dataset(cfg, data, _contrast(cfg, data))
    assert isinstance(dataset, DistortedCopies)
    fabric = Fabric(accelerator="cpu", devices=1)
    stream = infinite_batches(dataset, cfg, fabric, start_step=0)
    batches = [next(stream) for _ in range(5)]  # 8 images, 2 per batch: over two epochs
    for images, masks in batches:
        assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32)
        assert torch.equal(images[0::2], images[1::2]) and torch.equal(masks[0::2], masks[1::2])
        assert not torch.equal(images[0], images[2])  # two images per batch, not one four times
    epoch = torch.cat([b[0][0::2] for b in batches[:4]])  # the 8 images of the first epoch
    assert len({tuple(x.flatten()[:64].tolist()) for x in epoch}) == 8
    resumed = infinite_batches(dataset, cfg, fabric, start_step=3)
    for expected in batches[3:]:
        got = next(resumed)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def _info(data) -> DataInfo:
    return DataInfo(data.num_classes, data.ignore_index, data.in_channels)


def _contrast(cfg, data) -> PixelContrast:
    return PixelContrast(pixel_contrast_from_config(cfg, _info(data)))


def test_copy_partners_are_refused_with_an_odd_batch_and_checked_values(tiny_dataset: Path) -> None:
    cfg = _cfg(tiny_dataset, "data.batch_size=5")
    data = build_datasets(cfg)
    with pytest.raises(ConfigError, match="data.batch_size must be even, got 5"):
        objective_dataset(cfg, data, _contrast(cfg, data))
    with pytest.raises(ConfigError, match=r"multidomain.domains\[1\].batch_size must be even"):
        objective_dataset(cfg, data, _contrast(cfg, data), where="multidomain.domains[1]")
    with pytest.raises(ConfigError, match="loss.copy_jitter: 1.5 is out of range"):
        _cfg(tiny_dataset, "loss.copy_jitter=1.5")
    with pytest.raises(ConfigError, match="loss.partner"):
        _cfg(tiny_dataset, "loss.partner=twin")
    # CE (the fine-tuning stage of a recipe that pretrains with copies) ignores the setting
    assert objective_dataset(cfg, data, CrossEntropy(_info(data))) is data.train


def test_a_tiny_pretraining_with_copy_partners_runs_and_resumes(
    tiny_dataset: Path, tmp_path: Path, crash_after_first_checkpoint
) -> None:
    extra = ("loss.variant=cross", "train.steps=4", "train.eval_every=2", "train.progress=false")
    cfg = _cfg(tiny_dataset, *extra, f"train.out_dir={tmp_path / 'full'}")
    data = build_datasets(cfg)
    assert isinstance(
        objective_dataset(cfg, data, _contrast(cfg, data)), DistortedCopies
    )  # what the run trains on
    full = run_training(cfg)
    calls = crash_after_first_checkpoint.arm()
    cut = _cfg(tiny_dataset, *extra, f"train.out_dir={tmp_path / 'cut'}")
    with pytest.raises(KeyboardInterrupt):
        run_training(cut)
    calls.restore()
    assert run_training(cut, resume=True) == full
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["config"]["loss"]["partner"] == "copy"

"""Few labeled images (issue 19, item 5): a labeled set smaller than one batch per rank is sampled
again (the id list repeated, fresh augmentation each time) instead of being refused, with one log
line; a set that fills a batch is sampled exactly as before."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric
from torch.utils.data import Dataset

from pixcon.checkpoint import load_checkpoint
from pixcon.config import load_config
from pixcon.train import run_training
from pixcon.train.data import EpochSampler, epoch_repeats, infinite_batches


def _old_indices(n: int, seed: int, epoch: int, start: int, rank: int, world: int) -> list[int]:
    """EpochSampler.indices as it was before repeats existed (one permutation per epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    per_rank = n // world
    perm = torch.randperm(n, generator=g)[: per_rank * world]
    return perm[rank::world][start:].tolist()


@pytest.mark.parametrize("n, world, start", [(8, 1, 0), (11, 3, 1), (17, 2, 4), (4, 4, 0)])
def test_a_dataset_that_fills_a_batch_is_sampled_as_before(n: int, world: int, start: int) -> None:
    assert epoch_repeats(n, batch_size=n // world, world_size=world) == 1
    for epoch in range(3):
        for rank in range(world):
            sampler = EpochSampler(n, seed=7, epoch=epoch, start=start, rank=rank, world_size=world)
            assert sampler.indices() == _old_indices(n, 7, epoch, start, rank, world)
            assert len(sampler) == n // world - start


@pytest.mark.parametrize(
    "n, batch_size, world, expected",
    [(3, 8, 1, 3), (5, 8, 1, 2), (8, 8, 1, 1), (7, 8, 1, 2), (3, 2, 2, 2), (6, 4, 2, 2), (9, 4, 2, 1)],
)
def test_epoch_repeats_is_the_fewest_that_fill_a_batch_per_rank(
    n: int, batch_size: int, world: int, expected: int
) -> None:
    repeats = epoch_repeats(n, batch_size, world)
    assert repeats == expected
    assert n * repeats // world >= batch_size
    assert repeats == 1 or n * (repeats - 1) // world < batch_size
    with pytest.raises(ValueError, match="no training images"):
        epoch_repeats(0, batch_size, world)


def test_repeated_epochs_list_every_image_equally_often_and_shard_over_ranks() -> None:
    n, world, repeats = 3, 2, 3  # 9 entries: 8 kept, 4 per rank
    shards = [
        EpochSampler(n, seed=1, epoch=4, rank=r, world_size=world, repeats=repeats).indices()
        for r in range(world)
    ]
    assert [len(s) for s in shards] == [4, 4]
    counts = collections.Counter(i for s in shards for i in s)
    assert set(counts) == {0, 1, 2} and sorted(counts.values()) == [2, 3, 3]
    whole = EpochSampler(n, seed=1, epoch=4, repeats=repeats).indices()  # the same order, unsharded
    assert whole[:8][0::2] == shards[0] and whole[:8][1::2] == shards[1]
    resumed = EpochSampler(n, seed=1, epoch=4, start=2, rank=1, world_size=world, repeats=repeats)
    assert resumed.indices() == shards[1][2:] and len(resumed) == 2
    other = EpochSampler(n, seed=1, epoch=5, repeats=repeats).indices()
    assert other != whole  # a new order every epoch


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, float]:
        return i, float(torch.rand(()))  # the index, and an "augmentation" from the global RNG


def test_stream_of_three_images_gives_full_batches_resumable_at_any_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = load_config(overrides=["data.batch_size=8", "train.seed=3"])
    fabric = Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="pixcon"):
        stream = infinite_batches(_Indices(3), cfg, fabric, start_step=0)
        batches = [next(stream) for _ in range(5)]
    lines = [r.getMessage() for r in caplog.records if "fewer than" in r.getMessage()]
    assert lines == [
        "data: the 3 training images of objective 'ce' are fewer than data.batch_size=8 per rank x 1 "
        "rank(s): each epoch lists every image 3 times (9 samples, 1 batch(es) per rank), each time "
        "with fresh augmentation"
    ]
    for ids, augment in batches:
        assert ids.shape == (8,) and set(ids.tolist()) == {0, 1, 2}
        assert sorted(collections.Counter(ids.tolist()).values()) == [2, 3, 3]
        for i in range(3):  # each occurrence of an image drew its own augmentation
            draws = augment[ids == i]
            assert len(set(draws.tolist())) == len(draws)
    resumed = infinite_batches(_Indices(3), cfg, fabric, start_step=3)
    assert [next(resumed)[0].tolist() for _ in range(2)] == [b[0].tolist() for b in batches[3:]]


def test_a_full_dataset_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(overrides=["data.batch_size=4"])
    with caplog.at_level(logging.INFO, logger="pixcon"):
        next(infinite_batches(_Indices(4), cfg, Fabric(accelerator="cpu", devices=1), start_step=0))
    assert not [r for r in caplog.records if "fewer than" in r.getMessage()]


def _three_labeled(tiny_dataset: Path, tmp_path: Path) -> Path:
    split = tmp_path / "labeled3.txt"
    split.write_text("train_000\ntrain_003\ntrain_005\n")
    return split


def _config(tiny_dataset: Path, split: Path, out: Path, steps: int = 4) -> list[str]:
    return [
        f"data.root={tiny_dataset}",
        f"data.labeled_split={split}",
        "data.batch_size=8",
        "data.image_size=32",
        "model.proj_dim=16",
        f"train.steps={steps}",
        "train.eval_every=2",
        "train.progress=false",
        f"train.out_dir={out}",
    ]


def test_three_labeled_images_train_with_batch_size_8(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    split = _three_labeled(tiny_dataset, tmp_path)
    with caplog.at_level(logging.INFO, logger="pixcon"):
        metrics = run_training(load_config(overrides=_config(tiny_dataset, split, tmp_path / "run")))
    lines = [r for r in caplog.records if "fewer than data.batch_size" in r.getMessage()]
    assert len(lines) == 1
    assert "the 3 training images" in lines[0].getMessage() and "3 times" in lines[0].getMessage()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4
    assert 0.0 <= metrics["miou"] <= 1.0


def test_a_resumed_few_image_run_equals_the_uninterrupted_one(
    tiny_dataset: Path, tmp_path: Path, crash_after_first_checkpoint: list[int]
) -> None:
    split = _three_labeled(tiny_dataset, tmp_path)
    full = run_training(load_config(overrides=_config(tiny_dataset, split, tmp_path / "full")))
    calls = crash_after_first_checkpoint.arm()
    cut_cfg = load_config(overrides=_config(tiny_dataset, split, tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        run_training(cut_cfg)
    assert calls == [2]
    calls.restore()
    assert run_training(cut_cfg, resume=True) == full
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)

"""Issue 18 end to end: 16-bit MRI-like slices keep their grey levels from training to evaluate,
predict and pseudo-label (the range measured at training start travels in the checkpoint), and
a dataset whose masks are mostly 255 trains instead of stopping at step 0 with a NaN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixcon.checkpoint import load_checkpoint
from pixcon.cli import main
from pixcon.inference import checkpoint_data, load_model, open_split
from pixcon.predict import read_image

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16", "--quiet"]
LEVELS = (0, 37, 410, 1290, 2047, 3001, 4095)  # 12-bit grey levels of the phantom's tissues


def mri_slice(seed: int, size: int = 32) -> np.ndarray:
    """(size, size) uint16: nested ellipses at the 12-bit `LEVELS`, like a T1 head slice."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1  # (size, size) each, in [-1, 1]
    out = np.zeros((size, size), dtype=np.uint16)
    rng = np.random.default_rng(seed)
    for k, level in enumerate(LEVELS[1:], start=1):
        r = 1.0 - 0.14 * k + rng.uniform(-0.02, 0.02)
        out[(yy / r) ** 2 + (xx / (0.8 * r)) ** 2 <= 1] = level
    return out


@pytest.fixture(scope="module")
def mri_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16-bit greyscale PNG slices (I;16), tissue masks (0 outside, 1 inside the skull, 2 the core)."""
    root = tmp_path_factory.mktemp("mri") / "mri"
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in range(10):
        split = "train" if i < 6 else "val" if i < 8 else "test"
        sid = f"{split}_{i}"
        image = mri_slice(i)
        Image.fromarray(image).save(root / "images" / f"{sid}.png")  # mode I;16
        mask = np.where(image >= 2047, 2, np.where(image > 0, 1, 0)).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"{sid}.png")
        splits[split].append(sid)
    for split, ids in splits.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": ["air", "tissue", "core"]}))
    return root


def test_16bit_slices_keep_their_grey_levels_from_training_to_inference(
    mri_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    split = tmp_path / "labeled.txt"
    split.write_text("train_0\ntrain_1\n")
    assert main(["train", "--data-root", str(mri_dataset), "--out", str(out), "--steps", "1", *TINY]) == 0
    state = load_checkpoint(out / "last.pt")
    # measured over the training images when training started, kept in the checkpoint and config.yaml
    assert state["config"]["data"]["value_range"] == [0.0, 4095.0]
    assert state["domains"][0]["data"]["value_range"] == [0.0, 4095.0]
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["value_range"] == [0.0, 4095.0]

    # What evaluate feeds the network: every tissue at its own grey level, nothing binarised.
    _, one = load_model(out / "last.pt")
    dataset = open_split(one, checkpoint_data(one), "test")
    image, _ = dataset[0]  # (3, H, W)
    raw = np.asarray(Image.open(mri_dataset / "images" / f"{dataset.ids[0]}.png")).astype(np.float64)
    expected = torch.from_numpy((raw / 4095).astype(np.float32))
    assert torch.equal(image[0], expected) and torch.equal(image[0], image[2])
    assert len(image[0].unique()) == len(np.unique(raw)) >= 5  # the silhouette bug gave 2 or 3
    # predict reads the file the same way, with the checkpoint's range
    path = mri_dataset / "images" / f"{dataset.ids[0]}.png"
    assert torch.equal(read_image(path, 3, state["config"]["data"]["value_range"]), image)

    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), "--split", "test", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "test"
    pred = tmp_path / "pred"
    assert main(["predict", str(out / "last.pt"), str(path), "--out", str(pred), "--quiet"]) == 0
    assert Image.open(pred / f"{dataset.ids[0]}_mask.png").size == (32, 32)
    # --resume measures the same range again: the configs compare equal
    assert (
        main(["train", "--data-root", str(mri_dataset), "--out", str(out), "--steps", "2", *TINY, "--resume"])
        == 0
    )
    assert load_checkpoint(out / "last.pt")["step"] == 2


def test_pseudo_labels_of_16bit_slices_use_the_checkpoint_range(mri_dataset: Path, tmp_path: Path) -> None:
    split = tmp_path / "labeled.txt"
    split.write_text("train_0\ntrain_1\n")
    out = tmp_path / "run"
    argv = ["train", "--data-root", str(mri_dataset), "--out", str(out), "--steps", "1", *TINY]
    assert main([*argv, "--labeled-split", str(split)]) == 0
    # the range covers the whole training split, not only the two labeled slices
    assert load_checkpoint(out / "last.pt")["config"]["data"]["value_range"] == [0.0, 4095.0]
    assert main(["pseudo-label", str(out / "last.pt"), "--out", str(tmp_path / "ps"), "--quiet"]) == 0
    assert sorted(p.stem for p in (tmp_path / "ps" / "masks").glob("*.png")) == [
        f"train_{i}" for i in range(2, 6)
    ]


@pytest.fixture(scope="module")
def mostly_ignored(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset with every training mask 255 except a 4x4 corner: most crops hold no label."""
    import shutil

    root = tmp_path_factory.mktemp("ign") / "mostly255"
    shutil.copytree(tiny_dataset, root)
    for sid in (root / "splits" / "train.txt").read_text().split():
        mask = np.full((32, 32), 255, dtype=np.uint8)
        mask[:4, :4] = 1
        Image.fromarray(mask).save(root / "masks" / f"{sid}.png")
    return root


@pytest.mark.parametrize("command", ["train", "pretrain", "joint"])
def test_masks_mostly_255_train_without_a_nan(
    command: str, mostly_ignored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / command
    extra = ["--joint"] if command == "joint" else []
    argv = ["pretrain" if command == "pretrain" else "train", "--data-root", str(mostly_ignored)]
    argv += ["--out", str(out), "--steps", "6", *TINY, "--set", "data.scale_min=0.1"]
    argv += ["--set", "train.log_every=1", *extra]
    assert main([*argv]) == 0, capsys.readouterr().err
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(v) for _, key, v in rows if key in ("train/ce", "train/contrast")]
    assert len({int(s) for s, _, _ in rows}) == 6 and all(np.isfinite(losses))
    if command == "train":
        assert 0.0 in losses  # at least one crop held no labeled pixel: zero, not NaN
    state = load_checkpoint(out / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

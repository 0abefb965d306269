"""Pseudo-label round: confident pixels only, unlabeled ids only, and the masks override the reader's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixcon.config import load_config
from pixcon.data.folder import read_ids, write_ids
from pixcon.data.registry import open_dataset
from pixcon.inference import load_model
from pixcon.predict import sliding_window
from pixcon.pseudo import confident_labels, pseudo_label
from pixcon.train import run_training

TINY = ["data.image_size=32", "data.batch_size=2", "model.proj_dim=16", "train.progress=false"]


def test_confident_labels_ignores_low_confidence() -> None:
    probs = torch.tensor([[[0.95, 0.5]], [[0.05, 0.5]]])  # (C=2, H=1, W=2)
    assert confident_labels(probs, 0.9, 255).tolist() == [[0, 255]]
    assert confident_labels(probs, 0.5, 255).tolist() == [[0, 0]]  # ties take the first class


@pytest.fixture(scope="module")
def finetuned(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("pseudo")
    labeled = read_ids(tiny_dataset / "splits" / "train.txt")[:4]
    split = write_ids(tmp / "labeled.txt", labeled)
    cfg = load_config(
        overrides=[
            f"data.root={tiny_dataset}",
            f"data.labeled_split={split}",
            f"train.out_dir={tmp / 'ce'}",
            "train.steps=2",
            "train.objective=ce",
            *TINY,
        ]
    )
    run_training(cfg)
    return tmp / "ce" / "last.pt", labeled


def test_pseudo_label_writes_confident_argmax_for_unlabeled_ids(
    finetuned: tuple[Path, list[str]], tiny_dataset: Path, tmp_path: Path
) -> None:
    ckpt, labeled = finetuned
    pool = read_ids(tiny_dataset / "splits" / "train.txt")
    unlabeled = [i for i in pool if i not in labeled]
    model, _ = load_model(ckpt)
    image = np.array(Image.open(tiny_dataset / "images" / f"{unlabeled[0]}.png"))  # (H, W, 3)
    with torch.inference_mode():
        probs = model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255).softmax(1)[0]
    threshold = float(probs.max(0).values.median())  # about half of this image's pixels pass
    summary = pseudo_label(ckpt, tmp_path / "round1", threshold=threshold, progress=False)
    assert read_ids(tmp_path / "round1" / "labeled.txt") == labeled + unlabeled
    written = sorted(p.stem for p in (tmp_path / "round1" / "masks").glob("*.png"))
    assert written == sorted(unlabeled)  # the labeled ids keep their true masks
    assert json.loads((tmp_path / "round1" / "pseudo.json").read_text()) == summary
    # Each mask is the model's confident argmax at native size.
    expected = confident_labels(probs, threshold, 255)
    got = np.array(Image.open(tmp_path / "round1" / "masks" / f"{unlabeled[0]}.png")).astype(np.int64)
    assert torch.equal(torch.from_numpy(got), expected)
    assert 0 < (expected == 255).float().mean() < 1
    assert summary["pseudo_labeled"] == len(unlabeled) and 0 < summary["kept_fraction"] < 1


def test_threshold_one_keeps_almost_nothing(finetuned: tuple[Path, list[str]], tmp_path: Path) -> None:
    summary = pseudo_label(finetuned[0], tmp_path / "strict", threshold=1.0, progress=False)
    assert summary["kept_fraction"] < 0.05  # a 2-step model is never certain


def test_pseudo_masks_override_reader_and_train(
    finetuned: tuple[Path, list[str]], tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "round"
    pseudo_label(finetuned[0], out, threshold=0.0 + 1e-6, progress=False)
    cfg = load_config(
        overrides=[
            f"data.root={tiny_dataset}",
            f"data.labeled_split={out / 'labeled.txt'}",
            f"data.pseudo_masks={out / 'masks'}",
            f"train.out_dir={tmp_path / 'contrast'}",
            "train.steps=2",
            "train.objective=contrast",
            *TINY,
        ]
    )
    ds = open_dataset(cfg.data, ids=read_ids(out / "labeled.txt"))
    plain = open_dataset(load_config(overrides=[f"data.root={tiny_dataset}"]).data, ids=ds.ids)
    for i, sid in enumerate(ds.ids):
        pseudo = out / "masks" / f"{sid}.png"
        if pseudo.exists():
            assert torch.equal(ds[i][1], torch.from_numpy(np.array(Image.open(pseudo)).astype(np.int64)))
        else:
            assert torch.equal(ds[i][1], plain[i][1])
    run_training(cfg)
    assert (tmp_path / "contrast" / "last.pt").is_file()


def test_no_label_split_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = load_config(
        overrides=[f"data.root={tiny_dataset}", f"train.out_dir={tmp_path / 'all'}", "train.steps=1", *TINY]
    )
    run_training(cfg)
    with pytest.raises(ValueError, match="no unlabeled images"):
        pseudo_label(tmp_path / "all" / "last.pt", tmp_path / "p", progress=False)


def test_missing_pseudo_folder_is_named(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=[f"data.root={tiny_dataset}", f"data.pseudo_masks={tmp_path / 'nope'}"])
    with pytest.raises(FileNotFoundError, match="data.pseudo_masks.*nope"):
        open_dataset(cfg.data, split="train")


def test_missing_or_stale_pseudo_masks_are_refused(
    finetuned: tuple[Path, list[str]], tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "round"
    summary = pseudo_label(finetuned[0], out, threshold=0.5, progress=False)
    cfg = load_config(overrides=[f"data.root={tiny_dataset}", f"data.pseudo_masks={out / 'masks'}"])
    ids = read_ids(out / "labeled.txt")
    missing = out / "masks" / f"{summary['pseudo_ids'][0]}.png"
    missing.rename(tmp_path / "kept.png")
    with pytest.raises(ValueError, match=f"pseudo mask {missing} of {summary['pseudo_ids'][0]} is missing"):
        open_dataset(cfg.data, ids=ids)
    (tmp_path / "kept.png").rename(missing)
    stale = out / "masks" / f"{finetuned[1][0]}.png"  # a labeled id must keep its true mask
    stale.write_bytes(missing.read_bytes())
    with pytest.raises(ValueError, match=f"{stale} of {finetuned[1][0]} exists but"):
        open_dataset(cfg.data, ids=ids)


def test_second_round_from_a_pseudo_checkpoint_is_refused(
    finetuned: tuple[Path, list[str]], tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "round"
    pseudo_label(finetuned[0], out, threshold=0.5, progress=False)
    cfg = load_config(
        overrides=[
            f"data.root={tiny_dataset}",
            f"data.labeled_split={out / 'labeled.txt'}",
            f"data.pseudo_masks={out / 'masks'}",
            f"train.out_dir={tmp_path / 'c2'}",
            "train.steps=1",
            *TINY,
        ]
    )
    run_training(cfg)
    with pytest.raises(ValueError, match="covers the whole 'train' split"):
        pseudo_label(tmp_path / "c2" / "last.pt", tmp_path / "again", progress=False)


def test_window_predicts_large_images_by_tiles(
    finetuned: tuple[Path, list[str]], tiny_dataset64: Path, tmp_path: Path
) -> None:
    """With --window, an image larger than the window is the thresholded Gaussian-blended
    sliding-window prediction (the same images at 64 px, through the 32 px-trained model)."""
    ckpt, labeled = finetuned
    unlabeled = [i for i in read_ids(tiny_dataset64 / "splits" / "train.txt") if i not in labeled]
    summary = pseudo_label(
        ckpt,
        tmp_path / "tiled",
        threshold=0.5,
        data_root=tiny_dataset64,
        progress=False,
        window=32,
        overlap=0.5,
    )
    assert summary["window"] == 32 and summary["overlap"] == 0.5
    model, _ = load_model(ckpt)
    image = torch.from_numpy(np.array(Image.open(tiny_dataset64 / "images" / f"{unlabeled[0]}.png")))
    image = image.permute(2, 0, 1).float() / 255  # (3, 64, 64)
    expected = confident_labels(sliding_window(model, image, 32, 0.5), 0.5, 255)  # (64, 64)
    got = np.array(Image.open(tmp_path / "tiled" / "masks" / f"{unlabeled[0]}.png")).astype(np.int64)
    assert got.shape == (64, 64) and torch.equal(torch.from_numpy(got), expected)
    # a window at least the image's size is the one-pass prediction, byte for byte
    pseudo_label(ckpt, tmp_path / "whole", threshold=0.5, progress=False)
    pseudo_label(ckpt, tmp_path / "big_window", threshold=0.5, progress=False, window=64)
    for name in unlabeled:
        whole = (tmp_path / "whole" / "masks" / f"{name}.png").read_bytes()
        assert (tmp_path / "big_window" / "masks" / f"{name}.png").read_bytes() == whole


@pytest.mark.parametrize(("window", "overlap", "match"), [(40, 0.25, "window 40"), (32, 1.0, "overlap 1.0")])
def test_bad_window_is_refused_before_writing(
    finetuned: tuple[Path, list[str]], tmp_path: Path, window: int, overlap: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        pseudo_label(finetuned[0], tmp_path / "out", progress=False, window=window, overlap=overlap)
    assert not (tmp_path / "out").exists()


def test_cli_window_flag(finetuned: tuple[Path, list[str]], tmp_path: Path) -> None:
    from pixcon.cli import main

    argv = ["pseudo-label", str(finetuned[0]), "--out", str(tmp_path / "cli"), "--window", "64", "--quiet"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "cli" / "pseudo.json").read_text())["window"] == 64
    assert main(["pseudo-label", str(finetuned[0]), "--out", str(tmp_path / "bad"), "--window", "40"]) == 2

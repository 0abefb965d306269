"""Classification condensation end to end on a tiny fake Fashion-MNIST: data, the ConvNet, the loop,
its checkpoints (interrupt + resume == uninterrupted) and the evaluation protocol."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixcon.condense.classification as clf
from pixcon.condense.classification import (
    ClassificationConfig,
    ClassificationData,
    EvalConfig,
    NetConfig,
    clutter_items,
    condense_classification,
    load_classification_data,
    load_synthetic,
    random_subset,
    train_and_test,
)
from pixcon.condense.common import MatchingConfig
from pixcon.condense.convnet import ConvNet

TINY_NET = NetConfig(width=8, depth=2)


def _cfg(method: str = "dcc", **matching: object) -> ClassificationConfig:
    base = dict(
        method=method, iterations=3, matching_steps=2, net_steps=1, warmup_iterations=1, warmup_steps=1
    )
    base.update(matching)
    return ClassificationConfig(
        dataset="fashion", ipc=2, batch_real=4, batch_train=8, net=TINY_NET, matching=MatchingConfig(**base)
    )


@pytest.fixture(scope="module")
def fashion(fake_fashion: Path) -> ClassificationData:
    return load_classification_data("fashion", fake_fashion)


def test_convnet_shapes() -> None:
    net = ConvNet(1, 10, image_size=28)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert net.classifier.in_features == 128 * 4 * 4  # 28 is padded to the maps of 32
    rgb = ConvNet(3, 5, image_size=32, width=16, depth=2, norm="batchnorm")
    assert rgb(torch.zeros(3, 3, 32, 32)).shape == (3, 5)
    assert isinstance(ConvNet(1, 2, 28).features[1], torch.nn.GroupNorm)  # instance norm
    with pytest.raises(ValueError, match="unknown norm"):
        ConvNet(1, 2, norm="layer")
    with pytest.raises(ValueError, match="too small for depth 3"):
        ConvNet(1, 2, image_size=4)


def test_fashion_data_is_normalised(fashion: ClassificationData) -> None:
    assert fashion.train_images.shape == (80, 1, 28, 28) and fashion.test_images.shape == (30, 1, 28, 28)
    assert fashion.train_images.mean().abs() < 1e-5
    assert fashion.train_images.std().item() == pytest.approx(1.0, abs=1e-3)
    assert fashion.num_classes == 10 and fashion.class_names[0] == "t-shirt/top"
    raw = fashion.denormalize(fashion.train_images[:2])
    assert raw.min() >= 0 and raw.max() <= 1


def test_cluttered_images(fake_fashion: Path, tmp_path: Path) -> None:
    from pixcon.data.fashion import load_fashion_mnist

    items, _ = load_fashion_mnist(fake_fashion, "train")
    a = clutter_items(items[:6], split="train", seed=3)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, clutter_items(items[:6], split="train", seed=3))  # deterministic
    assert not np.array_equal(a, clutter_items(items[:6], split="test", seed=3))  # separate streams
    assert a.std(axis=(1, 2)).mean() > 10  # textured backgrounds, not black
    # a fully bright item covers a 28x28 window in one flat colour; an empty one leaves the background
    full = clutter_items(np.full((1, 28, 28), 255, np.uint8), split="train", seed=0)[0]
    empty = clutter_items(np.zeros((1, 28, 28), np.uint8), split="train", seed=0)[0]
    flat = [
        (top, left)
        for top in range(5)
        for left in range(5)
        if (full[top : top + 28, left : left + 28] == full[top, left]).all()
    ]
    assert len(flat) == 1
    top, left = flat[0]
    outside = np.ones((32, 32), bool)
    outside[top : top + 28, left : left + 28] = False
    assert np.array_equal(full[outside], empty[outside])  # same background around the item
    assert not (empty[top : top + 28, left : left + 28] == full[top, left]).all()
    data = load_classification_data("fashion-cluttered", fake_fashion, cache_dir=tmp_path)
    assert data.train_images.shape == (80, 3, 32, 32) and data.channels == 3
    assert list(tmp_path.glob("*.npz"))  # cached
    again = load_classification_data("fashion-cluttered", fake_fashion, cache_dir=tmp_path)
    assert torch.equal(again.train_images, data.train_images)


def test_condense_writes_outputs_and_moves_images(fashion: ClassificationData, tmp_path: Path) -> None:
    cfg = _cfg("dcc")
    result = condense_classification(fashion, cfg, tmp_path, progress=False)
    assert result.images.shape == (20, 1, 28, 28)
    assert result.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert result.iterations_done == 3 and len(result.history.loss) == 3
    assert all(np.isfinite(result.history.loss))
    start = clf.initial_images(
        fashion, 2, "real", clf.class_indices(fashion.train_labels, 10), clf.generator(0, clf._STREAM_INIT)
    )
    assert not torch.equal(start, result.images)  # the images were learned
    saved = load_synthetic(tmp_path / "synthetic.pt")
    assert torch.equal(saved["images"], result.images) and saved["iterations"] == 3
    grid = Image.open(tmp_path / "synthetic_grid.png")
    assert grid.size == (2 * 30 + 2, 10 * 30 + 2)  # 2 per row (ipc), a row per class, 2 px padding
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3 and state["task"] == "classification"


@pytest.mark.parametrize("method", [pytest.param("dc", marks=pytest.mark.slow), "dcc"])  # dc: ~80 s
def test_interrupt_and_resume_equals_uninterrupted(
    fashion: ClassificationData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    cfg = _cfg(method, iterations=4, checkpoint_every=1)
    whole = condense_classification(fashion, cfg, tmp_path / "whole", progress=False)

    real_save = clf.save_state
    calls = []

    def crash(state: dict, path: Path) -> Path:
        out = real_save(state, path)
        calls.append(state.get("iteration"))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies right after the second checkpoint
        return out

    monkeypatch.setattr(clf, "save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        condense_classification(fashion, cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(clf, "save_state", real_save)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["iteration"] == 2
    resumed = condense_classification(fashion, cfg, tmp_path / "cut", resume=True, progress=False)
    assert torch.equal(resumed.images, whole.images)
    assert resumed.history.loss == pytest.approx(whole.history.loss, rel=0, abs=0)


@pytest.mark.slow  # ~90 s on 2 cores; the interrupt-and-resume test covers resuming in make test
def test_resume_extends_a_finished_run(fashion: ClassificationData, tmp_path: Path) -> None:
    three = _cfg("dc")
    five = replace(three, matching=replace(three.matching, iterations=5))
    whole = condense_classification(fashion, five, tmp_path / "whole", progress=False)
    condense_classification(fashion, three, tmp_path / "ext", progress=False)
    extended = condense_classification(fashion, five, tmp_path / "ext", resume=True, progress=False)
    assert torch.equal(extended.images, whole.images)


def test_resume_refuses_other_settings(fashion: ClassificationData, tmp_path: Path) -> None:
    cfg = _cfg("dc", iterations=1)
    condense_classification(fashion, cfg, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        condense_classification(fashion, cfg, tmp_path, progress=False)
    other = replace(cfg, matching=replace(cfg.matching, lr_images=0.5))
    with pytest.raises(ValueError, match=r"matching.lr_images: checkpoint 0.1, now 0.5"):
        condense_classification(fashion, other, tmp_path, resume=True, progress=False)


@pytest.mark.slow  # ~20 s; DSA's shared augmentation itself is tested in test_dsa.py
def test_dsa_and_batchnorm_variants_run(fashion: ClassificationData, tmp_path: Path) -> None:
    cfg = _cfg("dcc", iterations=1, dsa=True)
    assert condense_classification(fashion, cfg, tmp_path / "dsa", progress=False).images.isfinite().all()
    bn = replace(_cfg("dc", iterations=1), net=NetConfig(width=8, depth=2, norm="batchnorm"))
    assert condense_classification(fashion, bn, tmp_path / "bn", progress=False).images.isfinite().all()


def test_noise_init(fashion: ClassificationData, tmp_path: Path) -> None:
    cfg = _cfg("dc", iterations=1, init="noise")
    result = condense_classification(fashion, cfg, tmp_path, progress=False)
    assert result.images.shape == (20, 1, 28, 28)


def test_random_subset_and_train_and_test(fashion: ClassificationData) -> None:
    images, labels = random_subset(fashion, ipc=3, seed=0)
    assert images.shape == (30, 1, 28, 28) and labels.bincount().tolist() == [3] * 10
    again, _ = random_subset(fashion, ipc=3, seed=0)
    assert torch.equal(images, again)
    scores = train_and_test(images, labels, fashion, net=TINY_NET, eval_cfg=EvalConfig(epochs=2), seed=0)
    assert 0.0 <= scores["test_acc"] <= 1.0 and 0.0 <= scores["train_acc"] <= 1.0
    again_scores = train_and_test(
        images, labels, fashion, net=TINY_NET, eval_cfg=EvalConfig(epochs=2), seed=0
    )
    assert (again_scores["test_acc"], again_scores["train_acc"]) == (scores["test_acc"], scores["train_acc"])
    with pytest.raises(ValueError, match="epochs and batch_size"):
        EvalConfig(epochs=0)


def test_config_validation(fashion: ClassificationData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        ClassificationConfig(dataset="mnist")
    with pytest.raises(ValueError, match="ipc must be an integer >= 1"):
        ClassificationConfig(ipc=0)
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        MatchingConfig(iterations=0)
    with pytest.raises(ValueError, match="init must be one of"):
        MatchingConfig(init="zeros")
    with pytest.raises(ValueError, match="config dataset 'fashion-cluttered' but the data is 'fashion'"):
        condense_classification(
            fashion, replace(_cfg(), dataset="fashion-cluttered"), tmp_path, progress=False
        )
    with pytest.raises(ValueError, match="fewer than ipc=9"):
        condense_classification(fashion, replace(_cfg(), ipc=9), tmp_path / "x", progress=False)

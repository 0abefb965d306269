"""train.head_init=prototypes: fine-tuning starts from the nearest-class-mean head of the pretrained
network (tiny runs through the training loop), and the config refuses what it cannot do."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pixcon.config import ConfigError, load_config
from pixcon.data.registry import open_dataset
from pixcon.data.transforms import eval_transform
from pixcon.inference import load_model
from pixcon.models.prototype_head import prototype_head
from pixcon.train import run_training


def _cfg(root: Path, out: Path, *extra: str):
    return load_config(
        overrides=[
            f"data.root={root}",
            f"train.out_dir={out}",
            "data.image_size=32",
            "data.batch_size=2",
            "model.proj_dim=16",
            "model.proj_layers=1",
            "train.progress=false",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def pretrained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre")
    run_training(_cfg(tiny_dataset, out, "train.objective=contrast", "train.steps=3"))
    return out / "last.pt"


def _labeled_batches(data_cfg):
    """The run's labeled images one at a time, without augmentation, as the loop reads them."""
    labeled = open_dataset(data_cfg, split="train", transform=eval_transform())
    return [(im[None], m[None]) for im, m in (labeled[i] for i in range(len(labeled)))], labeled


@pytest.mark.parametrize("head_init", ["prototypes", "random"])
def test_fine_tuning_starts_from_the_prototype_head(
    head_init: str, pretrained: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # lr so small that one step leaves the head where the initialisation put it
    cfg = _cfg(
        tiny_dataset,
        tmp_path,
        "train.objective=ce",
        "train.steps=1",
        f"train.init_from={pretrained}",
        f"train.head_init={head_init}",
        "optim.lr=1.0e-12",
    )
    with caplog.at_level(logging.INFO, logger="pixcon"):
        run_training(cfg)
    assert ("head_init prototypes (embedding space" in caplog.text) == (head_init == "prototypes")
    tuned, _ = load_model(tmp_path / "last.pt")
    model, _ = load_model(pretrained)
    batches, labeled = _labeled_batches(cfg.data)
    expected = prototype_head(model, batches, labeled.num_classes, labeled.ignore_index, seed=cfg.train.seed)
    conv = tuned.net.segmentation_head[0]
    if head_init == "random":
        assert not torch.allclose(conv.weight[:, :, 0, 0], expected.weight)
        return
    torch.testing.assert_close(conv.weight[:, :, 0, 0], expected.weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(conv.bias, expected.bias, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["train.head_init=prototypes"], "set train.init_from"),
        (
            [
                "train.head_init=prototypes",
                "train.init_from=x.pt",
                "train.prototype_space=embedding",
                "model.proj_layers=2",
            ],
            "model.proj_layers: 1",
        ),
        (["train.head_init=imprint"], "train.head_init"),
    ],
)
def test_config_refuses(extra: list[str], match: str, tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[f"data.root={tiny_dataset}", *extra])


def test_an_objective_without_the_segmentation_head_is_refused(
    pretrained: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    cfg = _cfg(
        tiny_dataset,
        tmp_path,
        "train.objective=contrast",
        "train.steps=1",
        f"train.init_from={pretrained}",
        "train.head_init=prototypes",
    )
    with pytest.raises(ConfigError, match="does not train"):
        run_training(cfg)


def test_evaluate_scores_the_prototype_head_of_a_pretraining_checkpoint(
    pretrained: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixcon.cli import main
    from pixcon.inference import evaluate, evaluate_checkpoint
    from pixcon.models.prototype_head import load_head

    scores = evaluate_checkpoint(pretrained, split="val", prototype_head=True)
    assert scores["head"]["space"] == "embedding" and sum(scores["head"]["labeled_pixels"]) > 0
    # the same as loading the prototype head by hand and scoring the model
    model, _ = load_model(pretrained)
    cfg_data = load_config(overrides=[f"data.root={tiny_dataset}"]).data
    batches, labeled = _labeled_batches(cfg_data)
    load_head(model, prototype_head(model, batches, labeled.num_classes, labeled.ignore_index))
    val = open_dataset(cfg_data, split="val", transform=eval_transform())
    loader = torch.utils.data.DataLoader(val, batch_size=4)
    with torch.inference_mode():
        expected = evaluate(model, loader, val.num_classes, val.ignore_index, val.class_names)
    assert scores["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    plain = evaluate_checkpoint(pretrained, split="val")
    assert "head" not in plain
    # a labeled split of the run's own images; the CLI flag
    split = tmp_path / "two.txt"
    split.write_text("train_000\ntrain_001\n")
    two = evaluate_checkpoint(pretrained, split="val", prototype_head=True, labeled_split=split)
    assert sum(two["head"]["labeled_pixels"]) < sum(scores["head"]["labeled_pixels"])
    with pytest.raises(ValueError, match="only with --prototype-head"):
        evaluate_checkpoint(pretrained, split="val", labeled_split=split)
    assert main(["evaluate", str(pretrained), "--split", "val", "--prototype-head", "--json", "--quiet"]) == 0
    assert '"kind": "prototypes"' in capsys.readouterr().out


def test_labeled_images_of_several_sizes_are_grouped_by_size() -> None:
    from pixcon.inference.prototype import _same_size_groups

    items = [(torch.zeros(3, 32, 32), torch.zeros(32, 32, dtype=torch.long))] * 2
    items += [(torch.ones(3, 64, 32), torch.ones(64, 32, dtype=torch.long))]
    groups = _same_size_groups(items)
    assert [tuple(g[0].shape) for g in groups] == [(2, 3, 32, 32), (1, 3, 64, 32)]
    assert [tuple(g[1].shape) for g in groups] == [(2, 32, 32), (1, 64, 32)]
    assert groups[1][1].min() == 1


def test_a_projection_head_of_another_size_is_not_taken_for_the_embedding(
    pretrained: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the checkpoint's projection has 16 outputs; this run's 8: it is re-initialised on loading
    cfg = _cfg(
        tiny_dataset,
        tmp_path,
        "model.proj_dim=8",
        "train.objective=ce",
        "train.steps=1",
        f"train.init_from={pretrained}",
        "train.head_init=prototypes",
    )
    with caplog.at_level(logging.INFO, logger="pixcon"):
        run_training(cfg)
    assert "head_init prototypes (features space" in caplog.text

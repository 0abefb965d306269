"""Self-supervised objectives through the CLI and the loop: every training image, masks of the
unlabeled ones hidden, their own heads checkpointed; and the unlabeled-image recipes end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixcon.checkpoint import load_checkpoint
from pixcon.cli import main
from pixcon.config import load_config
from pixcon.data.folder import read_ids, write_ids
from pixcon.models import segmenter_from_config
from pixcon.objectives import DataInfo, create_objectives
from pixcon.train.data import build_datasets, objective_dataset
from pixcon.train.recipes import run_recipe

TINY = ["--set", "data.image_size=64", "--set", "model.proj_dim=16", "--quiet"]


@pytest.fixture(scope="module")
def data64(tiny_dataset64: Path) -> Path:
    return tiny_dataset64


@pytest.fixture(scope="module")
def two_labeled(data64: Path) -> Path:
    return write_ids(data64 / "two.txt", read_ids(data64 / "splits" / "train.txt")[:2])


@pytest.mark.parametrize("objective", ["glcnet", "dense_simclr", "directclr"])
def test_ssl_pretrain_then_finetune(objective: str, data64: Path, two_labeled: Path, tmp_path: Path) -> None:
    pre = tmp_path / "pre"
    # batch 4 > 2 labeled images: only possible because the objective trains on all 8 images
    argv = ["pretrain", "--objective", objective, "--data-root", str(data64), "--out", str(pre)]
    argv += ["--labeled-split", str(two_labeled), "--steps", "2", "--set", "data.batch_size=4", *TINY]
    assert main(argv) == 0
    state = load_checkpoint(pre / "last.pt")
    assert state["kind"] == objective and state["config"]["train"]["objective"] == objective
    if (
        objective == "glcnet"
    ):  # its MLPs are trained and checkpointed with the model (the objective of domain 0)
        mlps = ("global_mlp", "local_mlp", "global", "local")
        assert any(k.startswith(tuple(f"objectives.0.{m}" for m in mlps)) for k in state["objective"])
    else:
        assert state["objective"] == {}
    # Resuming restores the objective's parameters too.
    assert (
        main([*argv[: -len(TINY) - 4], "--steps", "3", "--set", "data.batch_size=4", *TINY, "--resume"]) == 0
    )
    ft = tmp_path / "ft"
    argv = ["finetune", "--init-from", str(pre / "last.pt"), "--data-root", str(data64), "--out", str(ft)]
    assert (
        main(
            [*argv, "--labeled-split", str(two_labeled), "--steps", "1", "--set", "data.batch_size=2", *TINY]
        )
        == 0
    )
    assert (ft / "final.json").is_file()


def test_ssl_dataset_hides_unlabeled_masks(data64: Path, two_labeled: Path) -> None:
    cfg = load_config(
        overrides=[f"data.root={data64}", f"data.labeled_split={two_labeled}", "data.image_size=64"]
    )
    data = build_datasets(cfg)
    model = segmenter_from_config(cfg.model, data.num_classes, data.in_channels)
    objective = create_objectives(
        "dense_simclr", cfg, model, [DataInfo(data.num_classes, data.ignore_index, 3)], ["a"]
    )
    views = objective_dataset(cfg, data, objective)
    assert len(views) == 8 and len(data.train) == 2
    labeled = set(read_ids(two_labeled))
    for i, sid in enumerate(
        views.base.ids if hasattr(views, "base") else read_ids(data64 / "splits" / "train.txt")
    ):
        sample = views[i]
        hidden = bool((sample["mask1"] == 255).all() and (sample["mask2"] == 255).all())
        assert hidden == (sid not in labeled)


def test_unknown_objective_is_named(data64: Path, tmp_path: Path) -> None:
    argv = ["pretrain", "--objective", "simclr9", "--data-root", str(data64), "--out", str(tmp_path), *TINY]
    assert main(argv) == 2


@pytest.mark.parametrize("recipe", ["ssl_contrast", "pseudo"])
def test_unlabeled_recipes_end_to_end(recipe: str, data64: Path, two_labeled: Path, tmp_path: Path) -> None:
    cfg = load_config(
        overrides=[
            f"data.root={data64}",
            f"data.labeled_split={two_labeled}",
            "data.image_size=64",
            "data.batch_size=4",
            "model.proj_dim=16",
            "train.progress=false",
        ]
    )
    last = run_recipe(recipe, cfg, tmp_path, pretrain_steps=2, finetune_steps=2, pseudo_threshold=1e-6)
    state = load_checkpoint(last)
    assert state["kind"] == "ce" and torch.isfinite(torch.tensor(state["metrics"]["miou"]))
    if recipe == "pseudo":
        # the second contrast round saw the 2 labeled + 6 pseudo-labeled images
        second = load_checkpoint(tmp_path / "contrast_pseudo" / "last.pt")
        assert second["meta"]["data"]["labeled"]["count"] == 8
        assert len(list((tmp_path / "pseudo_2" / "masks").glob("*.png"))) == 6


@pytest.mark.parametrize("objective", ["hcsc", "claws", "ariel"])
def test_supervised_variants_pretrain_then_finetune(
    objective: str, data64: Path, two_labeled: Path, tmp_path: Path
) -> None:
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    small = ["--set", f"{objective}.max_pixels=256"]
    if objective == "hcsc":  # a bank small enough to be clustered within 3 steps
        small += [
            "--set",
            "hcsc.bank_size=64",
            "--set",
            "hcsc.bank_per_step=32",
            "--set",
            "hcsc.num_prototypes=[8,2]",
        ]
    if objective == "ariel":
        small += ["--set", "ariel.steps=1"]
    argv = ["pretrain", "--objective", objective, "--data-root", str(data64), "--out", str(pre)]
    argv += ["--labeled-split", str(two_labeled), "--steps", "3", "--set", "data.batch_size=2", *small, *TINY]
    assert main(argv) == 0
    terms = {line.split(",")[1] for line in (pre / "metrics.csv").read_text().splitlines()[1:]}
    expected = {
        "hcsc": {"instance", "proto"},
        "claws": {"contrast"},
        "ariel": {"contrast", "adversarial", "info"},
    }
    assert {
        t.split("/")[1]
        for t in terms
        if t.startswith("train/") and t not in ("train/lr", "train/steps_per_s")
    } == expected[objective]
    argv = ["finetune", "--init-from", str(pre / "last.pt"), "--data-root", str(data64), "--out", str(ft)]
    assert (
        main(
            [*argv, "--labeled-split", str(two_labeled), "--steps", "1", "--set", "data.batch_size=2", *TINY]
        )
        == 0
    )


def test_pseudo_label_cli(
    data64: Path, two_labeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ft = tmp_path / "ce"
    argv = ["train", "--data-root", str(data64), "--out", str(ft), "--labeled-split", str(two_labeled)]
    assert main([*argv, "--steps", "1", "--set", "data.batch_size=2", *TINY]) == 0
    out = tmp_path / "pseudo"
    assert (
        main(["pseudo-label", str(ft / "last.pt"), "--out", str(out), "--threshold", "0.2", "--quiet"]) == 0
    )
    assert f"--set data.pseudo_masks={out / 'masks'}" in capsys.readouterr().out
    assert len(list((out / "masks").glob("*.png"))) == 6
    assert (
        main(["pseudo-label", str(ft / "last.pt"), "--out", str(out), "--threshold", "1.5", "--quiet"]) == 2
    )
    assert "threshold must be in (0, 1], got 1.5" in capsys.readouterr().err

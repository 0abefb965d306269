"""The training settings of the recipe records, and the CLI's defaults taken from them."""

from __future__ import annotations

import logging
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from pixcon.cli import _run_config, build_parser, main
from pixcon.config import ObjectiveName, RunConfig, load_config, to_dict
from pixcon.recipes import (
    RECIPES,
    VALIDATED,
    finetuning_stage,
    flatten_settings,
    pretraining_recipe,
    recipe_defaults,
    stage_defaults,
)
from pixcon.train.recipes import run_recipe


def _value(cfg: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return to_dict(cfg)[section][name]


def _checkpoint(path: Path, objective: str, *settings: str) -> str:
    """A checkpoint file whose saved config trained ``objective`` (no weights: only read for its config)."""
    from pixcon.checkpoint import save_checkpoint

    cfg = load_config(overrides=[f"train.objective={objective}", *settings])
    save_checkpoint({"model": {}, "step": 1, "config": to_dict(cfg)}, path)
    return str(path)


def _resolve(argv: list[str], caplog: pytest.LogCaptureFixture) -> tuple[RunConfig, str]:
    """The config a command resolves, and the defaults line it logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pixcon"):
        cfg = _run_config(build_parser().parse_args(argv))
    (line,) = [r.getMessage() for r in caplog.records if "defaults of recipe" in r.getMessage()]
    return cfg, line


# --- the records ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "pseudo"])
def test_stage_defaults_are_what_run_recipe_gives_each_stage(name: str, tmp_path: Path) -> None:
    # a recipe run from recipe_defaults and one stage run alone from stage_defaults train alike
    calls: list[RunConfig] = []
    cfg = load_config(defaults=recipe_defaults(name))
    run_recipe(name, cfg, tmp_path, 10, 10, train=calls.append, aux_root=tmp_path / "aux")
    for stage, got in zip(RECIPES[name].stages, calls, strict=True):
        for key, value in flatten_settings(stage_defaults(name, stage.name)):
            assert _value(got, key) == pytest.approx(value), (stage.name, key)


def test_stage_defaults_of_the_validated_recipes() -> None:
    # the rates chosen on the recipe sweep (docs/experiments/recipe_sweep.md): CE's is every
    # recipe's default, contrast -> CE has its own
    shared, lr = VALIDATED["optim"]["lr"], 1e-2
    assert shared == 3e-3 and stage_defaults("ce", "train")["optim"]["lr"] == shared
    pre = stage_defaults("contrast", "pretrain")
    assert pre["optim"] == {"name": "adamw", "lr": lr, "schedule": "cosine", "weight_decay": 1e-4}
    assert pre["model"] == {"proj_layers": 1} and pre["train"] == {"objective": "contrast"}
    assert pre["loss"] == {
        "temperature": 0.1,
        "variant": "cross",
        "joint_weight": 0.5,
        "project_sampled": True,
    }
    ft = stage_defaults("contrast", "finetune")
    assert ft["train"] == {"objective": "ce", "head_init": "prototypes"}
    assert ft["optim"]["lr"] == pytest.approx(lr / 3)
    assert stage_defaults("contrast", "finetune", base_lr=3e-3)["optim"]["lr"] == pytest.approx(1e-3)
    # GLCNet and DirectCLR fine-tune from a random head at the full rate
    for name in ("glcnet", "directclr", "contrast_random_head"):
        ft = stage_defaults(name, "finetune")
        rate = lr if name == "contrast_random_head" else shared  # the pixel-contrast recipes share 1e-2
        assert ft["train"]["head_init"] == "random" and ft["optim"]["lr"] == rate, name
    for name in ("contrast", "contrast_random_head", "contrast_joint_ft", "supercon", "pseudo"):
        assert recipe_defaults(name)["optim"]["lr"] == lr, name
    for name in (
        "ce",
        "joint",
        "glcnet",
        "dense_simclr",
        "directclr",
        "ssl_contrast",
        "hcsc",
        "claws",
        "ariel",
    ):
        assert recipe_defaults(name)["optim"]["lr"] == shared, name
    assert stage_defaults("supercon", "finetune")["loss"]["class_weights"] == "balanced"
    assert "head_init" not in stage_defaults("ce", "train")["train"]  # a first stage starts fresh
    stage_defaults("contrast", "finetune")["optim"]["lr"] = 1.0  # a copy: the records are unchanged
    assert stage_defaults("contrast", "finetune")["optim"]["lr"] == pytest.approx(lr / 3)
    with pytest.raises(ValueError, match="no stage 'nope'; its stages: \\['pretrain', 'finetune'\\]"):
        stage_defaults("contrast", "nope")
    with pytest.raises(ValueError, match="unknown method"):
        stage_defaults("nope", "train")


def test_every_objective_has_a_recipe_that_trains_it_first() -> None:
    # what `pixcon pretrain --objective X` takes its defaults from
    for objective in typing.get_args(ObjectiveName):
        name = pretraining_recipe(objective)
        assert name is not None and RECIPES[name].stages[0].objective == objective
    assert pretraining_recipe("contrast") == "contrast" and pretraining_recipe("glcnet") == "glcnet"
    first = finetuning_stage("pseudo")
    assert finetuning_stage("ce") is None and first is not None and first.name == "finetune"


# --- the CLI -------------------------------------------------------------------------------------


def _applied(line: str) -> dict[str, str]:
    """``key=value`` pairs of a defaults line."""
    pairs = line.split(": ", 2)[-1].split(", ")
    return dict(p.split(" ")[0].split("=", 1) for p in pairs)


def _assert_applied(cfg: RunConfig, line: str, name: str, stage: str) -> None:
    """Every recipe default is in the config and in the logged line, with the record's value."""
    applied = _applied(line)
    for key, value in flatten_settings(stage_defaults(name, stage)):
        assert _value(cfg, key) == pytest.approx(value), key
        if key != "train.objective":
            assert (
                float(applied[key]) == pytest.approx(value)
                if isinstance(value, float)
                else (applied[key] == str(value))
            ), key


@pytest.mark.parametrize(
    "argv, name, stage",
    [
        (["pretrain"], "contrast", "pretrain"),
        (["pretrain", "--objective", "glcnet"], "glcnet", "pretrain"),
        (["pretrain", "--set", "train.objective=dense_simclr"], "dense_simclr", "pretrain"),
        (["train"], "ce", "train"),
        (["train", "--joint"], "joint", "train"),
    ],
)
def test_pretrain_and_train_take_the_recipe_stage_defaults(
    argv: list[str], name: str, stage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, line = _resolve(argv, caplog)
    assert line.startswith(f"{argv[0]}: defaults of recipe {name}, stage {stage}: ")
    _assert_applied(cfg, line, name, stage)


@pytest.mark.parametrize(
    "trained, name, head_init, lr",
    [
        ("contrast", "contrast", "prototypes", 1e-2 / 3),  # contrast -> CE's own rate
        ("hcsc", "hcsc", "prototypes", 3e-3 / 3),  # the shared rate
        ("glcnet", "glcnet", "random", 3e-3),
        ("directclr", "directclr", "random", 3e-3),
    ],
)
def test_finetune_takes_the_stage_that_fine_tunes_the_checkpoints_objective(
    trained: str, name: str, head_init: str, lr: float, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = _checkpoint(tmp_path / "pre.pt", trained, "model.proj_layers=1")
    cfg, line = _resolve(["finetune", "--init-from", ckpt], caplog)
    assert line.startswith(
        f"finetune: defaults of recipe {name}, stage finetune (the checkpoint trained {trained}): "
    )
    assert cfg.train.objective == "ce" and cfg.train.head_init == head_init
    assert cfg.optim.lr == pytest.approx(lr) and cfg.optim.name == "adamw"
    _assert_applied(cfg, line, name, "finetune")


def test_finetune_recipe_flag_and_checkpoints_no_recipe_fine_tunes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = _checkpoint(tmp_path / "pre.pt", "contrast", "model.proj_layers=1")
    cfg, line = _resolve(["finetune", "--init-from", ckpt, "--recipe", "supercon"], caplog)
    assert line.startswith("finetune: defaults of recipe supercon, stage finetune: ")
    assert cfg.loss.class_weights == "balanced" and cfg.train.head_init == "prototypes"
    cfg, _ = _resolve(["finetune", "--init-from", ckpt, "--recipe", "contrast_joint_ft"], caplog)
    assert cfg.train.objective == "joint"  # that recipe fine-tunes with CE + lambda * contrast
    cfg, _ = _resolve(["finetune", "--init-from", ckpt, "--recipe", "contrast_random_head"], caplog)
    assert cfg.train.head_init == "random" and cfg.optim.lr == pytest.approx(1e-2)  # full rate, its own
    assert main(["finetune", "--init-from", ckpt, "--recipe", "ce", "--quiet"]) == 2  # no fine-tuning stage
    # a CE checkpoint: no recipe fine-tunes it, so CE's own settings
    ce = _checkpoint(tmp_path / "ce.pt", "ce", "model.proj_layers=1")
    cfg, line = _resolve(["finetune", "--init-from", ce], caplog)
    assert "recipe ce, stage train (the checkpoint trained ce, which no recipe fine-tunes)" in line
    assert cfg.train.head_init == "random" and cfg.optim.lr == pytest.approx(3e-3)


def test_finetune_keeps_the_checkpoints_projection_head(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a checkpoint pretrained with a two-layer head: the recipe's one layer would not load its weights
    ckpt = _checkpoint(tmp_path / "pre.pt", "contrast", "model.proj_layers=2")
    cfg, line = _resolve(["finetune", "--init-from", ckpt], caplog)
    assert cfg.model.proj_layers == 2 and "model.proj_layers=2 (the checkpoint's)" in line
    cfg, line = _resolve(["finetune", "--init-from", ckpt, "--set", "model.proj_layers=3"], caplog)
    assert cfg.model.proj_layers == 3 and "proj_layers" not in line


def test_config_file_and_set_win_over_the_recipe_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = _checkpoint(tmp_path / "pre.pt", "contrast", "model.proj_layers=1")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"optim": {"name": "sgd", "lr": 0.05}, "loss": {"variant": "batch"}}))
    argv = ["finetune", str(path), "--init-from", ckpt, "--set", "train.head_init=random"]
    cfg, line = _resolve([*argv, "--set", "optim.schedule=poly"], caplog)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == ("sgd", 0.05, "poly")
    assert cfg.loss.variant == "batch" and cfg.train.head_init == "random"
    assert cfg.optim.weight_decay == 1e-4 and cfg.loss.joint_weight == 0.5  # the others: the recipe's
    applied = _applied(line)
    assert not {"optim.name", "optim.lr", "optim.schedule", "loss.variant", "train.head_init"} & set(applied)
    assert applied["optim.weight_decay"] == "0.0001" and applied["loss.joint_weight"] == "0.5"
    # a whole section given with --set covers each of its keys
    cfg, line = _resolve(["train", "--set", 'optim={"name": "sgd"}'], caplog)
    assert cfg.optim.name == "sgd" and "optim.name" not in _applied(line)


def test_finetune_reads_a_missing_checkpoint_as_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["finetune", "--init-from", str(tmp_path / "nope.pt"), "--quiet"]) == 2
    assert f"checkpoint not found: {tmp_path / 'nope.pt'}" in capsys.readouterr().err


def test_a_tiny_run_saves_the_recipe_defaults_and_logs_them_unless_quiet(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tiny = ["--data-root", str(tiny_dataset), "--steps", "1", "--set", "data.image_size=32"]
    tiny += ["--set", "data.batch_size=4", "--set", "model.proj_dim=16"]
    with caplog.at_level(logging.INFO, logger="pixcon"):
        assert main(["train", *tiny, "--out", str(tmp_path / "ce")]) == 0
    assert any("train: defaults of recipe ce, stage train: " in r.getMessage() for r in caplog.records)
    saved = yaml.safe_load((tmp_path / "ce" / "config.yaml").read_text())
    for key, value in flatten_settings(stage_defaults("ce", "train")):
        section, name = key.split(".")
        assert saved[section][name] == value, key
    caplog.clear()
    assert main(["train", *tiny, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert not any("defaults of recipe" in r.getMessage() for r in caplog.records)

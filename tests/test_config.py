"""Config: defaults, YAML + overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixcon.config import ConfigError, RunConfig, from_dict, load_config, parse_override, replace, to_dict


def test_defaults_and_round_trip() -> None:
    cfg = load_config()
    assert cfg == RunConfig()
    assert from_dict(to_dict(cfg)) == cfg


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.5\n  name: adamw\nloss:\n  temperature: 0.07\n")
    cfg = load_config(
        path, ["optim.lr=0.25", "data.labeled_split=null", "train.steps=7", "model.encoder=resnet50"]
    )
    assert cfg.optim.lr == 0.25 and cfg.optim.name == "adamw"
    assert cfg.loss.temperature == 0.07 and cfg.train.steps == 7 and cfg.model.encoder == "resnet50"
    assert cfg.data.labeled_split is None
    assert isinstance(load_config(overrides=["optim.lr=1"]).optim.lr, float)  # ints accepted for floats
    # PyYAML reads 1e-3 (no dot) as a string; in a file and in --set it is still the number
    path.write_text("optim:\n  lr: 1e-3\n")
    assert load_config(path).optim.lr == 1e-3
    assert load_config(overrides=["optim.lr=3e-4"]).optim.lr == 3e-4
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number, got 'fast'"):
        load_config(overrides=["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number, got 'inf'"):
        load_config(overrides=["optim.lr=inf"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.lrr=0.1", r"unknown key optim\.lrr"),
        ("optimizer.lr=0.1", "unknown key optimizer"),
        ("train.steps=ten", r"train\.steps: expected an integer"),
        ("train.steps=1.5", r"train\.steps: expected an integer"),
        ("train.progress=maybe", r"train\.progress: expected a boolean"),
        ("loss.form=infonce", r"loss\.form: must be one of \['zhao', 'supcon'\]"),
        ("loss.temperature=0", r"loss\.temperature: 0\.0 is out of range; allowed: > 0"),
        ("loss.max_pixels=1", r"loss\.max_pixels: 1 is out of range; allowed: >= 2"),
        ("model.proj_layers=5", r"model\.proj_layers: 5 is out of range"),
        ("data.scale_min=0", r"data\.scale_min"),
        ("optim.lr", "key=value"),
        ("data.image_size=100", r"data\.image_size: 100 is not divisible by 32.*use 96 or 128"),
        ("data.eval_size=40", r"data\.eval_size: 40 is not divisible by 32.*use 32 or 64"),
        ("train.checkpoint_every=0", r"train\.checkpoint_every: 0 is out of range; allowed: None or >= 1"),
        (
            "data.format=coco",
            r"data\.format: must be one of \['folder', 'voc', 'cityscapes', 'potsdam', 'vaihingen', 'nifti'\]",
        ),
        ("data.patch_size=8", r"data\.patch_size: 8 is out of range; allowed: >= 16"),
        ("train.deterministic=2", r"train\.deterministic: expected a boolean"),
    ],
)
def test_bad_values_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        load_config(unknown)


def test_parse_override_values() -> None:
    assert parse_override("a.b=0.1") == ("a.b", 0.1)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=runs/x") == ("a", "runs/x")
    assert parse_override("a=") == ("a", "")


def test_replace_validates() -> None:
    cfg = replace(RunConfig(), train={"steps": 3})
    assert cfg.train.steps == 3
    with pytest.raises(ConfigError, match="train.steps"):
        replace(cfg, train={"steps": 0})


def test_shipped_example_config_loads() -> None:
    path = Path(__file__).parents[1] / "configs" / "example.yaml"
    cfg = load_config(path)
    assert cfg.model.arch == "deeplabv3plus" and cfg.train.steps == 2000

"""Infinite and NaN numbers are refused wherever the config takes a float (issue 18: an infinite
learning rate was accepted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixcon.cli import main
from pixcon.config import ConfigError, load_config


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN", "-.Inf"])
def test_yaml_infinities_and_nan_are_refused_in_a_file(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"optim:\n  lr: {text}\n")
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a finite number"):
        load_config(path)


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=.inf", "optim.lr"),
        ("loss.temperature=.nan", "loss.temperature"),
        ("data.value_range=[0, .inf]", r"data.value_range\[1\]"),
        ("hcsc.temperature=-.inf", "hcsc.temperature"),
        ('multidomain.domains=[{"root": "x", "scale_min": .nan}]', r"multidomain.domains\[0\].scale_min"),
        ("optim.lr=1e400", "optim.lr"),  # a string YAML does not read as a number: not finite either
    ],
)
def test_overrides_with_non_finite_numbers_are_refused(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=[override])


def test_cli_refuses_an_infinite_learning_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--set", "optim.lr=.inf", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: expected a finite number, got inf" in err and "Traceback" not in err


def test_finite_numbers_still_pass() -> None:
    cfg = load_config(overrides=["optim.lr=1e-3", "data.value_range=[-1024, 3071]"])
    assert cfg.optim.lr == 1e-3 and cfg.data.value_range == [-1024.0, 3071.0]

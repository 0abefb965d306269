"""One source of truth: every config Literal and CLI choice that names a registry's entries equals it."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from pixcon import config
from pixcon.analysis import SOURCES
from pixcon.cli import HEAD_INITS, STYLES, build_parser
from pixcon.cli import SOURCES as CLI_SOURCES
from pixcon.config_reference import render
from pixcon.data.registry import FORMATS as FORMAT_REGISTRY
from pixcon.data.synthetic import STYLES as STYLE_REGISTRY
from pixcon.losses.contrastive import FORMS, VARIANTS
from pixcon.losses.multidomain import POSITIVES
from pixcon.models import ARCHITECTURES
from pixcon.models.prototype_head import Space
from pixcon.objectives import OBJECTIVES
from pixcon.objectives.domains import LEVELS


def _literal(cls: type, key: str) -> set[str]:
    return set(typing.get_args(typing.get_type_hints(cls)[key]))


@pytest.mark.parametrize(
    "cls, key, registry",
    [
        (config.DataConfig, "format", FORMAT_REGISTRY),
        (config.ModelConfig, "arch", ARCHITECTURES),
        (config.LossConfig, "form", FORMS),
        (config.LossConfig, "variant", VARIANTS),
        (config.TrainConfig, "objective", OBJECTIVES),
        (config.TrainConfig, "prototype_space", typing.get_args(Space)),
        (config.MultiDomainConfig, "form", FORMS),
        (config.MultiDomainConfig, "level", LEVELS),
        (config.MultiDomainConfig, "positives", POSITIVES),
    ],
)
def test_config_literal_is_its_registry(cls: type, key: str, registry: typing.Iterable[str]) -> None:
    assert _literal(cls, key) == set(registry)


def test_cli_choices_are_the_registries() -> None:
    assert set(config.DATA_FORMATS) == set(FORMAT_REGISTRY)
    assert set(HEAD_INITS) == _literal(config.TrainConfig, "head_init")
    assert set(STYLES) == set(STYLE_REGISTRY)
    assert set(CLI_SOURCES) == set(SOURCES)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices  # type: ignore[union-attr]
    objective = next(a for a in sub["pretrain"]._actions if a.dest == "objective")
    assert set(objective.choices) == set(OBJECTIVES)


def test_config_reference_is_up_to_date() -> None:
    committed = Path(__file__).parents[1] / "docs" / "config.md"
    assert committed.read_text() == render(), (
        "regenerate it: python -m pixcon.config_reference > docs/config.md"
    )


def test_every_config_key_is_explained() -> None:
    """The reference's meaning column comes from the comment beside each field."""
    blank = [line.split("|")[1].strip() for line in render().splitlines() if line.endswith("|  |")]
    assert not blank, blank

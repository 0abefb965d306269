"""The config sections are the objectives' knobs: same keys, same defaults, and they take effect."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from pixcon.config import RunConfig, load_config
from pixcon.models import create_segmenter
from pixcon.objectives import DataInfo, create_objective, extra

INFO = DataInfo(num_classes=3, ignore_index=255, in_channels=3)


@pytest.mark.parametrize("section", ["hcsc", "claws", "ariel"])
def test_config_section_matches_the_factory_defaults(section: str, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: dict[str, Any] = {}
    real = extra._knob

    def spy(cfg: Any, sec: str, key: str) -> Any:
        asked[key] = real(cfg, sec, key)
        return asked[key]

    monkeypatch.setattr(extra, "_knob", spy)
    create_objective(section, SimpleNamespace(), create_segmenter(num_classes=3), INFO)
    defaults = dataclasses.asdict(getattr(RunConfig(), section))
    assert set(asked) == set(defaults)
    for key, value in defaults.items():
        got = list(asked[key]) if isinstance(asked[key], (tuple, list)) else asked[key]
        assert got == pytest.approx(value), key


def test_config_values_reach_the_objective() -> None:
    cfg = load_config(overrides=["ariel.steps=2", "ariel.epsilon=0.01", "hcsc.num_prototypes=[8,2]"])
    ariel = create_objective("ariel", cfg, create_segmenter(num_classes=3), INFO)
    assert (ariel.steps, ariel.epsilon) == (2, 0.01)
    hcsc = create_objective("hcsc", cfg, create_segmenter(num_classes=3), INFO)
    assert tuple(hcsc.loss.bank.num_prototypes) == (8, 2)

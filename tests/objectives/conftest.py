"""The objectives' tests train tiny models: one set of settings that every objective accepts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pixcon.config import RunConfig, load_config

# A tiny timm encoder and pixel budgets of a few dozen pixels: one step of every objective in
# well under a second.
SMALL = [
    "model.encoder=tu-test_resnet",
    "model.proj_dim=8",
    "data.image_size=64",
    "data.batch_size=2",
    "loss.max_pixels=64",
    "ssl.max_pairs=32",
    "hcsc.bank_size=64",
    "hcsc.bank_per_step=32",
    "hcsc.num_prototypes=[4, 2]",
    "hcsc.max_pixels=64",
    "claws.max_pixels=64",
    "ariel.max_pixels=64",
    "ariel.steps=1",
]


@pytest.fixture
def small_config() -> Callable[..., RunConfig]:
    """``small_config(root, *overrides)``: the config of dataset ``root`` with :data:`SMALL` and then
    ``overrides``."""

    def make(root: Path, *more: str) -> RunConfig:
        return load_config(overrides=[f"data.root={root}", *SMALL, *more])

    return make

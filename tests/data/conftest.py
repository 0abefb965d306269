"""Fixtures: tiny datasets in the exact on-disk layouts of VOC, Cityscapes, Potsdam and Vaihingen."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_layouts import (
    CityscapesFixture,
    ISPRSFixture,
    VOCFixture,
    write_cityscapes,
    write_potsdam,
    write_vaihingen,
    write_voc,
)


@pytest.fixture
def voc(tmp_path: Path) -> VOCFixture:
    return write_voc(tmp_path / "VOCdevkit")


@pytest.fixture
def cityscapes(tmp_path: Path) -> CityscapesFixture:
    return write_cityscapes(tmp_path / "cityscapes")


@pytest.fixture
def potsdam(tmp_path: Path) -> ISPRSFixture:
    return write_potsdam(tmp_path / "potsdam")


@pytest.fixture
def vaihingen(tmp_path: Path) -> ISPRSFixture:
    return write_vaihingen(tmp_path / "vaihingen")

"""Tests for the nested label-fraction splits."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixcon.data.folder import read_ids
from pixcon.data.splits import format_percent, nested_label_splits, split_filename, write_label_splits

IDS = [f"train_{i:05d}" for i in range(200)]
FRACTIONS = [0.01, 0.02, 0.05, 0.1, 0.25, 1.0]


def test_sizes_and_nesting() -> None:
    splits = nested_label_splits(IDS, FRACTIONS, seed=0)
    assert list(splits) == FRACTIONS
    assert [len(splits[f]) for f in FRACTIONS] == [2, 4, 10, 20, 50, 200]
    for small, large in itertools.pairwise(FRACTIONS):
        assert splits[large][: len(splits[small])] == splits[small]
    assert sorted(splits[1.0]) == IDS


def test_deterministic_and_seed_dependent() -> None:
    a = nested_label_splits(IDS, FRACTIONS, seed=3)
    assert a == nested_label_splits(list(reversed(IDS)), FRACTIONS, seed=3)  # input order is irrelevant
    assert a[0.1] != nested_label_splits(IDS, FRACTIONS, seed=4)[0.1]


def test_at_least_one_id() -> None:
    assert len(nested_label_splits(IDS[:10], [0.01], seed=0)[0.01]) == 1


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, math.nan, math.inf, True, "0.1"])
def test_fraction_validation_names_value(bad: object) -> None:
    with pytest.raises(ValueError, match=re.escape("(0, 1], got " + repr(bad))):
        nested_label_splits(IDS, [0.1, bad], seed=0)  # type: ignore[list-item]


def test_ids_validation() -> None:
    with pytest.raises(ValueError, match="empty"):
        nested_label_splits([], [0.5], seed=0)
    with pytest.raises(ValueError, match="unique.*'a'"):
        nested_label_splits(["a", "b", "a"], [0.5], seed=0)


@pytest.mark.parametrize(
    ("fraction", "label"),
    [
        (0.01, "1"),
        (0.02, "2"),
        (0.05, "5"),
        (0.07, "7"),
        (0.1, "10"),
        (0.29, "29"),
        (1.0, "100"),
        (0.005, "0.5"),
        (0.125, "12.5"),
    ],
)
def test_format_percent(fraction: float, label: str) -> None:
    assert format_percent(fraction) == label
    assert split_filename(fraction, 2) == f"labeled_{label}pct_seed2.txt"


def test_write_label_splits(tmp_path: Path) -> None:
    paths = write_label_splits(IDS, [0.05, 0.5], seeds=[0, 1], out_dir=tmp_path / "splits")
    names = [p.name for p in paths]
    assert names == [
        "labeled_5pct_seed0.txt",
        "labeled_50pct_seed0.txt",
        "labeled_5pct_seed1.txt",
        "labeled_50pct_seed1.txt",
    ]
    assert read_ids(paths[0]) == nested_label_splits(IDS, [0.05], seed=0)[0.05]
    assert set(read_ids(paths[0])) <= set(read_ids(paths[1]))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    fractions=st.lists(st.floats(0.001, 1.0), min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
)
def test_nested_property(n: int, fractions: list[float], seed: int) -> None:
    ids = [f"id{i}" for i in range(n)]
    splits = nested_label_splits(ids, fractions, seed)
    for f in fractions:
        subset = splits[f]
        assert len(subset) == max(1, math.floor(f * n + 0.5))
        assert len(set(subset)) == len(subset) and set(subset) <= set(ids)
    for a in fractions:
        for b in fractions:
            if a <= b:
                assert set(splits[a]) <= set(splits[b])

"""Tests for the class-stratified nested label splits."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from pixcon.data.folder import read_ids
from pixcon.data.splits import class_presence, nested_label_splits, num_labeled, write_label_splits

IDS = [f"img_{i:03d}" for i in range(100)]
RARE = {"img_010": 1, "img_030": 2, "img_050": 3, "img_070": 4}  # each rare class is in one image
PRESENCE = {i: {0} | ({RARE[i]} if i in RARE else set()) for i in IDS}
FRACTIONS = [0.05, 0.1, 0.5, 1.0]


def _classes(subset: list[str], presence: dict[str, set[int]]) -> set[int]:
    return set().union(*(presence[i] for i in subset))


def test_smallest_split_covers_rare_classes() -> None:
    plain = nested_label_splits(IDS, FRACTIONS, seed=0)
    assert _classes(plain[0.05], PRESENCE) != {0, 1, 2, 3, 4}  # random sampling misses them
    for seed in range(5):
        splits = nested_label_splits(IDS, FRACTIONS, seed=seed, presence=PRESENCE)
        assert len(splits[0.05]) == 5
        assert _classes(splits[0.05], PRESENCE) == {0, 1, 2, 3, 4}


def test_stratified_is_nested_deterministic_and_seeded() -> None:
    a = nested_label_splits(IDS, FRACTIONS, seed=3, presence=PRESENCE)
    assert a == nested_label_splits(list(reversed(IDS)), FRACTIONS, seed=3, presence=PRESENCE)
    for small, large in itertools.pairwise(FRACTIONS):
        assert a[large][: len(a[small])] == a[small]
    assert sorted(a[1.0]) == IDS
    assert a[0.1] != nested_label_splits(IDS, FRACTIONS, seed=4, presence=PRESENCE)[0.1]


def test_presence_as_sequence_and_validation() -> None:
    aligned = [PRESENCE[i] for i in IDS]
    assert nested_label_splits(IDS, [0.05], 1, presence=aligned) == nested_label_splits(
        IDS, [0.05], 1, presence=PRESENCE
    )
    with pytest.raises(ValueError, match="no entry for 1 ids.*img_099"):
        nested_label_splits(IDS, [0.05], 0, presence={i: PRESENCE[i] for i in IDS[:-1]})
    with pytest.raises(ValueError, match="99 entries but there are 100 ids"):
        nested_label_splits(IDS, [0.05], 0, presence=aligned[:-1])


def test_default_behaviour_unchanged() -> None:
    # Without presence, a split is the prefix of the sorted ids permuted by numpy's default_rng(seed):
    # label splits already written stay valid (golden values, and the reference written out).
    expected = [f"img_{i:03d}" for i in (88, 42, 26, 50, 54, 70, 4, 53, 24, 32)]
    assert nested_label_splits(IDS, [0.1], 7) == {0.1: expected}
    perm = np.random.default_rng(7).permutation(len(IDS))
    assert expected == [sorted(IDS)[k] for k in perm[:10]]
    assert nested_label_splits(list(reversed(IDS)), [0.1], 7, presence=None) == {0.1: expected}


class _Masks:
    ignore_index = 255

    def __init__(self, masks: list[Tensor]) -> None:
        self.masks = masks
        self.ids = [f"m{i}" for i in range(len(masks))]

    def __len__(self) -> int:
        return len(self.masks)

    def mask(self, i: int) -> Tensor:
        return self.masks[i]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        raise AssertionError("class_presence must not decode images")


def test_class_presence_reads_masks_only() -> None:
    ds = _Masks(
        [torch.tensor([[0, 0], [255, 2]]), torch.tensor([[255, 255], [255, 255]]), torch.tensor([[5]])]
    )
    assert class_presence(ds) == [{0, 2}, set(), {5}]


def test_write_label_splits_stratified(tmp_path: Path) -> None:
    paths = write_label_splits(IDS, [0.05], seeds=[0], out_dir=tmp_path, presence=PRESENCE)
    assert _classes(read_ids(paths[0]), PRESENCE) == {0, 1, 2, 3, 4}


@settings(max_examples=60, deadline=None)
@given(
    presence_list=st.lists(st.frozensets(st.integers(0, 7), max_size=3), min_size=1, max_size=80),
    fractions=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
)
def test_stratified_property(presence_list: list[frozenset[int]], fractions: list[float], seed: int) -> None:
    ids = [f"id{i}" for i in range(len(presence_list))]
    presence = dict(zip(ids, presence_list, strict=True))
    splits = nested_label_splits(ids, fractions, seed, presence=presence)
    assert splits == nested_label_splits(ids, fractions, seed, presence=presence)
    pool = _classes(ids, presence)  # type: ignore[arg-type]
    for f in fractions:
        subset = splits[f]
        assert len(subset) == num_labeled(f, len(ids)) == max(1, math.floor(f * len(ids) + 0.5))
        assert len(set(subset)) == len(subset)
        if len(subset) >= len(pool):  # the covering block has at most one image per class
            assert _classes(subset, presence) == pool  # type: ignore[arg-type]
    for a, b in itertools.product(fractions, fractions):
        if a <= b:
            assert set(splits[a]) <= set(splits[b])

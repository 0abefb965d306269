"""Seeded, nested label-fraction splits for the label-efficiency experiments.

For one seed, the ids are sorted and permuted once; fraction f keeps the first
``max(1, round_half_up(f * N))`` ids of that permutation. Smaller fractions are therefore
subsets of larger ones, and the lists depend only on the set of ids and the seed.

Stratified (optional, ``presence=``): the permutation is reordered so that it starts with a few
images that together contain every class of the pool. Classes are taken rarest first (fewest images
containing them, ties by class id); for each class not yet covered, the first image of the seeded
permutation that contains it is moved to the front, and its classes count as covered. The rest keep
their permuted order. Every fraction is still a prefix of one ordering (nested, deterministic for a
seed), and a fraction with at least as many ids as the front block contains every class; a smaller
one contains the rarest classes first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pixcon.data.base import check_unique_ids
from pixcon.data.folder import write_ids

logger = logging.getLogger(__name__)


def _validate_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating, np.integer)):
        raise ValueError(f"label fraction must be a number in (0, 1], got {fraction!r}")
    f = float(fraction)
    if not (math.isfinite(f) and 0.0 < f <= 1.0):
        raise ValueError(f"label fraction must be in (0, 1], got {fraction!r}")
    return f


def num_labeled(fraction: float, num_ids: int) -> int:
    """Number of ids kept for `fraction` of `num_ids`: ``max(1, round_half_up(fraction * num_ids))``."""
    f = _validate_fraction(fraction)
    return max(1, min(num_ids, math.floor(f * num_ids + 0.5)))


Presence = Mapping[str, Collection[int]] | Sequence[Collection[int]]


def _presence_by_id(ids: Sequence[str], presence: Presence) -> dict[str, frozenset[int]]:
    if isinstance(presence, Mapping):
        missing = [i for i in ids if i not in presence]
        if missing:
            raise ValueError(f"presence has no entry for {len(missing)} ids, e.g. {missing[:3]}")
        return {i: frozenset(int(c) for c in presence[i]) for i in ids}
    if len(presence) != len(ids):
        raise ValueError(f"presence has {len(presence)} entries but there are {len(ids)} ids")
    return {i: frozenset(int(c) for c in p) for i, p in zip(ids, presence, strict=True)}


def _stratify(shuffled: list[str], presence: dict[str, frozenset[int]]) -> list[str]:
    """Moves a class-covering block to the front of `shuffled` (see the module docstring)."""
    support: dict[int, int] = {}
    for i in shuffled:
        for c in presence[i]:
            support[c] = support.get(c, 0) + 1
    covered: set[int] = set()
    front: list[str] = []
    for c in sorted(support, key=lambda c: (support[c], c)):  # rarest class first
        if c in covered:
            continue
        pick = next(i for i in shuffled if c in presence[i] and i not in front)
        front.append(pick)
        covered |= presence[pick]
    chosen = set(front)
    return front + [i for i in shuffled if i not in chosen]


def nested_label_splits(
    ids: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    *,
    presence: Presence | None = None,
) -> dict[float, list[str]]:
    """Nested labelled subsets of `ids`, one per fraction.

    Args:
        ids: Unique sample ids; their order does not matter (they are sorted first).
        fractions: Label fractions, each in (0, 1].
        seed: Seed of the permutation.
        presence: Optional class ids present in each sample, as ``{id: classes}`` or a sequence
            aligned with `ids` (see :func:`class_presence`). Given, the splits are stratified: the
            smallest fractions contain every class of the pool where their size allows (see the
            module docstring). None keeps the plain seeded permutation.

    Returns:
        ``{fraction: ids}`` in the order of `fractions`; each list is a prefix of one seeded
        ordering, so ``splits[a] ⊆ splits[b]`` whenever ``a <= b``.

    Raises:
        ValueError: Empty or duplicated ids, a fraction outside (0, 1], or `presence` not covering
            every id (the message names it).
    """
    checked = [_validate_fraction(f) for f in fractions]
    ordered = sorted(ids)
    if not ordered:
        raise ValueError("ids is empty")
    check_unique_ids(ordered, "ids")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[k] for k in perm]
    if presence is not None:
        shuffled = _stratify(shuffled, _presence_by_id(list(ids), presence))
    return {f: shuffled[: num_labeled(f, len(shuffled))] for f in checked}


def class_presence(dataset: Any) -> list[set[int]]:
    """The class ids present in each sample's mask, in dataset order.

    Reads masks only, through ``dataset.mask(i)``; the ignore index (``dataset.ignore_index``,
    default 255) is not a class.

    Args:
        dataset: A :class:`~pixcon.data.base.SegmentationDataset`.

    Returns:
        One set per sample, aligned with ``dataset.ids``.
    """
    ignore = int(getattr(dataset, "ignore_index", 255))
    out = []
    for i in range(len(dataset)):
        values = dataset.mask(i).unique()  # (K,)
        out.append({int(v) for v in values.tolist() if v != ignore})
    return out


def format_percent(fraction: float) -> str:
    """Stable percent label: 0.01 -> "1", 0.1 -> "10", 1.0 -> "100", 0.005 -> "0.5"."""
    pct = round(_validate_fraction(fraction) * 100, 6)  # drops float noise such as 7.000000000000001
    return f"{pct:g}"


def split_filename(fraction: float, seed: int) -> str:
    """File name of one label split, e.g. ``labeled_5pct_seed0.txt``."""
    return f"labeled_{format_percent(fraction)}pct_seed{seed}.txt"


def write_label_splits(
    ids: Sequence[str],
    fractions: Sequence[float],
    seeds: Iterable[int],
    out_dir: str | Path,
    *,
    presence: Presence | None = None,
) -> list[Path]:
    """Writes ``out_dir/labeled_{pct}pct_seed{seed}.txt`` for every (seed, fraction).

    Args:
        ids: Unique sample ids (e.g. the train split).
        fractions: Label fractions, each in (0, 1].
        seeds: One nested family of splits per seed.
        out_dir: Destination folder (created).
        presence: Optional per-id class presence; stratifies the splits (see
            :func:`nested_label_splits`).

    Returns:
        The written paths, seeds outer, fractions inner.
    """
    out = Path(out_dir)
    paths = []
    for seed in seeds:
        for fraction, subset in nested_label_splits(ids, fractions, seed, presence=presence).items():
            paths.append(write_ids(out / split_filename(fraction, seed), subset))
    logger.info("wrote %d label splits to %s", len(paths), out)
    return paths

"""Seeded, nested label-fraction splits for the label-efficiency experiments.

For one seed, the ids are sorted and permuted once; fraction f keeps the first
``max(1, round_half_up(f * N))`` ids of that permutation. Smaller fractions are therefore
subsets of larger ones, and the lists depend only on the set of ids and the seed.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

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


def nested_label_splits(ids: Sequence[str], fractions: Sequence[float], seed: int) -> dict[float, list[str]]:
    """Nested labelled subsets of `ids`, one per fraction.

    Args:
        ids: Unique sample ids; their order does not matter (they are sorted first).
        fractions: Label fractions, each in (0, 1].
        seed: Seed of the permutation.

    Returns:
        ``{fraction: ids}`` in the order of `fractions`; each list is a prefix of the seeded
        permutation, so ``splits[a] ⊆ splits[b]`` whenever ``a <= b``.

    Raises:
        ValueError: Empty or duplicated ids, or a fraction outside (0, 1] (the message names it).
    """
    checked = [_validate_fraction(f) for f in fractions]
    ordered = sorted(ids)
    if not ordered:
        raise ValueError("ids is empty")
    if len(set(ordered)) != len(ordered):
        dupes = sorted({i for i, j in itertools.pairwise(ordered) if i == j})
        raise ValueError(f"ids must be unique; duplicated: {dupes[:5]}")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[k] for k in perm]
    return {f: shuffled[: num_labeled(f, len(shuffled))] for f in checked}


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
) -> list[Path]:
    """Writes ``out_dir/labeled_{pct}pct_seed{seed}.txt`` for every (seed, fraction).

    Args:
        ids: Unique sample ids (e.g. the train split).
        fractions: Label fractions, each in (0, 1].
        seeds: One nested family of splits per seed.
        out_dir: Destination folder (created).

    Returns:
        The written paths, seeds outer, fractions inner.
    """
    out = Path(out_dir)
    paths = []
    for seed in seeds:
        for fraction, subset in nested_label_splits(ids, fractions, seed).items():
            paths.append(write_ids(out / split_filename(fraction, seed), subset))
    logger.info("wrote %d label splits to %s", len(paths), out)
    return paths

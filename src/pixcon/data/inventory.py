"""What the masks say about training before it starts: stray class ids and crops with no label.

Stray class ids. Without a classes file, a folder dataset has as many classes as its largest mask value
plus one. One stray value (an interpolated boundary pixel, a mask saved with the wrong palette) then
silently creates a head of hundreds of classes. :func:`find_stray_classes` names the ids that look like
that, by this rule:

    the largest ids present, from some id ``first`` up, are strays when
      (1) they lie far beyond the next id present below them, ``below``: at least ``STRAY_MIN_GAP`` (8)
          ids between ``below`` and ``first`` are absent from every mask, and more of them than the
          ``below + 1`` ids up to ``below`` (so the strays more than double the head), and
      (2) together they cover less than ``STRAY_MAX_SHARE`` (1 %) of the labelled pixels.

    Of the sets that qualify, the largest is reported.

A class id 200 with five pixels among classes 0..8 is a stray; 200 with a tenth of the pixels is a
class (with an oddly numbered id), and so is 12 among 0..8 (only 3 unused ids between). A dataset
with strays is refused by :class:`~pixcon.data.folder.SegmentationFolder` (and reported by ``pixcon
data check``) until a classes file declares the classes or the masks are fixed.

Ignored-only crops. :func:`count_ignored_only_crops` draws the training crops of
:func:`pixcon.data.transforms.train_transform` (the random resized crop: area fraction uniform in
``[scale_min, 1]``, aspect ratio log-uniform in [3/4, 4/3], ten tries, else a centred crop) on a
mask, samples each crop at the ``image_size`` x ``image_size`` grid of the pixel-centre nearest resize
the transform applies to masks, and counts the crops in which every sampled pixel is the ignore index.
"""

from __future__ import annotations

import math

import numpy as np

STRAY_MIN_GAP = 8  # unused ids between a stray and the next id present, at least
STRAY_MAX_SHARE = 0.01  # a stray covers less than this fraction of the labelled pixels
IGNORED_CROP_WARN = 0.05  # `pixcon data check` warns above this fraction of ignored-only crops
CROPS_PER_MASK = 16


def find_stray_classes(counts: np.ndarray) -> list[int]:
    """The stray class ids of an inventory (see the module docstring for the rule).

    Args:
        counts: Shape (V,), labelled pixels per mask value ``0 .. V-1``, the ignore index excluded
            (set to 0).

    Returns:
        The strays, largest first; empty for a plausible inventory.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    present = [int(v) for v in np.nonzero(counts)[0]]
    strays: list[int] = []
    tail = 0  # pixels of present[j:]
    for j in range(len(present) - 1, 0, -1):
        tail += int(counts[present[j]])
        if tail >= STRAY_MAX_SHARE * total:
            break  # the tail only grows from here
        below = present[j - 1]
        if present[j] - below - 1 >= max(STRAY_MIN_GAP, below + 1):
            strays = present[j:][::-1]
    return strays


def crop_box(
    height: int, width: int, scale_min: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one random resized crop, as ``v2.RandomResizedCrop.get_params`` draws it.

    Area fraction uniform in ``[scale_min, 1]``, aspect ratio log-uniform in [3/4, 4/3]; ten tries,
    then a centred crop of the whole image clamped to that ratio range.
    """
    area = height * width
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * rng.uniform(scale_min, 1.0)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif in_ratio > 4 / 3:
        h, w = height, round(height * (4 / 3))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def count_ignored_only_crops(
    mask: np.ndarray,
    ignore_index: int,
    size: int,
    scale_min: float,
    rng: np.random.Generator,
    samples: int = CROPS_PER_MASK,
    window: int | None = None,
) -> int:
    """How many of `samples` random training crops of `mask` hold only the ignore index.

    Args:
        mask: Shape (H, W), class ids.
        ignore_index: The ignored value.
        size: ``data.image_size``: crops are resized to (size, size) with pixel-centre nearest.
        scale_min: ``data.scale_min``.
        rng: Source of the crops.
        samples: Crops drawn.
        window: For tiles read as patches (Potsdam/Vaihingen): each crop is drawn inside a random
            ``window`` x ``window`` patch of the tile. None: the mask is one sample.

    Returns:
        The count, in ``0 .. samples``.
    """
    labelled = mask != ignore_index  # (H, W)
    if labelled.all():
        return 0
    if not labelled.any():
        return samples
    out = 0
    for _ in range(samples):
        region = labelled
        if window is not None and mask.shape[0] >= window and mask.shape[1] >= window:
            y = int(rng.integers(0, mask.shape[0] - window + 1))
            x = int(rng.integers(0, mask.shape[1] - window + 1))
            region = labelled[y : y + window, x : x + window]  # (P, P)
        height, width = region.shape
        top, left, h, w = crop_box(height, width, scale_min, rng)
        # The nearest resize keeps source pixel floor((i + 0.5) * h / size) of each output row i.
        rows = np.minimum(np.floor((np.arange(size) + 0.5) * (h / size)).astype(np.int64), h - 1) + top
        cols = np.minimum(np.floor((np.arange(size) + 0.5) * (w / size)).astype(np.int64), w - 1) + left
        if not region[rows[:, None], cols[None, :]].any():  # (size, size)
            out += 1
    return out

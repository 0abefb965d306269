"""The embedded default dataset, "pixcon-fashion-scenes": real textures and real clothing.

Each image is a background split into 2-4 wavy Voronoi regions, each filled with a crop of a
real photographic texture bundled with scikit-image ("stuff" classes: brick, grass, gravel,
regolith = the lunar surface of ``skimage.data.moon``), and 1-4 Fashion-MNIST items ("thing"
classes) pasted on top at 20-45 % of the image size. The mask is exact by construction: an item's
pixels are those of its resized greyscale image at or above `ITEM_THRESHOLD`, and exactly those
pixels are written to both the image and the mask.

Class ids: the stuff classes first (``0..S-1``), then the 10 Fashion-MNIST classes (``S..S+9``).
Items come from the Fashion-MNIST train split for train (its first 5/6) and val (its last 1/6),
and from the t10k split for test, so val and test items are never seen in training.

Every image is drawn from its own ``numpy.random.Generator(PCG64)`` seeded by
``(seed, split, index)`` (see `scene_rng`), so any image can be regenerated alone with
`render_image`, and the same arguments give byte-identical files (same numpy / Pillow versions).

A second **style**, ``aux`` (`STYLES`), makes a different dataset of the same kind: a second
domain for multi-domain training (:mod:`pixcon.objectives.multidomain`). Its background textures
are other scikit-image images (``coins``, ``page`` as "paper", ``cell`` as "cells"), its clothing
classes are 4 coarse groups of Fashion-MNIST labels (top = t-shirt/top, pullover, coat, shirt;
trouser; footwear = sandal, sneaker, ankle boot; bag) with dresses left out, and its images have
other statistics: half the colour saturation, gamma 1.4 (darker) and Gaussian noise (std 0.04).
Its random streams are separate from the default style's for the same seed. The default style is
unchanged by the option (same bytes, same ``meta.yaml``).

A third style, ``coarse``, is a version of the default dataset made to be learnable within the
demo's budget (issue 20, ``docs/experiments/learnability.md``): the same four textures, and the ten
Fashion-MNIST labels merged into 4 coarse clothing classes (top = t-shirt/top, pullover, coat,
shirt; bottom = trouser, dress; footwear = sandal, sneaker, ankle boot; bag), each drawn equally
often (`SceneStyle.balance_groups`); 1-3 items per image at 40-70 % of the image side; and a hue
prior per clothing class (`SceneStyle.hue_spread`): class ``k`` of 4 is tinted with a hue in
``k / 4 +- 0.15``, so neighbouring classes share a third of their hues and shape has to tell them
apart there.
"""

from __future__ import annotations

import colorsys
import functools
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from pixcon.data.fashion import FASHION_CLASSES, load_fashion_mnist
from pixcon.data.folder import write_ids

logger = logging.getLogger(__name__)

DATASET_NAME = "pixcon-fashion-scenes"
GENERATOR_VERSION = 1  # bump whenever the rendering changes, so stale caches are not reused
SPLITS: tuple[str, ...] = ("train", "val", "test")
IGNORE_INDEX = 255

# Stuff classes and the scikit-image loader of each texture; all ship inside the wheel (no download).
STUFF_CLASSES: tuple[str, ...] = ("brick", "grass", "gravel", "regolith")
_STUFF_SOURCES: dict[str, str] = {"brick": "brick", "grass": "grass", "gravel": "gravel", "regolith": "moon"}
# Base RGB tint per stuff class (the textures are greyscale); each region jitters it slightly.
_STUFF_TINTS: dict[str, tuple[float, float, float]] = {
    "brick": (0.95, 0.55, 0.42),
    "grass": (0.55, 0.85, 0.40),
    "gravel": (0.80, 0.80, 0.78),
    "regolith": (0.95, 0.85, 0.62),
}
CLASS_NAMES: tuple[str, ...] = STUFF_CLASSES + FASHION_CLASSES
NUM_STUFF = len(STUFF_CLASSES)

# Visualisation colours, one per class id: muted for stuff, saturated for clothing.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 48, 40),  # brick
    (48, 96, 40),  # grass
    (96, 96, 96),  # gravel
    (160, 144, 104),  # regolith
    (31, 119, 180),  # t-shirt/top
    (255, 127, 14),  # trouser
    (44, 200, 44),  # pullover
    (214, 39, 40),  # dress
    (148, 103, 189),  # coat
    (255, 230, 0),  # sandal
    (227, 119, 194),  # shirt
    (23, 190, 207),  # sneaker
    (0, 0, 160),  # bag
    (255, 255, 255),  # ankle boot
)

RGB = tuple[int, int, int]

ITEM_THRESHOLD = 40  # resized item pixels >= this (of 255) form the silhouette
_ITEM_SCALE = (0.20, 0.45)  # longest item side, as a fraction of the image side (default style)
_ITEMS_PER_IMAGE = (1, 4)  # default style
_REGIONS_PER_IMAGE = (2, 4)  # default style


@dataclass(frozen=True)
class SceneStyle:
    """What a generated dataset is made of (see `STYLES`).

    Attributes:
        name: Dataset name (``classes.yaml``).
        stuff: Stuff class names, ids ``0..S-1``.
        stuff_sources: The ``skimage.data`` loader of each stuff class's texture (greyscale, or
            converted to it).
        stuff_tints: Base RGB tint of each stuff class.
        things: Clothing class names, ids ``S..``.
        thing_labels: The Fashion-MNIST labels of each clothing class (labels in none are never
            drawn).
        palette: One colour per class, stuff first.
        saturation: Colour saturation factor of the finished image (1: unchanged).
        gamma: Gamma applied to the finished image (1: unchanged; > 1 darker).
        noise: Std of Gaussian noise added to the finished image (0: none).
        seed_code: Appended to every image's seed sequence, so the style's random streams differ
            from the default's for the same seed; ``None`` for the default style.
        item_scale: Range of an item's longest side, as a fraction of the image side.
        items_per_image: Range (inclusive) of the number of pasted items.
        regions_per_image: Range (inclusive) of the number of background regions (at most the
            number of stuff classes).
        balance_groups: Divide each Fashion-MNIST label's sampling weight by the size of its
            clothing class, so that every clothing class is drawn equally often (at equal
            ``class_frequencies``) however many labels it groups.
        hue_spread: ``None``: an item's hue is uniform on the colour circle, whatever its class.
            A number ``w`` in (0, 0.5]: clothing class ``k`` of ``K`` has the hue centre ``k / K``
            and its items a hue uniform in ``k / K +- w`` (a colour prior per class, as real
            clothing has; ``w > 1 / (2K)`` makes neighbouring classes' hues overlap, so colour
            alone does not tell them apart).
    """

    name: str
    stuff: tuple[str, ...]
    stuff_sources: tuple[str, ...]
    stuff_tints: tuple[tuple[float, float, float], ...]
    things: tuple[str, ...]
    thing_labels: tuple[tuple[int, ...], ...]
    palette: tuple[RGB, ...]
    saturation: float = 1.0
    gamma: float = 1.0
    noise: float = 0.0
    seed_code: int | None = None
    item_scale: tuple[float, float] = _ITEM_SCALE
    items_per_image: tuple[int, int] = _ITEMS_PER_IMAGE
    regions_per_image: tuple[int, int] = _REGIONS_PER_IMAGE
    balance_groups: bool = False
    hue_spread: float | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.stuff + self.things

    @property
    def thing_of_label(self) -> tuple[int, ...]:
        """Clothing class index (0-based, add ``len(stuff)`` for the id) of each Fashion-MNIST
        label, -1 where the style leaves the label out."""
        out = [-1] * len(FASHION_CLASSES)
        for k, labels in enumerate(self.thing_labels):
            for label in labels:
                out[label] = k
        return tuple(out)


DEFAULT_STYLE = SceneStyle(
    name=DATASET_NAME,
    stuff=STUFF_CLASSES,
    stuff_sources=tuple(_STUFF_SOURCES[n] for n in STUFF_CLASSES),
    stuff_tints=tuple(_STUFF_TINTS[n] for n in STUFF_CLASSES),
    things=FASHION_CLASSES,
    thing_labels=tuple((k,) for k in range(len(FASHION_CLASSES))),
    palette=PALETTE,
)
AUX_STYLE = SceneStyle(
    name=f"{DATASET_NAME}-aux",
    stuff=("coins", "paper", "cells"),
    stuff_sources=("coins", "page", "cell"),
    stuff_tints=((0.90, 0.78, 0.45), (0.92, 0.92, 0.86), (1.60, 1.15, 1.80)),  # cell is dark: brightened
    things=("top", "trouser", "footwear", "bag"),
    thing_labels=((0, 2, 4, 6), (1,), (5, 7, 9), (8,)),  # dress (3) left out
    palette=(
        (200, 160, 60),  # coins
        (230, 230, 220),  # paper
        (170, 110, 200),  # cells
        (31, 119, 180),  # top
        (255, 127, 14),  # trouser
        (23, 190, 207),  # footwear
        (0, 0, 160),  # bag
    ),
    saturation=0.5,
    gamma=1.4,
    noise=0.04,
    seed_code=1,
)
# A version of the default dataset that CE-only learns within a demo-sized budget (issue 20;
# bench/learnability.py, docs/experiments/learnability.md): the same textures, 4 coarse clothing
# classes drawn equally often, larger and fewer items, and a per-class hue prior whose ranges
# overlap, so that shape still separates neighbouring classes. meta.yaml keys a cached folder by
# the style's name only: a changed definition needs a new name (or a GENERATOR_VERSION bump).
COARSE_STYLE = SceneStyle(
    name=f"{DATASET_NAME}-coarse",
    stuff=STUFF_CLASSES,
    stuff_sources=tuple(_STUFF_SOURCES[n] for n in STUFF_CLASSES),
    stuff_tints=tuple(_STUFF_TINTS[n] for n in STUFF_CLASSES),
    things=("top", "bottom", "footwear", "bag"),
    # top = t-shirt/top, pullover, coat, shirt; bottom = trouser, dress; footwear = sandal,
    # sneaker, ankle boot
    thing_labels=((0, 2, 4, 6), (1, 3), (5, 7, 9), (8,)),
    palette=(
        *PALETTE[:NUM_STUFF],
        (31, 119, 180),  # top
        (255, 127, 14),  # bottom
        (23, 190, 207),  # footwear
        (0, 0, 160),  # bag
    ),
    seed_code=2,
    item_scale=(0.40, 0.70),
    items_per_image=(1, 3),
    regions_per_image=(2, 4),
    balance_groups=True,
    hue_spread=0.15,
)
STYLES: dict[str, SceneStyle] = {"default": DEFAULT_STYLE, "aux": AUX_STYLE, "coarse": COARSE_STYLE}


def get_style(style: str | SceneStyle) -> SceneStyle:
    """A style by name (or itself); unknown names raise with the list of styles."""
    if isinstance(style, SceneStyle):
        return style
    if style not in STYLES:
        raise ValueError(f"unknown scene style {style!r}; available: {sorted(STYLES)}")
    return STYLES[style]


_MAX_OVERLAP = 0.25  # accept an item position if at most this fraction of it covers earlier items
_POSITION_TRIES = 8
_VAL_POOL_FRACTION = 6  # val items: the last 1/6 of the Fashion-MNIST train split
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Placement:
    """One pasted clothing item.

    Attributes:
        class_id: Dataset class id (``NUM_STUFF + fashion_label``).
        fashion_label: Fashion-MNIST label, 0..9.
        source_index: Index of the item in its Fashion-MNIST split file.
        top: Row of the silhouette's top-left corner in the image.
        left: Column of the silhouette's top-left corner in the image.
        silhouette: Boolean array, shape (h, w): exactly the pixels that were pasted.
    """

    class_id: int
    fashion_label: int
    source_index: int
    top: int
    left: int
    silhouette: np.ndarray

    def full_mask(self, image_size: int) -> np.ndarray:
        """Returns the silhouette placed in the image, shape (image_size, image_size), bool."""
        out = np.zeros((image_size, image_size), dtype=bool)
        h, w = self.silhouette.shape
        out[self.top : self.top + h, self.left : self.left + w] = self.silhouette
        return out


@dataclass(frozen=True)
class SceneSources:
    """Pre-loaded material for `render_scene`.

    Attributes:
        textures: One greyscale texture per stuff class, each (Ht, Wt) uint8.
        items_by_class: For each Fashion-MNIST label, the pool's items, (n_k, 28, 28) uint8.
        source_indices_by_class: For each label, the items' indices in the split file, (n_k,).
    """

    textures: tuple[np.ndarray, ...]
    items_by_class: tuple[np.ndarray, ...]
    source_indices_by_class: tuple[np.ndarray, ...]


def load_textures(style: str | SceneStyle = "default") -> tuple[np.ndarray, ...]:
    """Loads a style's stuff textures bundled with scikit-image, in its stuff-class order
    (`STUFF_CLASSES` for the default style).

    Returns:
        Tuple of greyscale uint8 arrays (Ht, Wt), read-only.
    """
    return _load_textures(get_style(style).stuff_sources)


@functools.lru_cache(maxsize=4)
def _load_textures(sources: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    import skimage.data  # imported lazily: it is slow and only generation needs it

    textures = []
    for name in sources:
        tex = np.ascontiguousarray(getattr(skimage.data, name)(), dtype=np.uint8)
        if tex.ndim != 2:
            raise ValueError(f"texture {name!r} must be greyscale, got shape {tex.shape}")
        tex.setflags(write=False)
        textures.append(tex)
    return tuple(textures)


@functools.lru_cache(maxsize=2)
def _load_fashion_cached(path: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_fashion_mnist(path, split)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_scene_sources(
    split: str, fashion_path: str | Path | None = None, style: str | SceneStyle = "default"
) -> SceneSources:
    """Loads the textures and the Fashion-MNIST item pool used for one dataset split.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        fashion_path: Directory of the Fashion-MNIST idx files; ``None`` searches the defaults.
        style: Whose textures (see `STYLES`).

    Returns:
        The `SceneSources` of that split (loaded arrays are cached between calls).
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    key = None if fashion_path is None else str(Path(fashion_path))
    images, labels = _load_fashion_cached(key, "test" if split == "test" else "train")
    indices = np.arange(len(labels))
    if split != "test":
        start = len(labels) - len(labels) // _VAL_POOL_FRACTION
        indices = indices[start:] if split == "val" else indices[:start]
    by_class = [indices[labels[indices] == k] for k in range(len(FASHION_CLASSES))]
    return SceneSources(
        textures=load_textures(style),
        items_by_class=tuple(images[idx] for idx in by_class),
        source_indices_by_class=tuple(by_class),
    )


def scene_rng(seed: int, split: str, index: int, style: str | SceneStyle = "default") -> np.random.Generator:
    """The generator of one image: PCG64 seeded from ``(seed, split, index)`` (and the style's
    ``seed_code`` for a style other than the default)."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    code = get_style(style).seed_code
    entropy = [seed, _SPLIT_CODES[split], index] + ([] if code is None else [code])
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def parse_class_frequencies(text: str) -> dict[str, float]:
    """Parses ``"bag=0.1,sandal=0.2"`` (the CLI's ``--class-frequencies``) into ``{name: weight}``.

    Names and weights are checked later, by `resolve_class_weights`.

    Raises:
        ValueError: An item is not ``name=weight`` with a number as the weight (names the item).
    """
    freqs: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            freqs[name.strip()] = float(value)
        except ValueError as err:
            raise ValueError(f"--class-frequencies: {item!r} must look like name=weight") from err
    return freqs


def resolve_class_weights(class_frequencies: Mapping[str, float] | None) -> dict[str, float]:
    """Validates clothing-class sampling weights and fills in the missing ones.

    Args:
        class_frequencies: Relative weight per Fashion-MNIST class name; classes not named keep
            weight 1.0. ``None`` means uniform.

    Returns:
        A weight for every name in `FASHION_CLASSES`, in that order.

    Raises:
        ValueError: Unknown name (the message lists the valid ones), negative or non-finite
            weight, or all weights zero.
    """
    weights = dict.fromkeys(FASHION_CLASSES, 1.0)
    for name, weight in (class_frequencies or {}).items():
        if name not in weights:
            raise ValueError(
                f"unknown clothing class {name!r} in class_frequencies; valid names: {list(FASHION_CLASSES)}"
            )
        w = float(weight)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"class_frequencies[{name!r}] must be a finite weight >= 0, got {weight!r}")
        weights[name] = w
    if sum(weights.values()) <= 0:
        raise ValueError("class_frequencies: all clothing-class weights are 0; at least one must be > 0")
    return weights


def _texture_layer(rng: np.random.Generator, texture: np.ndarray, tint: np.ndarray, size: int) -> np.ndarray:
    """A random crop of `texture`, rotated, resized and tinted: (size, size, 3) float in [0, 1]."""
    th, tw = texture.shape
    side = min(th, tw, max(8, round(size * rng.uniform(1.0, 3.0))))
    top = int(rng.integers(0, th - side + 1))
    left = int(rng.integers(0, tw - side + 1))
    crop = np.rot90(texture[top : top + side, left : left + side], k=int(rng.integers(4)))
    gray = np.asarray(
        Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BILINEAR)
    )
    color = tint * rng.uniform(0.9, 1.1, size=3) * rng.uniform(0.85, 1.15)  # (3,)
    return np.clip(gray[..., None].astype(np.float32) / 255.0 * color, 0.0, 1.0)  # (size, size, 3)


def _region_map(rng: np.random.Generator, num_regions: int, size: int) -> np.ndarray:
    """Wavy Voronoi partition of the image: (size, size) int64 region ids in 0..num_regions-1."""
    seeds = rng.uniform(0, size, size=(num_regions, 2))  # (R, 2) as (y, x)
    amplitude = rng.uniform(0.02, 0.08) * size
    wavelength = rng.uniform(0.3, 0.8) * size
    phase = rng.uniform(0, 2 * np.pi, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)  # (H, W) each
    yw = yy + amplitude * np.sin(2 * np.pi * xx / wavelength + phase[0])
    xw = xx + amplitude * np.sin(2 * np.pi * yy / wavelength + phase[1])
    dist = (yw[None] - seeds[:, 0, None, None]) ** 2 + (xw[None] - seeds[:, 1, None, None]) ** 2  # (R, H, W)
    return dist.argmin(axis=0)


def _item_pixels(
    rng: np.random.Generator,
    item: np.ndarray,
    size: int,
    scale: tuple[float, float] = _ITEM_SCALE,
    hue: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops, flips and resizes one item to a longest side of ``scale`` (a range, fraction of
    ``size``) and tints it: a hue uniform on the circle, or in ``centre +- spread`` for
    ``hue = (centre, spread)``. Returns (colour (h, w, 3) float, silhouette (h, w) bool)."""
    rows, cols = np.nonzero(item)
    if len(rows):  # crop to the item's bounding box so the scale refers to the item itself
        item = item[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    if rng.random() < 0.5:
        item = item[:, ::-1]
    h, w = item.shape
    longest = max(4, round(rng.uniform(*scale) * size))
    new_h, new_w = (
        (longest, max(1, round(longest * w / h))) if h >= w else (max(1, round(longest * h / w)), longest)
    )
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(item)).resize((new_w, new_h), Image.Resampling.BILINEAR)
    )
    silhouette = resized >= ITEM_THRESHOLD
    if not silhouette.any():  # a faint, tiny item: keep its brightest pixels so it is never empty
        silhouette = resized == resized.max()
    tint_hue = rng.random() if hue is None else (hue[0] + rng.uniform(-hue[1], hue[1])) % 1.0
    rgb = np.array(colorsys.hsv_to_rgb(tint_hue, rng.uniform(0.35, 1.0), rng.uniform(0.75, 1.0)))
    shading = 0.3 + 0.7 * resized.astype(np.float32) / 255.0  # (h, w): keeps the item's own texture
    return shading[..., None] * rgb, silhouette


def render_scene(
    rng: np.random.Generator,
    sources: SceneSources,
    *,
    image_size: int,
    class_probs: Sequence[float] | np.ndarray,
    style: str | SceneStyle = "default",
) -> tuple[np.ndarray, np.ndarray, list[Placement]]:
    """Renders one scene. Pure: the output depends only on the generator state and the inputs.

    Args:
        rng: Generator, consumed by the call (see `scene_rng`).
        sources: Textures and the clothing pool (see `load_scene_sources`).
        image_size: Side of the square image in pixels.
        class_probs: Sampling probability of each Fashion-MNIST class, shape (10,), sums to 1
            (0 for the labels the style leaves out, see `style_class_probs`).
        style: Class mapping, tints and image statistics (see `STYLES`).

    Returns:
        ``(image, mask, placements)``: image (H, W, 3) uint8; mask (H, W) uint8 of class ids;
        the pasted items in paint order (later items cover earlier ones).
    """
    size = image_size
    look = get_style(style)
    thing_of_label = look.thing_of_label
    probs = np.asarray(class_probs, dtype=np.float64)
    num_stuff = len(sources.textures)
    low, high = look.regions_per_image
    num_regions = min(num_stuff, int(rng.integers(low, high + 1)))
    region_classes = rng.choice(num_stuff, size=num_regions, replace=False)  # (R,)
    regions = _region_map(rng, num_regions, size)  # (H, W)
    image = np.zeros((size, size, 3), dtype=np.float32)
    for r, cls in enumerate(region_classes):
        tint = np.array(look.stuff_tints[cls]) if cls < len(look.stuff_tints) else np.ones(3)
        layer = _texture_layer(rng, sources.textures[cls], tint, size)  # (H, W, 3)
        image[regions == r] = layer[regions == r]
    mask = region_classes[regions].astype(np.uint8)  # (H, W)

    occupied = np.zeros((size, size), dtype=bool)
    placements: list[Placement] = []
    for _ in range(int(rng.integers(look.items_per_image[0], look.items_per_image[1] + 1))):
        label = int(rng.choice(len(probs), p=probs))
        if thing_of_label[label] < 0:
            raise ValueError(
                f"class_probs gives Fashion-MNIST class {FASHION_CLASSES[label]!r} a chance, but style "
                f"{look.name!r} leaves it out (use style_class_probs)"
            )
        class_id = num_stuff + thing_of_label[label]
        pool = sources.items_by_class[label]
        if len(pool) == 0:
            raise ValueError(f"no Fashion-MNIST items of class {FASHION_CLASSES[label]!r} in the pool")
        j = int(rng.integers(len(pool)))
        hue = None if look.hue_spread is None else (thing_of_label[label] / len(look.things), look.hue_spread)
        colour, sil = _item_pixels(rng, pool[j], size, look.item_scale, hue)
        h, w = sil.shape
        best: tuple[float, int, int] = (2.0, 0, 0)
        for _try in range(_POSITION_TRIES):  # avoid hiding earlier items
            top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            overlap = float((occupied[top : top + h, left : left + w] & sil).sum()) / float(sil.sum())
            if overlap < best[0]:
                best = (overlap, top, left)
            if overlap <= _MAX_OVERLAP:
                break
        _, top, left = best
        image[top : top + h, left : left + w][sil] = colour[sil]
        mask[top : top + h, left : left + w][sil] = class_id
        occupied[top : top + h, left : left + w] |= sil
        placements.append(
            Placement(
                class_id=class_id,
                fashion_label=label,
                source_index=int(sources.source_indices_by_class[label][j]),
                top=top,
                left=left,
                silhouette=sil.copy(),
            )
        )
    if look.saturation != 1.0 or look.gamma != 1.0 or look.noise > 0:
        image = _restyle(rng, image, look)
    image_u8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return image_u8, mask, placements


# ITU-R BT.601 luma weights
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _restyle(rng: np.random.Generator, image: np.ndarray, style: SceneStyle) -> np.ndarray:
    """A style's image statistics on a finished image (H, W, 3) float in [0, 1]: saturation, then
    gamma, then Gaussian noise (drawn last from ``rng``). The mask is unchanged."""
    grey = (image @ _LUMA)[..., None]  # (H, W, 1)
    out = np.clip(grey + style.saturation * (image - grey), 0.0, 1.0) ** style.gamma
    if style.noise > 0:
        out = out + rng.normal(0.0, style.noise, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def style_class_probs(weights: Mapping[str, float], style: str | SceneStyle = "default") -> np.ndarray:
    """Sampling probability of each Fashion-MNIST label under ``style``: the weights (see
    `resolve_class_weights`), 0 for the labels the style leaves out, normalised.

    Raises:
        ValueError: Every label the style draws from has weight 0.
    """
    look = get_style(style)
    w = np.array([weights[name] for name in FASHION_CLASSES], dtype=np.float64)
    groups = np.array(look.thing_of_label)
    w[groups < 0] = 0.0
    if look.balance_groups:  # every clothing class equally likely, whatever its number of labels
        w[groups >= 0] /= np.array([len(look.thing_labels[g]) for g in groups[groups >= 0]])
    if w.sum() <= 0:
        raise ValueError(
            f"class_frequencies: every clothing class that style {look.name!r} draws has weight 0"
        )
    return w / w.sum()


def render_image(
    split: str,
    index: int,
    *,
    seed: int = 0,
    image_size: int = 96,
    class_frequencies: Mapping[str, float] | None = None,
    fashion_path: str | Path | None = None,
    style: str = "default",
) -> tuple[np.ndarray, np.ndarray, list[Placement]]:
    """Regenerates one image of a dataset without generating the others.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        index: Position in the split (``train_00012`` is index 12).
        seed, image_size, class_frequencies, fashion_path, style: As in `generate_dataset`.

    Returns:
        ``(image (H, W, 3) uint8, mask (H, W) uint8, placements)``, identical to the files that
        `generate_dataset` writes with the same arguments.
    """
    sources = load_scene_sources(split, fashion_path, style)
    probs = style_class_probs(resolve_class_weights(class_frequencies), style)
    return render_scene(
        scene_rng(seed, split, index, style), sources, image_size=image_size, class_probs=probs, style=style
    )


def image_id(split: str, index: int, count: int) -> str:
    """The id of an image, e.g. ``train_00012`` (at least 5 digits)."""
    return f"{split}_{index:0{max(5, len(str(max(count - 1, 0))))}d}"


def _meta(
    seed: int,
    image_size: int,
    counts: Mapping[str, int],
    weights: Mapping[str, float],
    style: str = "default",
) -> dict[str, Any]:
    look = get_style(style)
    meta: dict[str, Any] = {
        "name": look.name,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "num_train": counts["train"],
        "num_val": counts["val"],
        "num_test": counts["test"],
        "class_frequencies": dict(weights),
        "stuff_classes": list(look.stuff),
    }
    if style != "default":  # the default's meta.yaml stays as before, so its caches stay valid
        meta["style"] = style
    return yaml.safe_load(yaml.safe_dump(meta, sort_keys=False))  # normalise as it will be read back


def _read_meta(root: Path) -> dict[str, Any] | None:
    path = root / "meta.yaml"
    if not path.is_file():
        return None
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return meta if isinstance(meta, dict) else None


def _meta_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = [k for k in new if old.get(k) != new[k]] + [k for k in old if k not in new]
    return "; ".join(f"{k}: existing {old.get(k)!r}, requested {new.get(k)!r}" for k in keys)


def _write_png(array: np.ndarray, path: Path) -> None:
    # Fixed encoder settings and no metadata chunks, so equal arrays give equal bytes.
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)


def _write_dataset(
    root: Path, meta: Mapping[str, Any], weights: Mapping[str, float], fashion_path: str | Path | None
) -> None:
    (root / "images").mkdir()
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    style = str(meta.get("style", "default"))
    look = get_style(style)
    probs = style_class_probs(weights, style)
    for split in SPLITS:
        count = int(meta[f"num_{split}"])
        ids = [image_id(split, i, count) for i in range(count)]
        if count:
            sources = load_scene_sources(split, fashion_path, style)
            for i, name in enumerate(ids):
                rng = scene_rng(int(meta["seed"]), split, i, style)
                image, mask, _ = render_scene(
                    rng, sources, image_size=int(meta["image_size"]), class_probs=probs, style=style
                )
                _write_png(image, root / "images" / f"{name}.png")
                _write_png(mask, root / "masks" / f"{name}.png")
        write_ids(root / "splits" / f"{split}.txt", ids)
    classes: dict[str, Any] = {
        "name": look.name,
        "classes": list(look.class_names),
        "palette": [list(c) for c in look.palette],
        "ignore_index": IGNORE_INDEX,
        "num_stuff_classes": len(look.stuff),
    }
    if look is not DEFAULT_STYLE:  # which Fashion-MNIST classes each clothing class groups
        classes["clothing_groups"] = {
            name: [FASHION_CLASSES[k] for k in labels]
            for name, labels in zip(look.things, look.thing_labels, strict=True)
        }
    (root / "classes.yaml").write_text(yaml.safe_dump(classes, sort_keys=False))
    (root / "meta.yaml").write_text(yaml.safe_dump(dict(meta), sort_keys=False))  # last: marks completion


def _validate_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 200,
    num_test: int = 500,
    image_size: int = 96,
    class_frequencies: Mapping[str, float] | None = None,
    fashion_path: str | Path | None = None,
    overwrite: bool = False,
    style: str = "default",
) -> Path:
    """Writes the pixcon-fashion-scenes dataset, or returns the cached copy.

    Layout: ``images/{id}.png`` (RGB), ``masks/{id}.png`` (uint8 class ids), ``splits/{train,val,
    test}.txt`` (ids such as ``train_00012``), ``classes.yaml`` (name, classes, palette,
    ignore_index) and ``meta.yaml`` (the generator arguments; written last). The dataset is built
    in a temporary sibling directory and renamed into place.

    Args:
        out_dir: Target directory.
        seed: Base seed; image ``i`` of split ``s`` uses ``scene_rng(seed, s, i)``.
        num_train: Number of training images.
        num_val: Number of validation images.
        num_test: Number of test images (items from the Fashion-MNIST t10k split).
        image_size: Side of the square images in pixels, >= 16.
        class_frequencies: Relative sampling weight per clothing class name (see
            `resolve_class_weights`); e.g. ``{"bag": 0.05}`` makes bags rare.
        fashion_path: Directory of the Fashion-MNIST idx files; ``None`` searches the defaults.
            Not part of the cache key.
        overwrite: Replace an existing dataset generated with other arguments.
        style: ``"default"``, or ``"aux"``: a second domain for multi-domain training (other
            textures and classes, other image statistics; see the module docstring). Datasets
            of both styles from the same seed do not share random streams.

    Returns:
        ``Path(out_dir)``.

    Raises:
        FileExistsError: ``out_dir`` holds a dataset with other arguments and ``overwrite`` is
            False, or holds something that is not a generated dataset.
        ValueError: Invalid arguments.
        FileNotFoundError: Fashion-MNIST files not found.
    """
    seed = _validate_count("seed", seed, 0)
    image_size = _validate_count("image_size", image_size, 16)
    counts = {
        "train": _validate_count("num_train", num_train, 0),
        "val": _validate_count("num_val", num_val, 0),
        "test": _validate_count("num_test", num_test, 0),
    }
    weights = resolve_class_weights(class_frequencies)
    style_class_probs(weights, style)  # validates the style, and its weights
    meta = _meta(seed, image_size, counts, weights, style)
    out = Path(out_dir)

    if out.exists():
        existing = _read_meta(out)
        if existing == meta:
            logger.info("dataset %s already generated with these arguments; reusing it", out)
            return out
        is_empty = out.is_dir() and not any(out.iterdir())
        if not is_empty:
            if existing is None and not (out / "classes.yaml").is_file():
                raise FileExistsError(
                    f"{out} exists and is not a generated {DATASET_NAME} dataset (no meta.yaml); "
                    "refusing to touch it: choose another out_dir or remove it yourself"
                )
            if not overwrite:
                why = (
                    _meta_diff(existing, meta)
                    if existing is not None
                    else "meta.yaml missing (incomplete dataset?)"
                )
                raise FileExistsError(
                    f"{out} holds a {DATASET_NAME} dataset generated with other arguments ({why}); "
                    "pass overwrite=True to replace it or choose another out_dir"
                )

    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_dataset(tmp, meta, weights, fashion_path)
        _install(tmp, out, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(counts.values())
    logger.info(
        "generated %d images of %d px in %s (%.1f s)", total, image_size, out, time.perf_counter() - start
    )
    return out


def _install(tmp: Path, out: Path, meta: Mapping[str, Any]) -> None:
    """Moves the finished dataset `tmp` to `out`, replacing what is there (checked by the caller)."""
    if not out.exists():
        try:
            os.replace(tmp, out)
            return
        except OSError:
            if not out.exists():
                raise
            if _read_meta(out) == meta:  # another process generated the same dataset meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, trash / out.name)
    os.replace(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)

"""ISPRS 2D semantic labeling benchmark: Potsdam and Vaihingen, read as patches of large tiles.

Files (names as in the official distribution; folders are searched recursively under `root`, so
both the unpacked zips and a flattened copy work)::

    Potsdam (6000 x 6000 px tiles, 5 cm)
      2_Ortho_RGB/top_potsdam_2_10_RGB.tif                      bands="rgb"    R, G, B
      3_Ortho_IRRG/top_potsdam_2_10_IRRG.tif                    bands="irrg"   IR, R, G
      4_Ortho_RGBIR/top_potsdam_2_10_RGBIR.tif                  bands="rgbir"  R, G, B, IR (4 channels)
      5_Labels_all/top_potsdam_2_10_label.tif                   colour-coded labels
      5_Labels_all_noBoundary/top_potsdam_2_10_label_noBoundary.tif   eroded labels (eroded_labels=True)
      (older releases: 5_Labels_for_participants[_no_Boundary]/, same file names)

    Vaihingen (about 2000 x 2500 px tiles, 9 cm; IRRG only)
      top/top_mosaic_09cm_area1.tif                             IR, R, G; must lie in a folder named "top"
      gts_for_participants/top_mosaic_09cm_area1.tif            labels: the same file name, any folder but "top"
        (or ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE/top_mosaic_09cm_area1.tif)
      ..._ground_truth_eroded_COMPLETE/top_mosaic_09cm_area1_noBoundary.tif   eroded labels

    root/splits/<split>.txt                                     optional: tile names, one a line

Classes (label colours): 0 impervious surfaces (255, 255, 255), 1 building (0, 0, 255), 2 low
vegetation (0, 255, 255), 3 tree (0, 255, 0), 4 car (255, 255, 0), 5 clutter/background (255, 0, 0).
Black (0, 0, 0), the eroded boundary of the ``noBoundary`` files, is mapped to 255 and ignored.
Label channels are thresholded at 128 before the lookup, which tolerates re-encoded labels with
slightly-off colours; a colour that is still unknown (magenta) is an error naming the file, the
colour and the pixel.

Splits. "train" and "test" are the benchmark's tile lists (24 / 14 Potsdam tiles, 16 / 17
Vaihingen areas), as given on the benchmark pages
(https://www2.isprs.org/commissions/comm2/wg4/benchmark/2d-sem-label-potsdam/ and
``.../2d-sem-label-vaihingen/``) and used by mmsegmentation
(``tools/dataset_converters/{potsdam,vaihingen}.py``) and torchgeo
(``torchgeo/datasets/{potsdam,vaihingen}.py``), which are also the sources of the file names above.
There is no official validation set: "val" is the test tiles, unless ``root/splits/val.txt`` lists
tile names (e.g. a few training tiles held out; then also write ``root/splits/train.txt`` without
them). Any ``root/splits/<name>.txt`` overrides or adds a split. Tile names are the file stems
(``top_potsdam_2_10``, ``top_mosaic_09cm_area1``) or the short forms (``2_10``, ``area1``).
Benchmark tiles missing under `root` are skipped with a warning.

Patches. Each tile is cut into ``patch_size`` squares every ``patch_stride`` pixels; the last row and
column are shifted to end at the tile border, so the whole tile is covered (mmsegmentation's
converter does the same). A tile smaller than a patch is an error. The id of a patch is
``<tile>_<y>_<x>`` (top-left corner in tile pixels), e.g. ``top_potsdam_2_10_0_512``.

Reading is lazy: construction reads TIFF headers only. Uncompressed tiles are memory-mapped
(``tifffile.memmap``) and each patch is a window of the map, so only the rows it covers are read.
Tiles that cannot be mapped (compressed, tiled) are decoded whole and kept in a small per-process LRU
cache (``cache_tiles`` tiles per dataset); visiting patches in random order may then decode a tile
many times, so store such tiles uncompressed for speed.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pixcon.data.base import (
    DEFAULT_IGNORE_INDEX,
    PairTransform,
    Sample,
    Scan,
    check_ids,
    check_unique_ids,
    lookup_colors,
    to_tensors,
    unknown_color_error,
)
from pixcon.data.folder import read_ids
from pixcon.data.images import TileHeader as TileHeader  # re-exported (moved to pixcon.data.images)
from pixcon.data.images import check_value_range, read_header, read_tiff
from pixcon.data.images import to_hwc as _to_hwc
from pixcon.data.paths import require_dir

logger = logging.getLogger(__name__)

Site = Literal["potsdam", "vaihingen"]
Bands = Literal["rgb", "irrg", "rgbir"]
SITES: tuple[str, ...] = ("potsdam", "vaihingen")
BANDS: dict[str, int] = {"rgb": 3, "irrg": 3, "rgbir": 4}

ISPRS_CLASSES: tuple[str, ...] = (
    "impervious surfaces",
    "building",
    "low vegetation",
    "tree",
    "car",
    "clutter",
)
ISPRS_PALETTE: list[tuple[int, int, int]] = [
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
]
BOUNDARY_COLOR: tuple[int, int, int] = (0, 0, 0)

POTSDAM_TRAIN: tuple[str, ...] = tuple(
    f"top_potsdam_{t}"
    for t in (
        "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
        "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_10", "7_11", "7_12",
    )
)  # fmt: skip
POTSDAM_TEST: tuple[str, ...] = tuple(
    f"top_potsdam_{t}"
    for t in ("2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14", "6_15", "7_13")
)  # fmt: skip
VAIHINGEN_TRAIN: tuple[str, ...] = tuple(
    f"top_mosaic_09cm_area{n}" for n in (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)
)
VAIHINGEN_TEST: tuple[str, ...] = tuple(
    f"top_mosaic_09cm_area{n}" for n in (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
)
BENCHMARK_SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "potsdam": {"train": POTSDAM_TRAIN, "test": POTSDAM_TEST, "val": POTSDAM_TEST},
    "vaihingen": {"train": VAIHINGEN_TRAIN, "test": VAIHINGEN_TEST, "val": VAIHINGEN_TEST},
}

_TIF = r"\.tiff?"
_POTSDAM_TILE = r"top_potsdam_(\d+)_(\d+)"
_VAIHINGEN_TILE = r"top_mosaic_09cm_area(\d+)"


def normalize_tile(site: str, name: str) -> str | None:
    """``top_potsdam_02_10`` / ``2_10`` -> ``top_potsdam_2_10``; ``area1`` -> ``top_mosaic_09cm_area1``; else None."""
    if site == "potsdam":
        m = re.fullmatch(rf"(?:{_POTSDAM_TILE}|(\d+)_(\d+))", name, flags=re.IGNORECASE)
        if m is None:
            return None
        a, b = (g for g in m.groups() if g is not None)
        return f"top_potsdam_{int(a)}_{int(b)}"
    m = re.fullmatch(rf"(?:{_VAIHINGEN_TILE}|area(\d+))", name, flags=re.IGNORECASE)
    if m is None:
        return None
    (n,) = (g for g in m.groups() if g is not None)
    return f"top_mosaic_09cm_area{int(n)}"


def _check_site_bands(site: str, bands: str) -> str:
    """Validates `site` and `bands`; returns the band set actually read."""
    if site not in SITES:
        raise ValueError(f"unknown ISPRS site {site!r}; choose one of {list(SITES)}")
    if bands not in BANDS:
        raise ValueError(f"bands must be one of {sorted(BANDS)}, got {bands!r}")
    if site == "vaihingen":
        if bands == "rgbir":
            raise ValueError("Vaihingen has IRRG tiles only; use bands='irrg'")
        if bands == "rgb":
            logger.info("Vaihingen has IRRG tiles only: reading IR, R, G for bands='rgb'")
        return "irrg"
    return bands


@dataclass
class TileIndex:
    """Tile files found under a root, by tile name.

    Attributes:
        images: Tile -> image file of the chosen bands.
        labels: Tile -> label file (full or eroded, as chosen).
        warnings: Duplicates (the first path in sorted order is used).
    """

    images: dict[str, Path] = field(default_factory=dict)
    labels: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def find_tiles(root: str | Path, site: str, bands: str = "rgb", eroded: bool = False) -> TileIndex:
    """Searches `root` recursively for the tile images of `bands` and the (eroded) labels of `site`.

    Raises:
        FileNotFoundError: `root` does not exist.
        ValueError: Unknown site or bands.
    """
    root = require_dir(root, f"ISPRS {site} folder")
    bands = _check_site_bands(site, bands)
    if site == "potsdam":
        image_re = re.compile(rf"{_POTSDAM_TILE}_{bands}{_TIF}", re.IGNORECASE)
        label_re = re.compile(rf"{_POTSDAM_TILE}_label{'_noBoundary' if eroded else ''}{_TIF}", re.IGNORECASE)
    else:
        image_re = re.compile(rf"{_VAIHINGEN_TILE}{_TIF}", re.IGNORECASE)
        label_re = re.compile(rf"{_VAIHINGEN_TILE}{'_noBoundary' if eroded else ''}{_TIF}", re.IGNORECASE)
    found: dict[str, dict[str, list[Path]]] = {"image": {}, "label": {}}
    is_image: re.Match[str] | bool | None
    is_label: re.Match[str] | bool | None
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
            continue
        is_image, is_label = image_re.fullmatch(path.name), label_re.fullmatch(path.name)
        if site == "vaihingen":
            # Vaihingen images and full labels share their file names: the "top" folder tells them apart.
            in_top = any(part.lower() == "top" for part in path.relative_to(root).parts[:-1])
            is_image, is_label = is_image and in_top, is_label and not in_top
        role = "image" if is_image else "label" if is_label else None
        tile = normalize_tile(site, _tile_stem(site, path.name))
        if role is not None and tile is not None:
            found[role].setdefault(tile, []).append(path)
    index = TileIndex()
    for role, target in (("image", index.images), ("label", index.labels)):
        for tile, paths in sorted(found[role].items()):
            target[tile] = paths[0]
            if len(paths) > 1:
                index.warnings.append(
                    f"tile {tile}: {len(paths)} {role} files, using {paths[0]} (also {paths[1:]})"
                )
    return index


def _tile_stem(site: str, filename: str) -> str:
    pattern = _POTSDAM_TILE if site == "potsdam" else _VAIHINGEN_TILE
    m = re.match(pattern, filename, flags=re.IGNORECASE)
    return m.group(0) if m else filename


class _TileReader:
    """Reads windows of tiles: memory-mapped when possible, else decoded whole into an LRU cache.

    Holds nothing when pickled (DataLoader workers open their own maps).
    """

    def __init__(self, cache_tiles: int) -> None:
        self.cache_tiles = cache_tiles
        self._maps: dict[Path, np.ndarray | None] = {}  # None: not memory-mappable
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"cache_tiles": self.cache_tiles}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cache_tiles = state["cache_tiles"]
        self._maps = {}
        self._cache = OrderedDict()

    def _array(self, path: Path) -> np.ndarray:
        if path not in self._maps:
            header = read_header(path)
            try:
                self._maps[path] = _to_hwc(tifffile.memmap(path, mode="r"), header.axes)
            except (ValueError, OSError):  # compressed, tiled or truncated: decode instead
                self._maps[path] = None
        mapped = self._maps[path]
        if mapped is not None:
            return mapped
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        array = read_tiff(path)
        self._cache[path] = array
        while len(self._cache) > max(1, self.cache_tiles):
            self._cache.popitem(last=False)
        return array

    def window(self, path: Path, y: int, x: int, size: int) -> np.ndarray:
        """The (size, size, C) window at (y, x), copied out of the tile."""
        return np.array(self._array(path)[y : y + size, x : x + size])


def decode_label(rgb: np.ndarray, path: Path, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """ISPRS colour labels (H, W, >=3) -> (H, W) int64 class ids, black -> 255.

    Raises:
        UnknownColorError: A colour outside the legend after thresholding at 128 (names file and pixel).
    """
    rgb = rgb[..., :3]  # (H, W, 3)
    binary = np.where(rgb >= 128, 255, 0).astype(np.uint8)
    colors = [*ISPRS_PALETTE, BOUNDARY_COLOR]
    values = [*range(len(ISPRS_PALETTE)), DEFAULT_IGNORE_INDEX]
    out, found = lookup_colors(binary, colors, values)  # (H, W), (H, W)
    if not found.all():
        raise unknown_color_error(rgb, found, path, offset)  # reports the colours as stored
    return out


def read_label(path: Path, rows: int = 512) -> np.ndarray:
    """Decodes a whole label tile as (H, W) uint8 class ids (255 = ignore).

    Decoded `rows` rows at a time: a 6000 x 6000 tile in one go would need over 1 GB of temporaries.
    """
    rgb = read_tiff(path)  # (H, W, 3)
    out = np.empty(rgb.shape[:2], dtype=np.uint8)
    for y in range(0, rgb.shape[0], rows):
        out[y : y + rows] = decode_label(rgb[y : y + rows], path, offset=(y, 0))
    return out


def patch_starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis: every `stride`, plus one ending at the border if needed.

    Raises:
        ValueError: ``length < size`` or a non-positive size or stride.
    """
    if size <= 0 or stride <= 0:
        raise ValueError(f"patch size and stride must be > 0, got {size} and {stride}")
    if length < size:
        raise ValueError(f"length {length} is smaller than the patch size {size}")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)  # shifted last patch: the border is covered
    return starts


def _resolve_split(root: Path, site: str, split: str) -> tuple[list[str], str | None]:
    """(tile names, split file or None for the benchmark lists)."""
    path = root / "splits" / f"{split}.txt"
    if path.is_file():
        names = []
        for raw in read_ids(path):
            tile = normalize_tile(site, raw)
            if tile is None:
                raise ValueError(f"{path}: {raw!r} is not a {site} tile name")
            names.append(tile)
        check_unique_ids(names, f"{path} (tile names)")  # "2_10" and "top_potsdam_2_10" are one tile
        return names, str(path)
    if split in BENCHMARK_SPLITS[site]:
        if split == "val":
            logger.info("%s: no %s, so split 'val' is the benchmark's test tiles", site, path)
        return list(BENCHMARK_SPLITS[site][split]), None
    available = sorted({*BENCHMARK_SPLITS[site], *(p.stem for p in (root / "splits").glob("*.txt"))})
    raise ValueError(f"unknown {site} split {split!r}; available: {available}")


def split_tile_names(root: str | Path, site: str, split: str) -> list[str]:
    """The tile names `split` lists (its split file, or the benchmark list), whether present or not.

    Raises:
        FileNotFoundError, IsADirectoryError: From reading a split file.
        ValueError: Unknown split, a malformed split file or a repeated tile (the message names it).
    """
    return _resolve_split(Path(root), site, split)[0]


def split_tiles(root: str | Path, site: str, split: str, bands: str = "rgb") -> list[str]:
    """The tile names of `split` that have an image of `bands` under `root` (see the module docstring).

    Benchmark tiles without an image are skipped with a warning.

    Raises:
        FileNotFoundError: A tile of a split file is missing, or no tile of the split exists.
        ValueError: Unknown site, bands or split, or a malformed split file.
    """
    return _split_tiles(Path(root), site, split, find_tiles(root, site, bands))


def _split_tiles(root: Path, site: str, split: str, index: TileIndex) -> list[str]:
    names, source = _resolve_split(root, site, split)
    missing = [t for t in names if t not in index.images]
    if source is not None and missing:
        raise FileNotFoundError(
            f"{source}: tile {missing[0]} has no image under {root} ({len(missing)} missing)"
        )
    if missing:
        logger.warning(
            "%s split %r: %d of %d benchmark tiles are not under %s and are skipped, e.g. %s",
            site, split, len(missing), len(names), root, missing[:3],
        )  # fmt: skip
    present = [t for t in names if t in index.images]
    if not present:
        raise FileNotFoundError(f"no tile of the {site} split {split!r} found under {root}")
    return present


class ISPRSPatches(Dataset[tuple[Tensor, Tensor]]):
    """Square patches of the ISPRS Potsdam or Vaihingen tiles (see the module docstring).

    Attributes:
        root: The dataset folder.
        site: "potsdam" or "vaihingen".
        ids: ``<tile>_<y>_<x>`` patch ids.
        tiles: The tiles used, in order.
        patch_size, patch_stride: The patch grid.
        class_names, num_classes, ignore_index, palette: 6 classes, 255, the benchmark colours.
        in_channels: 3, or 4 for Potsdam RGBIR.
    """

    def __init__(
        self,
        root: str | Path,
        site: Site,
        split: str | None = None,
        ids: Sequence[str] | None = None,
        bands: Bands = "rgb",
        patch_size: int = 512,
        patch_stride: int | None = None,
        eroded: bool = False,
        transform: PairTransform | None = None,
        cache_tiles: int = 4,
        value_range: Sequence[float] | None = None,
    ) -> None:
        """Indexes the tiles (headers only) and the patch grid.

        Args:
            root: Folder holding the tiles, at any depth.
            site: "potsdam" or "vaihingen".
            split: "train", "test", "val" or a ``root/splits/<name>.txt`` of tile names. Exclusive
                with `ids`. Neither: every tile that has an image and a label.
            ids: Patch ids ``<tile>_<y>_<x>`` (any window inside the tile).
            bands: Potsdam input bands: "rgb", "irrg" or "rgbir" (4 channels). Vaihingen: IRRG.
            patch_size: Side of the square patches.
            patch_stride: Step between patches; None = `patch_size`.
            eroded: Read the ``noBoundary`` labels (boundaries ignored), as for benchmark scoring.
            transform: Joint transform ``(image (C, P, P), mask (P, P)) -> same``.
            cache_tiles: Decoded tiles kept per process when a tile cannot be memory-mapped.
            value_range: ``[lo, hi]`` of tiles deeper than 8 bits (e.g. uint16 orthophotos); see
                :mod:`pixcon.data.images`. 8-bit tiles are scaled by 1/255.

        Raises:
            ValueError: Both `split` and `ids`, bad arguments, a malformed id, a tile smaller than a
                patch, an image/label size mismatch or an unexpected channel count (the message
                names the tile or file).
            FileNotFoundError: Missing root, tile, label or split file (the message names it).
        """
        if ids is not None and split is not None:
            raise ValueError("pass either ids or split, not both")
        stride = patch_size if patch_stride is None else patch_stride
        if patch_size <= 0 or stride <= 0:
            raise ValueError(f"patch_size and patch_stride must be > 0, got {patch_size} and {stride}")
        self.root = Path(root)
        self.site = site
        self.bands = _check_site_bands(site, bands)
        self.in_channels: int = BANDS[self.bands]
        self.patch_size, self.patch_stride, self.eroded = patch_size, stride, eroded
        self.transform = transform
        self.value_range = check_value_range(value_range) if value_range is not None else None
        self.class_names: list[str] = list(ISPRS_CLASSES)
        self.num_classes: int = len(self.class_names)
        self.ignore_index: int = DEFAULT_IGNORE_INDEX
        self.palette: list[tuple[int, ...]] | None = list(ISPRS_PALETTE)
        index = find_tiles(self.root, site, self.bands, eroded)
        for warning in index.warnings:
            logger.warning("%s", warning)

        if ids is not None:
            check_unique_ids(list(ids), "ids")
            wanted = [self._parse_id(i) for i in check_ids(ids, "ids")]
            tiles = list(dict.fromkeys(t for t, _, _ in wanted))
        elif split is not None:
            tiles = _split_tiles(self.root, site, split, index)
        else:
            tiles = sorted(t for t in index.images if t in index.labels)
        self._files: dict[str, tuple[Path, Path]] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for t in tiles:
            if t not in index.images:
                raise FileNotFoundError(f"no {self.bands.upper()} image of tile {t} under {self.root}")
            if t not in index.labels:
                kind = "eroded label (*noBoundary.tif)" if eroded else "label"
                raise FileNotFoundError(f"no {kind} for tile {t} ({index.images[t]}) under {self.root}")
            image, label = index.images[t], index.labels[t]
            sizes[t] = self._check_tile(t, image, label)
            self._files[t] = (image, label)

        if ids is not None:
            for sample_id, (t, y, x) in zip(ids, wanted, strict=True):
                h, w = sizes[t]
                if not (0 <= y <= h - patch_size and 0 <= x <= w - patch_size):
                    raise ValueError(
                        f"patch {sample_id!r} lies outside tile {t} ({w}x{h} WxH) for patch_size {patch_size}"
                    )
            self._patches = wanted
        else:
            self._patches = [
                (t, y, x)
                for t in tiles
                for y in patch_starts(sizes[t][0], patch_size, stride)
                for x in patch_starts(sizes[t][1], patch_size, stride)
            ]
        self.tiles: list[str] = tiles
        self.ids: list[str] = [f"{t}_{y}_{x}" for t, y, x in self._patches]
        if not self.ids:
            raise ValueError(f"no patches in {self.root}" + (f" for split {split!r}" if split else ""))
        self._reader = _TileReader(cache_tiles)

    def _parse_id(self, sample_id: str) -> tuple[str, int, int]:
        parts = sample_id.rsplit("_", 2)
        tile = normalize_tile(self.site, parts[0]) if len(parts) == 3 else None
        if tile is None or not (parts[1].isdigit() and parts[2].isdigit()):
            raise ValueError(f"invalid {self.site} patch id {sample_id!r}; expected <tile>_<y>_<x>")
        return tile, int(parts[1]), int(parts[2])

    def _check_tile(self, tile: str, image: Path, label: Path) -> tuple[int, int]:
        ih, lh = read_header(image), read_header(label)
        if (ih.height, ih.width) != (lh.height, lh.width):
            raise ValueError(
                f"size mismatch: image {image} is {ih.width}x{ih.height} (WxH) but label {label} is {lh.width}x{lh.height}"
            )
        if ih.channels != self.in_channels:
            raise ValueError(
                f"image {image} has {ih.channels} channels; bands={self.bands!r} needs {self.in_channels}"
            )
        if lh.channels < 3:
            raise ValueError(f"label {label} has {lh.channels} channels; ISPRS labels are RGB colour-coded")
        if ih.height < self.patch_size or ih.width < self.patch_size:
            raise ValueError(
                f"tile {tile} ({image}) is {ih.width}x{ih.height} (WxH), smaller than patch_size {self.patch_size}"
            )
        return ih.height, ih.width

    def __len__(self) -> int:
        return len(self.ids)

    def _read_mask(self, index: int) -> np.ndarray:
        tile, y, x = self._patches[index]
        label = self._files[tile][1]
        return decode_label(self._reader.window(label, y, x, self.patch_size), label, offset=(y, x))  # (P, P)

    def mask(self, index: int) -> Tensor:
        """The untransformed mask of patch ``index``, (P, P) int64; only the label window is read."""
        return torch.from_numpy(self._read_mask(index))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Returns ``(image (C, P, P) float32, mask (P, P) int64)``, transformed if set.

        8-bit tiles give [0, 1]; deeper ones are scaled by ``value_range``, not clipped.
        """
        tile, y, x = self._patches[index]
        image = self._reader.window(self._files[tile][0], y, x, self.patch_size)  # (P, P, C)
        image_t, mask_t = to_tensors(image, self._read_mask(index), self.value_range, self._files[tile][0])
        if self.transform is not None:
            image_t, mask_t = self.transform(image_t, mask_t)
        return image_t, mask_t

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, site={self.site!r}, bands={self.bands!r}, "
            f"tiles={len(self.tiles)}, n={len(self)}, patch_size={self.patch_size}, stride={self.patch_stride})"
        )


def isprs_split_ids(
    root: str | Path,
    site: Site,
    split: str,
    bands: Bands = "rgb",
    patch_size: int = 512,
    patch_stride: int | None = None,
    eroded: bool = False,
) -> list[str]:
    """The patch ids of one split (reads TIFF headers only)."""
    return ISPRSPatches(
        root, site, split=split, bands=bands, patch_size=patch_size, patch_stride=patch_stride, eroded=eroded
    ).ids


def scan_isprs(
    root: str | Path,
    site: Site,
    splits: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    bands: Bands = "rgb",
    patch_size: int = 512,
    eroded: bool = False,
) -> Scan:
    """Indexes ISPRS tiles for :func:`pixcon.data.registry.check_dataset`, collecting problems.

    One sample per tile. Image tiles without a label are errors; labels without an image of the
    chosen bands are warnings. With neither `splits` nor `ids`, every tile found is checked and every
    ``root/splits/*.txt`` is checked for unknown tiles. `ids` may be tile names or patch ids.

    Raises:
        FileNotFoundError: `root` does not exist.
        ValueError: Unknown site or bands.
    """
    root = Path(root)
    read_bands = _check_site_bands(site, bands)
    index = find_tiles(root, site, read_bands, eroded)
    errors: list[str] = []
    warnings = list(index.warnings)
    if ids is not None and splits is not None:
        raise ValueError("pass either ids or splits, not both")

    tiles: list[str] = []
    if ids is not None:
        for i in ids:
            tile = normalize_tile(site, i) or normalize_tile(site, i.rsplit("_", 2)[0])
            if tile is None or tile not in index.images:
                errors.append(
                    f"ids: {i!r} is not a patch or tile of any {read_bands.upper()} image under {root}"
                )
            else:
                tiles.append(tile)
    else:
        names = (
            list(splits) if splits is not None else sorted(p.stem for p in (root / "splits").glob("*.txt"))
        )
        for split in names:
            try:
                wanted, source = _resolve_split(root, site, split)
            except ValueError as err:
                errors.append(str(err))
                continue
            for t in wanted:
                if t in index.images:
                    tiles.append(t)
                elif source is not None:
                    errors.append(f"{source}: tile {t} has no {read_bands.upper()} image under {root}")
                else:
                    warnings.append(
                        f"benchmark {split} tile {t} has no {read_bands.upper()} image under {root}"
                    )
        if splits is None:
            tiles = sorted(index.images)
    kind = "eroded label (*noBoundary.tif)" if eroded else "label"
    samples = []
    for t in dict.fromkeys(tiles):
        label = index.labels.get(t)
        if label is None:
            errors.append(f"image {index.images[t]} (tile {t}) has no {kind}")
        samples.append(Sample(t, index.images[t], label))
    for t in sorted(set(index.labels) - set(index.images)):
        warnings.append(f"label {index.labels[t]} has no {read_bands.upper()} image (tile {t})")
    return Scan(
        samples=samples,
        class_names=list(ISPRS_CLASSES),
        ignore_index=DEFAULT_IGNORE_INDEX,
        read_image=read_tiff,
        read_mask=read_label,
        errors=errors,
        warnings=warnings,
        min_size=(patch_size, patch_size),
        in_channels=BANDS[read_bands],
        unit="tile",
    )

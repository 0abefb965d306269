"""NIfTI volumes (MRI, CT) read as 2-D slices: ``data.format: nifti``.

Layout (folder names are ``data.nifti_image_dir`` and ``data.nifti_label_dir``)::

    root/images/<volume>.nii.gz | .nii    image volume (X, Y, Z), or (X, Y, Z, C) for C channels
                                          (e.g. the modalities of a Medical Segmentation Decathlon case)
    root/labels/<volume>.nii.gz | .nii    label volume (X, Y, Z) of integer class ids: the same shape
                                          and affine as its image; (X, Y, Z, 1) is read as (X, Y, Z)
    root/splits/<split>.txt               optional: one entry a line: "<volume>" (every slice),
                                          "<volume>[start:stop]" (slices start .. stop - 1 along the
                                          axis; either bound may be left out), or "<volume>[k=start:stop]"
                                          (the same, refused unless k is the slicing axis); "#" starts
                                          a comment
    root/classes.yaml                     optional: class names, palette, ignore_index, as for the
                                          folder format (``data.classes_file`` names another file)

Slices. Every volume is cut along the voxel axis ``data.nifti_axis`` (0 = i, 1 = j, 2 = k; for a scan
stored in RAS+ or LAS+ orientation, k is axial). A slice keeps the other two axes in order: along
k, H is i and W is j. The id of a slice is ``<volume>_<letter><index>``, e.g. ``brain_k090``
(index zero-padded to 3 digits; any number of digits is read).

Intensity window. Each image volume is mapped to [0, 1] by the percentiles
``data.nifti_window_low`` and ``data.nifti_window_high`` of all of its voxels, per channel:
``clip((x - p_low) / (p_high - p_low), 0, 1)``. The window is computed once per volume when the
dataset is opened and every slice of that volume uses it, so intensities stay comparable across
slices (a per-slice window would stretch a slice of skull and one of brain alike). NaN voxels read
as 0. ``data.nifti_cache_dir`` stores the windows, the label maxima and the slices with foreground
in a JSON file keyed by each file's path, size and modification time, so later opens read headers
only.

Resampling. ``data.nifti_slice_size: [H, W]`` resamples every slice to one size: images bilinear
(antialiased when shrinking), labels pixel-centre nearest
(:func:`pixcon.data.transforms.nearest_exact`). This makes slices of volumes of different sizes
batchable; it does not make voxels isotropic.

Splits. A split file lists whole volumes (a split by volume: the only split that tests
generalisation to new scans) or slice ranges of a volume. When ranges of one volume fall into
different splits among ``data.train_split``, ``data.val_split`` and ``data.test_split``, they must
be at least ``data.nifti_min_gap`` slices apart: neighbouring slices are near copies, and a split
without a gap would score a model on near copies of its training slices. Overlaps and ranges closer
than the gap are refused, naming both split files and lines.

Reading. Construction reads the headers and, once per volume, the whole image (for its window)
and, with ``nifti_skip_empty`` or without a classes file, the whole label volume. Uncompressed
``.nii`` files are opened memory-mapped and a slice reads only its own voxels; ``.nii.gz`` files
must be decompressed whole, and the last few decoded volumes are kept per process
(``cache_volumes``), so store volumes as ``.nii`` for fast random access to many volumes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from pixcon.data.base import PairTransform, Sample, Scan, check_ids
from pixcon.data.folder import load_class_info
from pixcon.data.transforms import nearest_exact

if TYPE_CHECKING:
    from pixcon.config import DataConfig

logger = logging.getLogger(__name__)

AXIS_LETTERS = "ijk"
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
AFFINE_ATOL = 1e-3  # largest difference between the image and label affines accepted as equal (mm)
CACHE_FILE = "nifti_stats.json"
CACHE_VERSION = 1
_SLICE_ID = re.compile(r"(?P<volume>.+)_(?P<axis>[ijk])(?P<index>\d+)")
_SPLIT_LINE = re.compile(r"(?P<volume>[^\s\[\]]+)(?:\[(?:(?P<axis>[ijk])=)?(?P<start>\d*):(?P<stop>\d*)\])?")


def _nibabel() -> Any:
    try:
        import nibabel  # an optional dependency (the nifti extra): imported when a volume is read
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            "data.format: nifti needs nibabel; install it with `pip install pixcon[nifti]` (or `pip install nibabel`)"
        ) from err
    return nibabel


@dataclass(frozen=True)
class NiftiOptions:
    """How volumes become slices; one field per ``data.nifti_*`` key (see the module docstring).

    Attributes:
        axis: Voxel axis the volumes are sliced along (0, 1 or 2).
        window: (low, high) intensity percentiles per volume, ``0 <= low < high <= 100``.
        slice_size: (H, W) every slice is resampled to, or None for the native size.
        skip_empty: Drop slices whose label is only background (class 0) and ignore. Slices named
            by explicit ids are kept.
        min_gap: Slices required between ranges of one volume in different splits, >= 1.
        image_dir, label_dir: Folders under the root.
        classes_file: Classes YAML; None = ``root/classes.yaml`` when it exists.
        cache_dir: Folder for the per-volume statistics, or None to compute them at every open.
        guarded_splits: The splits whose ranges must not overlap and must keep the gap.
    """

    axis: int = 2
    window: tuple[float, float] = (0.5, 99.5)
    slice_size: tuple[int, ...] | None = None  # (H, W); checked below
    skip_empty: bool = False
    min_gap: int = 10
    image_dir: str = "images"
    label_dir: str = "labels"
    classes_file: str | None = None
    cache_dir: str | None = None
    guarded_splits: tuple[str, ...] = ("train", "val", "test")

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2) or isinstance(self.axis, bool):
            raise ValueError(f"data.nifti_axis must be 0, 1 or 2, got {self.axis!r}")
        low, high = self.window
        if not 0 <= low < high <= 100:
            raise ValueError(
                f"data.nifti_window_low ({low}) and data.nifti_window_high ({high}) must satisfy "
                "0 <= low < high <= 100 (percentiles)"
            )
        if self.slice_size is not None and (
            len(self.slice_size) != 2 or not all(isinstance(s, int) and s >= 1 for s in self.slice_size)
        ):
            raise ValueError(
                f"data.nifti_slice_size must be None or [H, W] with H, W >= 1, got {self.slice_size}"
            )
        if self.min_gap < 1:
            raise ValueError(
                f"data.nifti_min_gap must be >= 1, got {self.min_gap}: neighbouring slices are near copies, "
                "so ranges of one volume in different splits need a gap"
            )

    @property
    def size(self) -> tuple[int, int] | None:
        """`slice_size` as (H, W), or None."""
        return None if self.slice_size is None else (self.slice_size[0], self.slice_size[1])

    @property
    def letter(self) -> str:
        """The id letter of the slicing axis: i, j or k."""
        return AXIS_LETTERS[self.axis]

    @classmethod
    def from_config(cls, data: DataConfig) -> NiftiOptions:
        """The options of a ``data`` config section."""
        return cls(
            axis=data.nifti_axis,
            window=(data.nifti_window_low, data.nifti_window_high),
            slice_size=None if data.nifti_slice_size is None else tuple(data.nifti_slice_size),
            skip_empty=data.nifti_skip_empty,
            min_gap=data.nifti_min_gap,
            image_dir=data.nifti_image_dir,
            label_dir=data.nifti_label_dir,
            classes_file=data.classes_file,
            cache_dir=data.nifti_cache_dir,
            guarded_splits=tuple(dict.fromkeys((data.train_split, data.val_split, data.test_split))),
        )


# ---------------------------------------------------------------------------- files and headers


def volume_name(path: Path) -> str | None:
    """``brain.nii.gz`` -> ``brain``; None for other files."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.lower().endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def find_volumes(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The NIfTI files of `folder` by volume name, and the problems (a name stored twice).

    Raises:
        FileNotFoundError: `folder` does not exist.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"volume folder {folder} not found")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        name = volume_name(path)
        if name is not None and path.is_file():
            found.setdefault(name, []).append(path)
    problems = [
        f"volume {name!r} is stored twice in {folder}: {[p.name for p in paths]}; keep one"
        for name, paths in found.items()
        if len(paths) > 1
    ]
    problems += [
        f"volume file {paths[0]} has whitespace in its name; ids cannot"
        for name, paths in found.items()
        if any(c.isspace() for c in name)
    ]
    return {name: paths[0] for name, paths in found.items()}, problems


@dataclass(frozen=True)
class VolumeHeader:
    """What a NIfTI header says about a volume.

    Attributes:
        path: The file.
        shape: Spatial shape (X, Y, Z).
        channels: C of an (X, Y, Z, C) volume; 1 for a 3-D one.
        affine: The 4x4 voxel-to-world matrix (nibabel's choice of sform or qform).
    """

    path: Path
    shape: tuple[int, int, int]
    channels: int
    affine: np.ndarray


def read_header(path: Path, role: str) -> VolumeHeader:
    """Reads a NIfTI header; `role` is "image" (3-D or 4-D) or "label" (3-D, or 4-D with one channel).

    Raises:
        OSError: Not a readable NIfTI file (the message names it).
        ValueError: A shape the role does not allow (the message names the file).
    """
    nib = _nibabel()
    try:
        img = nib.load(str(path), mmap=True)
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error, ...
        raise OSError(f"cannot read NIfTI {path}: {err}") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise OSError(f"{path} is not a NIfTI-1 or NIfTI-2 image (nibabel read it as {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and (role == "image" or shape[3] == 1):
        channels = shape[3]
    elif len(shape) == 3:
        channels = 1
    else:
        allowed = "(X, Y, Z) or (X, Y, Z, C)" if role == "image" else "(X, Y, Z) or (X, Y, Z, 1)"
        raise ValueError(f"{role} {path} has shape {shape}; a {role} volume must be {allowed}")
    spatial = (shape[0], shape[1], shape[2])
    return VolumeHeader(
        path=path, shape=spatial, channels=channels, affine=np.asarray(img.affine, np.float64)
    )


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def pair_problems(image: VolumeHeader, label: VolumeHeader) -> list[str]:
    """Shape and affine mismatches between an image and its label volume, each naming both files."""
    if image.shape != label.shape:
        return [
            f"shape mismatch: image {image.path} is {_dims(image.shape)} but label {label.path} is "
            f"{_dims(label.shape)} (voxels)"
        ]
    diff = float(np.abs(image.affine - label.affine).max())
    if diff > AFFINE_ATOL:
        return [
            f"affine mismatch: image {image.path} and label {label.path} place their voxels differently "
            f"(largest difference {diff:g} > {AFFINE_ATOL:g}); image affine {_rows(image.affine)}, "
            f"label affine {_rows(label.affine)}"
        ]
    return []


def _rows(affine: np.ndarray) -> str:
    """The first three rows of a 4x4 affine: ``[[1 0 0 -98]; [0 1 0 -134]; [0 0 1 -72]]``."""
    return "[" + "; ".join("[" + " ".join(f"{v:g}" for v in row) + "]" for row in affine[:3]) + "]"


class _VolumeReader:
    """Reads volumes and slices: memory-mapped for ``.nii``, decoded whole (LRU) for ``.nii.gz``.

    Holds nothing when pickled (DataLoader workers open their own files).
    """

    def __init__(self, cache_volumes: int) -> None:
        self.cache_volumes = cache_volumes
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._mapped: dict[Path, Any] = {}  # .nii path -> nibabel image (header parsed once)

    def __getstate__(self) -> dict[str, Any]:
        return {"cache_volumes": self.cache_volumes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cache_volumes = state["cache_volumes"]
        self._cache = OrderedDict()
        self._mapped = {}

    @staticmethod
    def _load(path: Path) -> Any:
        try:
            return _nibabel().load(str(path), mmap=True)
        except Exception as err:
            raise OSError(f"cannot read NIfTI {path}: {err}") from err

    def volume(self, path: Path) -> np.ndarray:
        """The whole volume, scaled by the header's slope and intercept, in its stored layout."""
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        try:
            array = np.asarray(self._load(path).dataobj)
        except OSError:
            raise
        except Exception as err:  # truncated or corrupt data: EOFError, zlib.error, ValueError
            raise OSError(f"cannot read NIfTI {path}: {err}") from err
        if not path.name.lower().endswith(".gz"):
            return array  # memory-mapped: nothing to keep
        self._cache[path] = array
        while len(self._cache) > max(1, self.cache_volumes):
            self._cache.popitem(last=False)
        return array

    def slice(self, path: Path, axis: int, index: int) -> np.ndarray:
        """Slice `index` along `axis`: (H, W) or (H, W, C), the header's scaling applied."""
        where = (slice(None),) * axis + (index,)
        if path.name.lower().endswith(".gz"):
            return np.asarray(self.volume(path)[where])
        if path not in self._mapped:
            self._mapped[path] = self._load(path)
        try:
            return np.asarray(self._mapped[path].dataobj[where])  # reads this slice's voxels only
        except OSError:
            raise
        except Exception as err:
            raise OSError(f"cannot read NIfTI {path}: {err}") from err


# ---------------------------------------------------------------------------- per-volume statistics


def intensity_window(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    """Per-channel percentile window of a whole volume.

    Args:
        volume: (X, Y, Z) or (X, Y, Z, C), any real dtype; NaN voxels are left out.
        low, high: Percentiles in [0, 100].

    Returns:
        (C, 2) float64: ``[p_low, p_high]`` per channel (both 0 for an all-NaN channel).
    """
    channels = volume.reshape(*volume.shape[:3], -1)  # (X, Y, Z, C)
    out = np.zeros((channels.shape[3], 2), dtype=np.float64)  # (C, 2)
    for c in range(channels.shape[3]):
        values = channels[..., c]
        if np.issubdtype(values.dtype, np.floating) and np.isnan(values).any():
            values = values[~np.isnan(values)]
        if values.size:
            out[c] = np.percentile(values, [low, high])
    return out


def apply_window(raw: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Maps a slice to [0, 1] with its volume's window.

    Args:
        raw: (H, W) or (H, W, C) voxel values.
        window: (C, 2) ``[p_low, p_high]`` per channel.

    Returns:
        (H, W, C) float32 ``clip((raw - p_low) / (p_high - p_low), 0, 1)``; 0 where the window is
        empty (a constant channel) and for NaN voxels.
    """
    x = raw.astype(np.float64).reshape(*raw.shape[:2], -1)  # (H, W, C)
    lo, hi = window[:, 0], window[:, 1]  # (C,), (C,)
    span = hi - lo
    scaled = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)  # (H, W, C)
    return np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=0.0).astype(np.float32)


def label_ids(raw: np.ndarray, path: Path, where: str = "") -> np.ndarray:
    """Label voxels -> int64 class ids.

    Raises:
        ValueError: Non-integer or negative values (the message names the file and `where`).
    """
    if np.issubdtype(raw.dtype, np.floating):
        bad = ~np.isfinite(raw) | (raw != np.round(raw))
        if bad.any():
            first = raw[bad].flat[0]
            raise ValueError(
                f"label {path}{where} has non-integer values (e.g. {float(first):g}, {int(bad.sum())} voxels); "
                "label volumes hold class ids"
            )
    elif not np.issubdtype(raw.dtype, np.integer) and raw.dtype != np.bool_:
        raise ValueError(f"label {path} has dtype {raw.dtype}; label volumes hold integer class ids")
    out = raw.astype(np.int64)
    if out.size and out.min() < 0:
        raise ValueError(f"label {path}{where} has negative values (smallest {int(out.min())})")
    return out


@dataclass
class LabelStats:
    """What a whole label volume says.

    Attributes:
        max_id: Largest class id that is not the ignore index (-1: none).
        foreground: Per voxel axis, the slice indices holding a class other than 0 and the ignore index.
    """

    max_id: int
    foreground: list[list[int]]


def label_stats(labels: np.ndarray, ignore_index: int) -> LabelStats:
    """Statistics of an (X, Y, Z) int64 label volume (see :class:`LabelStats`)."""
    valid = labels[labels != ignore_index]
    fg = (labels != 0) & (labels != ignore_index)  # (X, Y, Z)
    per_axis = [
        np.nonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))[0].tolist() for axis in range(3)
    ]
    return LabelStats(max_id=int(valid.max()) if valid.size else -1, foreground=per_axis)


class _StatsStore:
    """Per-volume windows and label statistics, computed once and kept (on disk with a cache dir).

    Entries are keyed by the file's absolute path, size and modification time and the settings the
    value depends on, so an edited file or a changed setting is recomputed.
    """

    def __init__(self, reader: _VolumeReader, cache_dir: str | None) -> None:
        self.reader = reader
        self.path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
        self.entries: dict[str, Any] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                logger.warning("ignoring the unreadable NIfTI statistics cache %s: %s", self.path, err)
                stored = {}
            if isinstance(stored, dict) and stored.get("version") == CACHE_VERSION:
                self.entries = dict(stored.get("entries", {}))

    @staticmethod
    def _key(kind: str, path: Path, *settings: Any) -> str:
        st = path.stat()
        return "|".join(str(v) for v in (kind, path.resolve(), st.st_size, st.st_mtime_ns, *settings))

    def window(self, path: Path, low: float, high: float) -> np.ndarray:
        """(C, 2) window of the image volume `path` (see :func:`intensity_window`)."""
        key = self._key("window", path, low, high)
        if key not in self.entries:
            window = intensity_window(self.reader.volume(path), low, high)
            constant = [c for c in range(len(window)) if window[c, 1] <= window[c, 0]]
            if constant:
                logger.warning("image %s: channels %s are constant; they read as 0", path, constant)
            self.entries[key], self.dirty = window.tolist(), True
        return np.asarray(self.entries[key], dtype=np.float64)

    def labels(self, path: Path, ignore_index: int) -> LabelStats:
        """:class:`LabelStats` of the label volume `path`."""
        key = self._key("labels", path, ignore_index)
        if key not in self.entries:
            raw = self.reader.volume(path)
            stats = label_stats(label_ids(raw.reshape(raw.shape[:3]), path), ignore_index)
            self.entries[key], self.dirty = {"max_id": stats.max_id, "foreground": stats.foreground}, True
        entry = self.entries[key]
        return LabelStats(max_id=int(entry["max_id"]), foreground=[list(f) for f in entry["foreground"]])

    def save(self) -> None:
        """Writes new entries to the cache file (atomically; nothing without a cache dir)."""
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".nifti_stats", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": CACHE_VERSION, "entries": self.entries}, f)
        os.replace(tmp, self.path)  # concurrent openers each write a whole file; the last one wins
        self.dirty = False


# ---------------------------------------------------------------------------- ids and splits


def slice_id(volume: str, letter: str, index: int) -> str:
    """``("brain", "k", 90)`` -> ``"brain_k090"``."""
    return f"{volume}_{letter}{index:03d}"


def parse_slice_id(sample_id: str, letter: str) -> tuple[str, int]:
    """``"brain_k090"`` -> ``("brain", 90)``.

    Raises:
        ValueError: Not ``<volume>_<i|j|k><index>``, or sliced along another axis than `letter`.
    """
    m = _SLICE_ID.fullmatch(sample_id)
    if m is None:
        raise ValueError(
            f"invalid NIfTI slice id {sample_id!r}; expected <volume>_<i|j|k><index>, e.g. brain_k090"
        )
    if m["axis"] != letter:
        axis = AXIS_LETTERS.index(m["axis"])
        raise ValueError(
            f"slice id {sample_id!r} is a slice along axis {m['axis']} ({axis}), but data.nifti_axis is "
            f"{AXIS_LETTERS.index(letter)} ({letter})"
        )
    return m["volume"], int(m["index"])


@dataclass(frozen=True)
class SplitEntry:
    """One line of a split file: a whole volume, or a slice range ``[start, stop)`` of it.

    Attributes:
        volume: Volume name.
        start, stop: Range bounds as written; None = the volume's first / past its last slice.
        whole: True for a bare volume name.
        axis: The axis letter written with the range (``brain[k=40:80]``), or None.
        source: ``<split file>:<line>``, for messages.
    """

    volume: str
    start: int | None
    stop: int | None
    whole: bool
    source: str
    axis: str | None = None

    def bounds(self, length: int, letter: str) -> tuple[int, int]:
        """``[start, stop)`` for a volume of `length` slices along the axis of `letter`.

        Raises:
            ValueError: A range written for another axis, an empty range or one past the volume's end
                (the message names the line).
        """
        if self.axis is not None and self.axis != letter:
            raise ValueError(
                f"{self.source}: range {self} is along axis {self.axis}, but data.nifti_axis is "
                f"{AXIS_LETTERS.index(letter)} ({letter}); ranges of one axis mean other slices along another"
            )
        start = 0 if self.start is None else self.start
        stop = length if self.stop is None else self.stop
        if not 0 <= start < stop <= length:
            raise ValueError(
                f"{self.source}: range [{start}:{stop}] of volume {self.volume!r} is empty or outside its "
                f"{length} slices"
            )
        return start, stop

    def __str__(self) -> str:
        if self.whole:
            return self.volume
        axis = "" if self.axis is None else f"{self.axis}="
        start, stop = ("" if v is None else v for v in (self.start, self.stop))
        return f"{self.volume}[{axis}{start}:{stop}]"


def read_split(path: Path) -> list[SplitEntry]:
    """Parses a split file (see the module docstring).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A malformed line (the message names the file and line).
    """
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _SPLIT_LINE.fullmatch(line)
        if m is None:
            raise ValueError(
                f"{path}:{number}: cannot read {line!r}; expected <volume>, <volume>[start:stop] or "
                "<volume>[k=start:stop], e.g. brain[0:80]"
            )
        whole = m["start"] is None
        start = int(m["start"]) if m["start"] else None
        stop = int(m["stop"]) if m["stop"] else None
        entries.append(SplitEntry(m["volume"], start, stop, whole, f"{path}:{number}", axis=m["axis"]))
    return entries


@dataclass(frozen=True)
class _Placed:
    split: str
    entry: SplitEntry
    start: int
    stop: int


def gap_problems(placed: Sequence[_Placed], min_gap: int, letter: str) -> list[str]:
    """Overlaps and too-small gaps between ranges of one volume in different splits.

    Two half-open ranges ``[a0, a1)`` and ``[b0, b1)`` with ``a1 <= b0`` leave ``b0 - a1`` slices between
    them; at least `min_gap` are required.
    """
    problems = []
    by_volume: dict[str, list[_Placed]] = {}
    for p in placed:
        by_volume.setdefault(p.entry.volume, []).append(p)
    for volume, items in by_volume.items():
        for n, a in enumerate(items):
            for b in items[n + 1 :]:
                if a.split == b.split:
                    continue
                first, second = (a, b) if a.start <= b.start else (b, a)
                gap = second.start - first.stop
                where = (
                    f"{first.entry.source} ({first.split}: {first.entry}) and "
                    f"{second.entry.source} ({second.split}: {second.entry})"
                )
                if gap < 0:
                    problems.append(
                        f"splits overlap: {where} share slices {second.start}..{min(first.stop, second.stop) - 1} "
                        f"of volume {volume!r} along axis {letter}"
                    )
                elif gap < min_gap:
                    problems.append(
                        f"splits too close: {where} leave {gap} slices of volume {volume!r} between them along "
                        f"axis {letter}; neighbouring slices are near copies, so ranges of one volume in "
                        f"different splits need a gap of at least data.nifti_min_gap={min_gap} slices"
                    )
    return problems


# ---------------------------------------------------------------------------- the dataset


@dataclass
class _Volume:
    name: str
    image: VolumeHeader
    label: VolumeHeader


def _pair(
    name: str, images: dict[str, Path], labels: dict[str, Path], options: NiftiOptions, root: Path
) -> _Volume:
    """Reads and compares the headers of one volume's image and label.

    Raises:
        FileNotFoundError: No image or no label file.
        OSError, ValueError: Unreadable headers, bad shapes, or a shape or affine mismatch.
    """
    if name not in images:
        raise FileNotFoundError(
            f"no image for volume {name!r} in {root / options.image_dir} (.nii or .nii.gz)"
        )
    if name not in labels:
        raise FileNotFoundError(
            f"no label for volume {name!r} ({images[name]}) in {root / options.label_dir}"
        )
    image, label = read_header(images[name], "image"), read_header(labels[name], "label")
    problems = pair_problems(image, label)
    if problems:
        raise ValueError(problems[0])
    return _Volume(name, image, label)


def split_entries(root: Path, split: str, length: Callable[[str], int], letter: str) -> list[_Placed]:
    """The entries of ``splits/<split>.txt`` with their bounds.

    Args:
        root: Dataset folder.
        split: Split name.
        length: Volume name -> slices along the axis (raises for a missing or broken volume).
        letter: The slicing axis (i, j or k); a range written for another axis is refused.

    Raises:
        FileNotFoundError, ValueError: A missing split file or volume, a malformed line, a range
            outside its volume (the message names the file and line).
    """
    out = []
    for entry in read_split(root / "splits" / f"{split}.txt"):
        start, stop = entry.bounds(length(entry.volume), letter)
        out.append(_Placed(split, entry, start, stop))
    return out


class NiftiSlices(Dataset[tuple[Tensor, Tensor]]):
    """2-D slices of NIfTI image and label volumes (see the module docstring).

    Attributes:
        root: The dataset folder.
        options: How volumes become slices.
        volumes: The volume names used, in order.
        ids: ``<volume>_<letter><index>`` slice ids.
        windows: Volume name -> (C, 2) intensity window ``[p_low, p_high]`` per channel.
        class_names: From the classes file; without it ``class_0 .. class_{K}`` up to the largest
            label value (not the ignore index) over every label volume under the root.
        num_classes, ignore_index, palette: As for every reader.
        in_channels: C (1 for 3-D image volumes).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        ids: Sequence[str] | None = None,
        options: NiftiOptions | None = None,
        transform: PairTransform | None = None,
        cache_volumes: int = 4,
    ) -> None:
        """Indexes the volumes, checks them and computes each one's window.

        Args:
            root: Dataset folder.
            split: ``splits/<split>.txt``. Exclusive with `ids`. Neither: every slice of every volume.
            ids: Slice ids.
            options: Slicing, window, resampling and split settings; None = the defaults.
            transform: Joint transform ``(image (C, H, W), mask (H, W)) -> same``.
            cache_volumes: Decoded ``.nii.gz`` files kept per process.

        Raises:
            FileNotFoundError: Missing folder, split file, image or label (the message names it).
            ValueError: Both `split` and `ids`, a malformed id or split line, a shape or affine mismatch
                (naming both files), splits that overlap or leave less than the gap, or no slices.
            OSError: An unreadable volume.
        """
        if ids is not None and split is not None:
            raise ValueError("pass either ids or split, not both")
        self.root = Path(root)
        self.options = options if options is not None else NiftiOptions()
        self.transform = transform
        opts = self.options
        images, image_problems = find_volumes(self.root / opts.image_dir)
        labels, label_problems = find_volumes(self.root / opts.label_dir)
        if image_problems or label_problems:
            raise ValueError((image_problems + label_problems)[0])
        info = load_class_info(self.root, opts.classes_file)
        self.ignore_index: int = info.ignore_index
        self._reader = _VolumeReader(cache_volumes)
        store = _StatsStore(self._reader, opts.cache_dir)
        volumes: dict[str, _Volume] = {}

        def volume(name: str) -> _Volume:
            if name not in volumes:
                volumes[name] = _pair(name, images, labels, opts, self.root)
            return volumes[name]

        def length(name: str) -> int:
            return volume(name).image.shape[opts.axis]

        if ids is not None:
            slices = [parse_slice_id(i, opts.letter) for i in check_ids(ids, "ids")]
            for sample_id, (name, k) in zip(ids, slices, strict=True):
                if not 0 <= k < length(name):
                    raise ValueError(
                        f"slice id {sample_id!r}: volume {name!r} has {length(name)} slices along axis {opts.letter}"
                    )
        elif split is not None:
            slices = [(p.entry.volume, k) for p in self._split(split, length) for k in range(p.start, p.stop)]
        else:
            slices = [(name, k) for name in sorted(images) for k in range(length(name))]
        slices = list(dict.fromkeys(slices))
        if opts.skip_empty and ids is None:
            keep = {
                n: set(store.labels(volume(n).label.path, self.ignore_index).foreground[opts.axis])
                for n in dict.fromkeys(n for n, _ in slices)
            }
            total = len(slices)
            slices = [(n, k) for n, k in slices if k in keep[n]]
            logger.info(
                "%s: skipped %d of %d slices without foreground", self.root, total - len(slices), total
            )
        if not slices:
            raise ValueError(f"no slices in {self.root}" + (f" for split {split!r}" if split else ""))
        self.volumes: list[str] = list(dict.fromkeys(n for n, _ in slices))
        position = {n: v for v, n in enumerate(self.volumes)}
        self._slices: list[tuple[int, int]] = [(position[n], k) for n, k in slices]
        self.ids: list[str] = [slice_id(n, opts.letter, k) for n, k in slices]
        self._headers = [volume(n) for n in self.volumes]
        first = self._headers[0].image
        for v in self._headers:
            if v.image.channels != first.channels:
                raise ValueError(
                    f"image {first.path} has {first.channels} channels but {v.image.path} has "
                    f"{v.image.channels}; every image volume needs the same channels"
                )
        self.in_channels: int = first.channels
        self.windows: dict[str, np.ndarray] = {
            v.name: store.window(v.image.path, *opts.window) for v in self._headers
        }
        names = info.names
        if names is None:
            largest = max(store.labels(path, self.ignore_index).max_id for path in labels.values())
            names = [f"class_{k}" for k in range(largest + 1)]
            logger.info("%s has no classes file; inferred %d classes from the labels", self.root, len(names))
        store.save()
        self.class_names: list[str] = list(names)
        self.num_classes: int = len(self.class_names)
        self.palette: list[tuple[int, ...]] | None = (
            [tuple(c) for c in info.palette] if info.palette is not None else None
        )

    def _split(self, split: str, length: Callable[[str], int]) -> list[_Placed]:
        """The entries of `split`; for a guarded split, after refusing overlaps and small gaps with the
        other guarded splits."""
        entries = split_entries(self.root, split, length, self.options.letter)
        guarded = self.options.guarded_splits
        if split not in guarded:
            return entries
        placed = list(entries)
        for other in guarded:
            if other != split and (self.root / "splits" / f"{other}.txt").is_file():
                placed += split_entries(self.root, other, length, self.options.letter)
        problems = gap_problems(placed, self.options.min_gap, self.options.letter)
        if problems:
            more = (
                f" (and {len(problems) - 1} more; `pixcon data check` lists them)"
                if len(problems) > 1
                else ""
            )
            raise ValueError(problems[0] + more)
        return entries

    def __len__(self) -> int:
        return len(self.ids)

    def _read(self, index: int, image: bool) -> tuple[Tensor | None, Tensor]:
        v, k = self._slices[index]
        vol = self._headers[v]
        where = f" (slice {k} along axis {self.options.letter})"
        raw_label = self._reader.slice(vol.label.path, self.options.axis, k)  # (H, W) or (H, W, 1)
        mask = torch.from_numpy(
            label_ids(raw_label.reshape(raw_label.shape[:2]), vol.label.path, where)
        )  # (H, W)
        image_t = None
        if image:
            raw = self._reader.slice(vol.image.path, self.options.axis, k)  # (H, W) or (H, W, C)
            windowed = apply_window(raw, self.windows[vol.name])  # (H, W, C)
            image_t = torch.from_numpy(np.ascontiguousarray(windowed.transpose(2, 0, 1)))  # (C, H, W)
        size = self.options.size
        if size is not None:
            mask = nearest_exact(mask, size)  # (h, w)
            image_t = None if image_t is None else resample_image(image_t, size)  # (C, h, w)
        return image_t, mask

    def mask(self, index: int) -> Tensor:
        """The untransformed (resampled, if set) mask of slice ``index``, (H, W) int64."""
        return self._read(index, image=False)[1]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Returns ``(image (C, H, W) float32 in [0, 1], mask (H, W) int64)``, transformed if set."""
        image, mask = self._read(index, image=True)
        assert image is not None
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, volumes={len(self.volumes)}, n={len(self)}, "
            f"axis={self.options.axis}, num_classes={self.num_classes})"
        )


def resample_image(image: Tensor, size: Sequence[int]) -> Tensor:
    """Resamples an image slice (C, H, W) in [0, 1] to (C, *size): bilinear, antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batch = F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    out = batch[0]  # (1, C, h, w) -> (C, h, w)
    return out.clamp_(0.0, 1.0)  # the antialiasing kernel can overshoot [0, 1] a little


def nifti_split_ids(root: str | Path, split: str, options: NiftiOptions | None = None) -> list[str]:
    """The slice ids of `split` (with ``skip_empty``, only slices with foreground); see :class:`NiftiSlices`."""
    return NiftiSlices(root, split=split, options=options).ids


def scan_nifti(
    root: str | Path,
    splits: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    options: NiftiOptions | None = None,
) -> Scan:
    """Indexes NIfTI volumes for :func:`pixcon.data.registry.check_dataset`, collecting problems.

    One sample per slice (every slice: ``skip_empty`` does not apply). Found while indexing: images
    without labels and labels without images, unreadable headers, shape and affine mismatches between
    an image and its label (naming both files), differing channel counts, malformed split lines,
    unknown volumes and out-of-range slices in split files, and ranges of one volume in different
    guarded splits that overlap or leave less than ``min_gap`` slices. Each selected volume is read
    whole once (its window; its labels must be non-negative integers). A sample's paths are the
    files with the slice appended, e.g. ``labels/brain.nii.gz[k=90]``, so problems name the slice.

    Args:
        root: Dataset folder.
        splits: Check these splits. Exclusive with `ids`. Neither: every volume, and every split file.
        ids: Check these slice ids.
        options: As for :class:`NiftiSlices`.

    Raises:
        FileNotFoundError: The image folder or an explicit classes file does not exist.
        ValueError: Both `splits` and `ids`, or a malformed classes file.
    """
    if ids is not None and splits is not None:
        raise ValueError("pass either ids or splits, not both")
    root = Path(root)
    opts = options if options is not None else NiftiOptions()
    images, errors = find_volumes(root / opts.image_dir)
    info = load_class_info(root, opts.classes_file)
    warnings: list[str] = []
    label_dir = root / opts.label_dir
    labels: dict[str, Path] = {}
    if label_dir.is_dir():
        labels, problems = find_volumes(label_dir)
        errors += problems
    else:
        errors.append(f"label folder {label_dir} not found")
    reader = _VolumeReader(cache_volumes=2)
    store = _StatsStore(reader, opts.cache_dir)
    good: dict[str, _Volume] = {}
    broken: set[str] = set()

    def volume(name: str, source: str = "") -> _Volume | None:
        if name in good or name in broken:
            return good.get(name)
        if name not in images and name not in labels:
            errors.append(f"{source or 'ids'}: unknown volume {name!r} (no file in {root / opts.image_dir})")
            return None  # not marked broken: each unknown reference is reported
        try:
            good[name] = _pair(name, images, labels, opts, root)
        except (OSError, ValueError) as err:
            errors.append(str(err))
            broken.add(name)
        return good.get(name)

    def length(name: str) -> int:
        found = volume(name)
        if found is None:
            raise LookupError(name)
        return found.image.shape[opts.axis]

    def entries(split: str) -> list[_Placed]:
        out: list[_Placed] = []
        try:
            lines = read_split(root / "splits" / f"{split}.txt")
        except (FileNotFoundError, ValueError) as err:
            errors.append(str(err))
            return out
        for entry in lines:
            if volume(entry.volume, entry.source) is None:
                continue
            try:
                out.append(_Placed(split, entry, *entry.bounds(length(entry.volume), opts.letter)))
            except ValueError as err:
                errors.append(str(err))
        return out

    selected: list[tuple[str, int]] = []
    if ids is not None:
        for i in ids:
            try:
                name, k = parse_slice_id(i, opts.letter)
            except ValueError as err:
                errors.append(f"ids: {err}")
                continue
            if volume(name) is None:
                continue
            if not 0 <= k < length(name):
                errors.append(
                    f"ids: slice {i!r} is outside volume {name!r} ({length(name)} slices along {opts.letter})"
                )
                continue
            selected.append((name, k))
    else:
        present = sorted(p.stem for p in (root / "splits").glob("*.txt"))
        names = list(splits) if splits is not None else present
        placed = {
            split: entries(split)
            for split in dict.fromkeys([*names, *(s for s in opts.guarded_splits if s in present)])
        }
        guarded = [p for s in opts.guarded_splits for p in placed.get(s, [])]
        errors.extend(gap_problems(guarded, opts.min_gap, opts.letter))
        if splits is not None:
            selected = [(p.entry.volume, k) for s in names for p in placed[s] for k in range(p.start, p.stop)]
        else:
            for name in sorted(set(labels) - set(images)):
                errors.append(f"label {labels[name]} has no image in {root / opts.image_dir}")
            selected = [(n, k) for n in sorted(images) if volume(n) is not None for k in range(length(n))]
    channels: dict[int, Path] = {}
    usable: set[str] = set()
    for name in dict.fromkeys(n for n, _ in selected):
        vol = good[name]
        channels.setdefault(vol.image.channels, vol.image.path)
        try:
            window = store.window(vol.image.path, *opts.window)
            store.labels(vol.label.path, info.ignore_index)
        except (OSError, ValueError) as err:
            errors.append(str(err))
            continue
        constant = [c for c in range(len(window)) if window[c, 1] <= window[c, 0]]
        if constant:
            warnings.append(f"image {vol.image.path}: channels {constant} are constant and read as 0")
        usable.add(name)
    if len(channels) > 1:
        errors.append(
            "image volumes have different channel counts: "
            + ", ".join(f"{c} ({path})" for c, path in sorted(channels.items()))
        )
    store.save()

    refs: dict[str, tuple[str, int]] = {}
    samples = []
    for name, k in dict.fromkeys(selected):
        if name not in usable:
            continue
        vol = good[name]
        image = Path(f"{vol.image.path}[{opts.letter}={k}]")
        mask = Path(f"{vol.label.path}[{opts.letter}={k}]")
        refs[str(image)] = refs[str(mask)] = (name, k)
        samples.append(Sample(slice_id(name, opts.letter, k), image, mask))

    def read_image(path: Path) -> np.ndarray:
        name, k = refs[str(path)]
        vol = good[name]
        window = store.window(vol.image.path, *opts.window)
        image = apply_window(reader.slice(vol.image.path, opts.axis, k), window)  # (H, W, C)
        if opts.size is not None:
            tensor = resample_image(torch.from_numpy(image.transpose(2, 0, 1)), opts.size)  # (C, h, w)
            image = tensor.numpy().transpose(1, 2, 0)  # (h, w, C)
        return image

    def read_mask(path: Path) -> np.ndarray:
        name, k = refs[str(path)]
        vol = good[name]
        raw = reader.slice(vol.label.path, opts.axis, k)
        mask = label_ids(raw.reshape(raw.shape[:2]), vol.label.path, f" (slice {k} along axis {opts.letter})")
        if opts.size is not None:
            mask = nearest_exact(torch.from_numpy(mask), opts.size).numpy()  # (h, w)
        return mask

    return Scan(
        samples=samples,
        class_names=info.names,
        ignore_index=info.ignore_index,
        read_image=read_image,
        read_mask=read_mask,
        errors=errors,
        warnings=warnings,
        unit="slice",
    )

"""Decoding image files without losing their dynamic range, and scaling them to float.

Every reader decodes images with :func:`read_rgb` (folder, VOC, Cityscapes) or :func:`read_tiff`
(Potsdam/Vaihingen tiles), which return the file's values in the file's own dtype, and converts them
with :func:`image_to_tensor` (through :func:`pixcon.data.base.to_tensors`). The rule:

* **8-bit images** (uint8: PNG, JPEG, 8-bit TIFF) are scaled by 1/255, exactly as before this module
  existed: ``float32(x) / 255``, bit for bit.
* **Every other depth** (16-bit PNG ``I;16``/``I``, uint16/int16/int32 TIFF, float TIFF) is scaled by a
  value range ``[lo, hi]``: ``(x - lo) / (hi - lo)``, computed in float64 and stored as float32. Values
  outside the range map outside [0, 1]; nothing is clipped. The range is ``data.value_range`` when it
  is declared, else the one measured over the training images when training starts
  (:func:`pixcon.data.registry.resolve_value_range`), which is saved in the run's config so that
  evaluation, prediction and pseudo-labelling scale every image the same way. Reading a non-8-bit image
  without a range is an error naming the file: a guessed range (the dtype's full 0..65535) would turn
  a 12-bit scan into a nearly black image without a word.

Channels (the readers that take RGB: folder, VOC, Cityscapes). 8-bit images are converted to RGB by
Pillow as before: greyscale is repeated to 3 channels, palette images are looked up, alpha is dropped.
Non-8-bit images follow the same policy: one channel (greyscale, e.g. an MRI or CT slice) is repeated
to 3 channels, 3 channels are kept, and any other count is an error naming the file (a 4-band image
belongs in a reader that takes 4 bands). ``in_channels`` stays 3 for these readers.

Pillow decodes 16-bit colour PNGs (RGB/RGBA/grey+alpha with 16 bits per sample) to 8 bits by keeping
the high byte, which would silently crush 12-bit data; such files are refused with the advice to store
them as 16-bit TIFF (or 16-bit greyscale PNG). TIFFs whose samples are not 8-bit are decoded by
tifffile, which keeps every bit and every band; 8-bit TIFFs still go through Pillow as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from pixcon.data.paths import require_file

ValueRange = tuple[float, float]

TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
# Pillow modes that hold more than 8 bits per sample; every other mode is converted to RGB.
WIDE_MODES: frozenset[str] = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
# Dtypes scaled by a value range (everything but uint8).
RANGE_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t) for t in ("uint16", "int16", "uint32", "int32", "float16", "float32", "float64")
)
VALUE_RANGE_KEY = "data.value_range"
_PIL_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError)


def open_image(path: str | Path, mode: str | None = None) -> Image.Image:
    """Opens and fully decodes an image, so truncated files fail here and not later.

    Args:
        path: Image file.
        mode: PIL mode to convert to (e.g. ``"RGB"``), or None to keep the file's mode.

    Raises:
        FileNotFoundError, IsADirectoryError: Nothing, or a folder, at `path`.
        OSError: The file is not an image or is truncated (the message names it).
    """
    path = require_file(path, "image")
    try:
        with Image.open(path) as img:
            img.load()  # decodes everything: raises on truncated PNG/JPEG data
            return img.convert(mode) if mode is not None else img.copy()
    except _PIL_ERRORS as err:
        # PIL raises SyntaxError for some broken PNG chunks and EOFError for cut-off frames.
        raise OSError(f"cannot read image {path}: {err}") from err


def depth_name(dtype: np.dtype) -> str:
    """A readable bit depth: ``uint8`` -> ``"8-bit (uint8)"``, ``float32`` -> ``"32-bit float (float32)"``."""
    dtype = np.dtype(dtype)
    kind = {"f": " float", "i": " signed", "u": ""}.get(dtype.kind, f" {dtype.kind}")
    return f"{8 * dtype.itemsize}-bit{kind} ({dtype.name})"


def _png_bit_depth(path: Path) -> int | None:
    """The bit depth from a PNG's IHDR chunk, or None if `path` does not start like a PNG."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) < 25 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


# ---------------------------------------------------------------------------------------------- TIFF


@dataclass(frozen=True)
class TileHeader:
    """Size, layout and sample type of a TIFF image, read from its header."""

    height: int
    width: int
    channels: int
    axes: str  # tifffile series axes: "YXS" (interleaved), "SYX" (planar) or "YX"
    dtype: np.dtype


def read_header(path: str | Path) -> TileHeader:
    """Reads a TIFF header.

    Raises:
        FileNotFoundError, IsADirectoryError: Nothing, or a folder, at `path`.
        OSError: Not a readable TIFF (the message names the file).
    """
    path = require_file(path, "TIFF")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
    except (ValueError, OSError, IndexError) as err:
        raise OSError(f"cannot read TIFF {path}: {err}") from err
    dims = dict(zip(axes, shape, strict=True))
    if "Y" not in dims or "X" not in dims or len(shape) > 3:
        raise OSError(
            f"cannot read TIFF {path}: expected a single (H, W[, C]) image, got axes {axes} {shape}"
        )
    return TileHeader(height=dims["Y"], width=dims["X"], channels=dims.get("S", 1), axes=axes, dtype=dtype)


def to_hwc(array: np.ndarray, axes: str) -> np.ndarray:
    """A view of a tifffile array with series `axes` as (H, W, C)."""
    if axes.startswith("S"):
        return np.moveaxis(array, 0, -1)  # (S, H, W) -> (H, W, S)
    if array.ndim == 2:
        return array[..., None]  # (H, W) -> (H, W, 1)
    return array


def read_tiff(path: str | Path) -> np.ndarray:
    """Decodes a whole TIFF as (H, W, C) in its own dtype (any number of bands, any depth).

    Raises:
        FileNotFoundError, IsADirectoryError: Nothing, or a folder, at `path`.
        OSError: Unreadable or truncated file (the message names it).
    """
    header = read_header(path)
    try:
        array = tifffile.imread(path)
    except (ValueError, OSError, IndexError) as err:
        raise OSError(f"cannot read TIFF {path}: {err}") from err
    return to_hwc(array, header.axes)


def _tiff_dtype(path: Path) -> np.dtype | None:
    """The sample dtype of a TIFF from its header, or None when tifffile cannot parse it."""
    try:
        return read_header(path).dtype
    except OSError:
        return None


# ------------------------------------------------------------------------------------------ decoding


def image_dtype(path: str | Path) -> np.dtype:
    """The dtype :func:`read_rgb` returns for `path`, from the file's header only (nothing is decoded).

    Raises:
        FileNotFoundError, IsADirectoryError: Nothing, or a folder, at `path`.
        OSError: Not an image (the message names the file).
        ValueError: A 16-bit colour PNG (see the module docstring).
    """
    path = require_file(path, "image")
    if path.suffix.lower() in TIFF_SUFFIXES:
        dtype = _tiff_dtype(path)
        if dtype is not None and dtype != np.uint8:
            return dtype
    try:
        with Image.open(path) as img:
            mode, fmt = img.mode, img.format
    except _PIL_ERRORS as err:
        raise OSError(f"cannot read image {path}: {err}") from err
    if mode in WIDE_MODES:
        return (
            np.dtype("float32") if mode == "F" else np.dtype("int32") if mode == "I" else np.dtype("uint16")
        )
    _refuse_wide_colour_png(path, fmt)
    return np.dtype("uint8")


def _refuse_wide_colour_png(path: Path, fmt: str | None) -> None:
    if fmt == "PNG" and _png_bit_depth(path) == 16:
        raise ValueError(
            f"image {path} is a 16-bit colour PNG: Pillow would keep only the high 8 bits of each sample; "
            "store it as a 16-bit TIFF (or as a 16-bit greyscale PNG) to keep its dynamic range"
        )


def _rgb_channels(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) or (H, W, C) non-8-bit array -> (H, W, 3): one channel repeated, three kept."""
    if array.ndim == 2:
        array = array[..., None]  # (H, W, 1)
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)  # (H, W, 3)
    if channels == 3:
        return array
    raise ValueError(
        f"image {path} has {channels} channels of {depth_name(array.dtype)} samples; this reader takes "
        "1 (greyscale, repeated to 3) or 3 channels"
    )


def read_rgb(path: str | Path) -> np.ndarray:
    """Reads an image file as (H, W, 3) in the file's own depth (see the module docstring).

    8-bit files give uint8 exactly as ``Image.convert("RGB")`` does (greyscale and palette images are
    converted, alpha dropped). Files with more than 8 bits per sample (16-bit greyscale PNG, any
    non-8-bit TIFF) keep their dtype (uint16, int32, float32, ...), one channel repeated to 3.

    Raises:
        FileNotFoundError, IsADirectoryError: Nothing, or a folder, at `path`.
        OSError: The file is not an image or is truncated (the message names it).
        ValueError: A 16-bit colour PNG, or a non-8-bit image without 1 or 3 channels (names the file).
    """
    path = require_file(path, "image")
    if path.suffix.lower() in TIFF_SUFFIXES:
        dtype = _tiff_dtype(path)  # None: tifffile cannot parse it, so Pillow decides (as before)
        if dtype is not None and dtype != np.uint8:
            return _rgb_channels(read_tiff(path), path)
    try:
        with Image.open(path) as img:
            img.load()  # decodes everything: raises on truncated PNG/JPEG data
            fmt = img.format
            wide = img.mode in WIDE_MODES
            decoded = np.array(img) if wide else None  # uint16 ("I;16*"), int32 ("I") or float32 ("F")
            rgb = None if wide else img.convert("RGB")
    except _PIL_ERRORS as err:
        raise OSError(f"cannot read image {path}: {err}") from err
    if decoded is not None:
        decoded = decoded.astype(decoded.dtype.newbyteorder("="), copy=False)  # "I;16B" is big-endian
        return _rgb_channels(decoded, path)
    _refuse_wide_colour_png(path, fmt)
    return np.asarray(rgb)  # (H, W, 3) uint8


# ---------------------------------------------------------------------------------------- scaling


def check_value_range(value_range: Sequence[float], source: str = VALUE_RANGE_KEY) -> ValueRange:
    """Validates ``[lo, hi]``: two finite numbers with ``lo < hi``.

    Raises:
        ValueError: Anything else (the message names `source`).
    """
    values = list(value_range)
    if (
        len(values) != 2
        or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values
        )
        or not all(math.isfinite(float(v)) for v in values)
        or not float(values[0]) < float(values[1])
    ):
        raise ValueError(f"{source} must be [lo, hi] with finite lo < hi, got {value_range!r}")
    return float(values[0]), float(values[1])


def value_extent(image: np.ndarray) -> ValueRange | None:
    """(min, max) over the finite values of `image`, or None if it has none."""
    if image.dtype.kind == "f":
        finite = image[np.isfinite(image)]
        if finite.size == 0:
            return None
        return float(finite.min()), float(finite.max())
    if image.size == 0:
        return None
    return float(image.min()), float(image.max())


def image_to_tensor(
    image: np.ndarray, value_range: Sequence[float] | None = None, source: str | Path = "image"
) -> Tensor:
    """Converts a decoded image to the network's float input (see the module docstring for the rule).

    Args:
        image: Shape (H, W, C): uint8, or uint16/int16/uint32/int32/float16/float32/float64.
        value_range: ``[lo, hi]`` for non-8-bit images (``data.value_range``); ignored for uint8.
        source: The file, for error messages.

    Returns:
        Shape (C, H, W), float32: ``x / 255`` for uint8, else ``(x - lo) / (hi - lo)``, not clipped.

    Raises:
        ValueError: Another dtype, or a non-8-bit image without a value range (names `source`).
    """
    if image.ndim != 3:
        raise ValueError(f"image {source} must be (H, W, C), got shape {image.shape}")
    if image.dtype == np.uint8:
        # Exactly the conversion used before value ranges existed: 8-bit results stay bit-identical.
        # PIL-backed arrays are read-only and torch wants writable memory, hence require(..., "W").
        image_t = torch.from_numpy(np.require(image, requirements=["C", "W"]))  # (H, W, C)
        return image_t.permute(2, 0, 1).float().div_(255.0)  # (C, H, W)
    if image.dtype.newbyteorder("=") not in RANGE_DTYPES:
        raise ValueError(
            f"image {source} has dtype {image.dtype}; expected uint8, uint16, int16, uint32, int32 or float"
        )
    if value_range is None:
        raise ValueError(
            f"image {source} is {depth_name(image.dtype)}, not 8-bit, and no value range is set: declare "
            f"{VALUE_RANGE_KEY}: [lo, hi] (training measures it over the training images when unset and "
            "stores it in the run's config)"
        )
    lo, hi = check_value_range(value_range)
    scaled = (image.astype(np.float64) - lo) / (hi - lo)  # (H, W, C), exact for 16-bit values
    return torch.from_numpy(scaled.astype(np.float32)).permute(2, 0, 1)  # (C, H, W)

"""Fashion-MNIST reader for the standard idx files (Xiao et al., 2017).

The files are the four ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` files of the
original release. On Debian/Ubuntu they come with ``apt-get install dataset-fashion-mnist``
(installed under ``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FASHION_CLASSES: tuple[str, ...] = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
"""The 10 Fashion-MNIST class names, indexed by label."""

DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_ENV_VAR = "PIXCON_FASHION_MNIST"

_SPLIT_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def _candidate_dirs(path: str | Path | None) -> list[Path]:
    if path is not None:
        return [Path(path)]
    dirs = [DEFAULT_FASHION_DIR]
    env = os.environ.get(FASHION_ENV_VAR)
    if env:
        dirs.append(Path(env))
    return dirs


def _find_file(directory: Path, prefix: str, kind: str) -> Path | None:
    # kind is "images-idx3" or "labels-idx1"; the original release also used a dot separator.
    stem_dot = kind.replace("-", ".", 1)
    for name in (f"{prefix}-{kind}-ubyte", f"{prefix}-{stem_dot}-ubyte"):
        for suffix in (".gz", ""):
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise OSError(f"cannot read Fashion-MNIST file {path}: {err}") from err


def _parse_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parses one idx file into an array of shape ``dims`` (uint8)."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path} is too short to be an idx file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path} has idx magic number 0x{magic:08x}, expected 0x{expected_magic:08x}; "
            "is this the right file (images vs labels) and not truncated or corrupted?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header + int(np.prod(dims))
    if len(raw) != expected_len:
        raise ValueError(f"{path}: header says {dims} ({expected_len} bytes) but file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def find_fashion_mnist(path: str | Path | None = None, split: str = "train") -> tuple[Path, Path]:
    """Locates the image and label idx files of one Fashion-MNIST split.

    Args:
        path: Directory holding the idx files. ``None`` searches ``/usr/share/datasets/fashion-mnist``
            and then the directory named by the ``PIXCON_FASHION_MNIST`` environment variable.
        split: ``"train"`` (60k) or ``"test"`` (10k; ``"t10k"`` is accepted too).

    Returns:
        ``(images_file, labels_file)``.

    Raises:
        ValueError: Unknown split.
        FileNotFoundError: No searched directory holds both files; the message lists them.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(_SPLIT_PREFIX)}")
    prefix = _SPLIT_PREFIX[split]
    searched = _candidate_dirs(path)
    for directory in searched:
        images = _find_file(directory, prefix, "images-idx3")
        labels = _find_file(directory, prefix, "labels-idx1")
        if images is not None and labels is not None:
            return images, labels
    where = ", ".join(str(d) for d in searched)
    env_note = (
        "" if path is not None or os.environ.get(FASHION_ENV_VAR) else f" (${FASHION_ENV_VAR} is unset)"
    )
    raise FileNotFoundError(
        f"Fashion-MNIST {split!r} files ({prefix}-images-idx3-ubyte[.gz], {prefix}-labels-idx1-ubyte[.gz]) "
        f"not found in: {where}{env_note}. Install them with `apt-get install dataset-fashion-mnist` "
        f"(Debian/Ubuntu, puts them in {DEFAULT_FASHION_DIR}), or pass the directory holding the idx "
        f"files (or set ${FASHION_ENV_VAR})."
    )


def load_fashion_mnist(path: str | Path | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Loads one Fashion-MNIST split from the standard idx files (gzipped or not).

    Args:
        path: Directory holding the idx files; ``None`` searches the default locations
            (see `find_fashion_mnist`).
        split: ``"train"`` (60000 items) or ``"test"`` (10000 items).

    Returns:
        ``(images, labels)``: images of shape (N, 28, 28), uint8, and labels of shape (N,),
        int64 in ``0..9`` (names in `FASHION_CLASSES`).

    Raises:
        FileNotFoundError: Files not found (the message says where it looked and how to install).
        ValueError: Wrong idx magic number, inconsistent sizes or out-of-range labels (names the file).
    """
    images_file, labels_file = find_fashion_mnist(path, split)
    images = _parse_idx(images_file, _IMAGES_MAGIC)  # (N, 28, 28)
    labels = _parse_idx(labels_file, _LABELS_MAGIC).astype(np.int64)  # (N,)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels"
        )
    if len(labels) and int(labels.max()) >= len(FASHION_CLASSES):
        raise ValueError(
            f"{labels_file} has label {int(labels.max())}, expected 0..{len(FASHION_CLASSES) - 1}"
        )
    logger.debug("loaded Fashion-MNIST %s: %d items from %s", split, len(labels), images_file.parent)
    return images, labels

"""Atomic checkpoints: temporary file, fsync, rename; corrupt files are detected, not trusted.

A checkpoint is a plain dict loadable with ``torch.load(..., weights_only=True)``::

    {"format_version", "model", "optimizer", "scheduler", "step", "config", "metrics", "rng", "kind"}
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "step", "config")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or of the wrong format."""


def save_checkpoint(state: dict[str, Any], path: str | Path, backup: str | Path | None = None) -> Path:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one, never half.

    Args:
        backup: If given, an existing ``path`` is renamed to it once the new file is fully written
            (and fsynced), so the two renames are the only window without ``path``; readers fall
            back to ``backup`` (see :func:`latest_good_checkpoint`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ...: torch raises several types
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"checkpoint {path} is not a pixcon checkpoint (missing {missing})")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format_version']}, newer than {FORMAT_VERSION}"
        )
    return state


def latest_good_checkpoint(paths: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The first loadable checkpoint of ``paths`` (newest first); corrupt ones are logged and skipped."""
    for path in paths:
        if not path.exists():
            continue
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            log.error("%s; falling back to the previous checkpoint", err)
    return None

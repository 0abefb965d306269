"""Checks that an output folder or file can be written, before any expensive work.

Every command that writes (a training run's folder, ``evaluate --out``, ``predict --out``,
``pseudo-label --out``) calls these first, so a path under a regular file, a folder where a file
belongs or a folder without write permission ends the command with one line naming the path and
the setting, instead of a traceback after minutes of work (``evaluate`` lost its computed scores
that way). Nothing is created here.
"""

from __future__ import annotations

import os
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path with none)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _check_parent_chain(folder: Path, path: Path, key: str) -> Path:
    """The closest existing folder at or above ``folder`` (``path`` or its folder); raises if a
    file stands in the way."""
    anchor = _nearest_existing(folder)
    if not anchor.is_dir():
        if anchor == path:
            raise NotADirectoryError(f"{key} {path} is a file, not a folder")
        raise NotADirectoryError(f"{key} {path}: {anchor} is a file, not a folder")
    return anchor


def _check_writable(folder: Path, path: Path, key: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        where = "" if folder == path else f": {folder}"
        raise PermissionError(
            f"{key} {path}{where} is not writable (permission denied or a read-only file system)"
        )


def check_output_dir(path: str | Path, key: str) -> Path:
    """Checks that the folder ``path`` exists and can be written, or can be created.

    Args:
        path: The output folder.
        key: The setting it comes from, for the message (``train.out_dir``, ``--out``).

    Raises:
        NotADirectoryError: ``path`` is a file, or one of its ancestors is.
        PermissionError: ``path`` (or the folder it would be created in) is not writable.
    """
    path = Path(path)
    anchor = _check_parent_chain(path, path, key)
    _check_writable(anchor, path, key)
    return path


def check_output_file(path: str | Path, key: str) -> Path:
    """Checks that the file ``path`` can be written (its folder exists or can be created).

    Raises:
        IsADirectoryError: ``path`` is a folder.
        NotADirectoryError: One of its ancestors is a file.
        PermissionError: Its folder is not writable, or ``path`` exists and is read-only.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{key} {path} is a folder, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise PermissionError(
                f"{key} {path} is not writable (permission denied or a read-only file system)"
            )
        return path
    anchor = _check_parent_chain(path.parent, path, key)
    _check_writable(anchor, path, key)
    return path

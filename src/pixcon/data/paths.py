"""Path checks that say what is wrong: missing, or a folder where a file belongs (or the reverse)."""

from __future__ import annotations

from pathlib import Path


def require_file(path: str | Path, what: str) -> Path:
    """Returns `path` if it is a file.

    Args:
        path: The path to check.
        what: What the file is, for the message (e.g. ``"id list"``, ``"classes file"``).

    Raises:
        IsADirectoryError: `path` is a folder (the message says so).
        FileNotFoundError: Nothing is at `path`.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    raise FileNotFoundError(f"{what} {path} not found")


def require_dir(path: str | Path, what: str) -> Path:
    """Returns `path` if it is a folder.

    Args:
        path: The path to check.
        what: What the folder is, for the message (e.g. ``"image folder"``).

    Raises:
        NotADirectoryError: `path` is a file (the message says so).
        FileNotFoundError: Nothing is at `path`.
    """
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder")
    raise FileNotFoundError(f"{what} {path} not found")

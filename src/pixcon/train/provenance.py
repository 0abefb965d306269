"""What a run was made from: resolved config, data ids, package versions and the git commit.

Saved as ``run.json`` in the run directory and inside every checkpoint, so a result can be traced
back to its inputs, and ``--resume`` can refuse to continue on different data.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PACKAGES = (
    "pixcon",
    "torch",
    "torchvision",
    "segmentation-models-pytorch",
    "timm",
    "lightning",
    "numpy",
    "pillow",
)


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 of the ids in order, one per line (independent of how they were stored)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode())
        h.update(b"\n")
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions; None for a package that is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: pixcon's source), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        # pixcon's own source must be tracked there: an installed copy inside some other project's
        # checkout (a .venv in a repository) must not report that project's commit.
        subprocess.run(
            ["git", "ls-files", "--error-unmatch", Path(__file__).name],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            timeout=10,
            check=True,
        )
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None  # not a checkout (installed wheel) or no git
    return {"commit": commit, "dirty": bool(status.strip())}


def run_metadata(
    config: Mapping[str, Any], ids: Mapping[str, list[str]], files: Iterable[str | Path] = ()
) -> dict[str, Any]:
    """Provenance of a run.

    Args:
        config: The resolved config (``to_dict(cfg)``).
        ids: Sample ids per role, e.g. ``{"labeled": [...], "val": [...]}``; stored as count + digest.
        files: Split files to hash (e.g. ``data.labeled_split``).
    """
    return {
        "config": dict(config),
        "data": {role: {"count": len(v), "sha256": ids_digest(v)} for role, v in ids.items()},
        "files": {str(f): file_digest(f) for f in files},
        "packages": package_versions(),
        "git": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": list(sys.argv),
    }

"""The checkpoint format: atomic writes, checked reads, and the migration of older formats.

A checkpoint is a plain dict loadable with ``torch.load(..., weights_only=True)``::

    {"format_version", "kind", "model", "objective", "optimizer", "scheduler", "step", "config",
     "metrics", "num_classes", "in_channels", "class_names", "ignore_index", "domains", "rng", ...}

``domains`` describes every dataset of the run, the primary first (one entry for a single-dataset
run; see :func:`domain_record`); the top-level ``num_classes``, ``class_names`` and
``ignore_index`` are the primary's. ``model`` is a :class:`~pixcon.models.Segmenter` state dict; a
run of several domains has per-domain batch norm and segmentation heads inside it
(:mod:`pixcon.models.multidomain`).

Writes go to a temporary file that is fsynced and renamed, so a crash leaves the old file or the
new one, never half of one. Training (``pixcon.train``) writes checkpoints and the inference layer
(``pixcon.inference``) reads them; this module imports neither.

Format versions: 1 (before the domain list; a multi-domain network was a wrapper with keys
``segmenter.*``, ``heads.<d>.*`` and ``image_projection.*``), 2 (now). :func:`load_checkpoint`
migrates version 1 on reading, so old runs evaluate as they did.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pixcon.config import default_domain_name

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
REQUIRED_KEYS = ("format_version", "model", "step", "config")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or of the wrong format."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """Nothing at a checkpoint's path (a missing path: exit status 2 on the command line)."""


class CheckpointIsADirectoryError(CheckpointError, IsADirectoryError):
    """A folder where a checkpoint file belongs."""


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
    if path.is_dir():
        hint = f" ({path / 'last.pt'}?)" if (path / "last.pt").is_file() else ""
        raise CheckpointIsADirectoryError(f"checkpoint {path} is a folder, not a file{hint}")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warnings about foreign files
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, i.e. running whatever code the file holds:
        # never pass that on. A pixcon checkpoint holds tensors and plain values only.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a pickle torch.save wrote: another file type, or damaged
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated, or not a checkpoint at all (not a file "
                "torch.save wrote)"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is not a pixcon checkpoint: it holds Python objects that a pixcon "
            f"checkpoint never contains (a {found.group(1)}), and such a file is not loaded (it could run code)"
        ) from None
    except Exception as err:  # truncated zip, empty file, text, ...: torch raises several types
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {_first_line(err)})"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"checkpoint {path} is not a pixcon checkpoint (missing {missing})")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format_version']}, newer than {FORMAT_VERSION}"
        )
    return migrate(state)


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else "empty file or no data"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def domain_record(
    name: str,
    data: dict[str, Any],
    num_classes: int,
    class_names: Sequence[str],
    ignore_index: int,
    in_channels: int,
) -> dict[str, Any]:
    """One entry of a checkpoint's ``domains`` (JSON-safe); ``data`` is the domain's data section."""
    return {
        "name": name,
        "num_classes": int(num_classes),
        "class_names": list(class_names),
        "ignore_index": int(ignore_index),
        "in_channels": int(in_channels),
        "data": dict(data),
    }


def migrate(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of an older format as the current one (a new dict; ``state`` is unchanged).

    Version 1 -> 2: a multi-domain checkpoint has its wrapper keys renamed (``segmenter.X`` ->
    ``X``, ``heads.<d>.Y`` -> ``net.segmentation_head.heads.<d>.Y``) and its image head dropped (the
    regulariser's part, not the network's: only training used it), and the removed objective
    ``multidomain`` of its config reads ``ce`` (per-domain cross-entropy, what it trained the network
    with). A checkpoint without ``domains`` (version 1, or one written by hand) gets its single
    domain's entry from its top-level fields.
    """
    state = dict(state)
    if int(state["format_version"]) < 2:
        config = {**state["config"], "train": dict(state["config"].get("train", {}))}
        if config["train"].get("objective") == "multidomain":
            config["train"]["objective"] = "ce"
        if state.get("kind") == "multidomain":
            state["kind"] = "ce"
        state["config"] = config
        if state.get("domains"):
            model = {}
            for key, value in state["model"].items():
                if key.startswith("segmenter."):
                    model[key[len("segmenter.") :]] = value
                elif key.startswith("heads."):
                    model[f"net.segmentation_head.{key}"] = value
                # image_projection.*: the old wrapper's image head, not part of the network
            state["model"] = model
        state["format_version"] = 2
    if not state.get("domains") and "num_classes" in state:
        data = state["config"].get("data", {})
        num_classes = int(state["num_classes"])
        state["domains"] = [
            domain_record(
                default_domain_name(str(data.get("root", "data"))),
                data,
                num_classes,
                state.get("class_names") or [f"class_{k}" for k in range(num_classes)],
                int(state.get("ignore_index", 255)),
                int(state.get("in_channels") or 3),
            )
        ]
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

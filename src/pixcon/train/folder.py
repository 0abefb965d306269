"""A run folder belongs to one run: what a run may find in ``train.out_dir``, and the lock.

Before anything expensive (:func:`check_run_folder`, every process):

* the folder must be writable (or creatable), and not lie under a file;
* ``train.init_from`` must not lie inside it (a run would overwrite the checkpoint it starts from);
* ``--resume`` needs a loadable checkpoint there (``last.pt``, or ``previous.pt``): nothing to
  resume from is an error, not a fresh start;
* a fresh run refuses a folder that holds another run's files (:data:`RUN_FILES`) unless
  ``train.overwrite`` (``--overwrite``) allows it to delete them.

When the run starts (:func:`claim_run_folder`, rank 0 only): the lock file ``pixcon.lock`` is
taken (holder's host name and process id, created atomically), so a second process cannot write
the same folder; a lock left by a process of this host that no longer runs is replaced with a
warning, one of another host is reported, never broken. Then ``--overwrite`` deletes the old
run's files, and temporary checkpoint files left by a killed write are removed. The lock is
removed when the run ends, also on errors (:meth:`RunFolderLock.release`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixcon.checkpoint import CheckpointError, latest_good_checkpoint, load_checkpoint
from pixcon.config import ConfigError, RunConfig
from pixcon.inference.outputs import check_output_dir

log = logging.getLogger(__name__)

LOCK_NAME = "pixcon.lock"
CHECKPOINTS = ("last.pt", "previous.pt")
# A run's own files: a fresh run refuses a folder holding any of them; --overwrite deletes them.
RUN_FILES = ("last.pt", "previous.pt", "best.pt", "nonfinite.pt", "metrics.csv", "final.json", "config.yaml")
RUN_GLOBS = ("run*.json",)
RUN_FOLDERS = ("tensorboard",)
TEMP_GLOB = ".*.pt.*.tmp"  # pixcon.checkpoint.save_checkpoint's temporary files


class RunFolderError(FileExistsError):
    """``train.out_dir`` holds another run, or another process is writing it (exit status 2)."""


def run_files(out: Path) -> list[Path]:
    """The files and folders of a run in ``out`` (see :data:`RUN_FILES`), in a stable order."""
    if not out.is_dir():
        return []
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    found += sorted(p for pattern in RUN_GLOBS for p in out.glob(pattern) if p.is_file())
    found += [out / name for name in RUN_FOLDERS if (out / name).exists()]
    return found


def _ways_out(out: Path) -> str:
    return (
        f"continue that run with --resume, or replace it with --overwrite (train.overwrite: true; deletes "
        f"its checkpoints, metrics.csv, final.json, run*.json and tensorboard/ in {out}), or pick another --out"
    )


def check_run_folder(cfg: RunConfig, resume: bool) -> tuple[Path, dict[str, Any]] | None:
    """The read-only checks of ``train.out_dir`` before a run starts (every process runs them, so
    every process fails alike); returns the checkpoint ``--resume`` continues from (or None).

    Raises:
        NotADirectoryError, PermissionError: The folder lies under a file, is a file, or cannot
            be written.
        ConfigError: ``train.init_from`` lies inside the folder.
        FileNotFoundError: ``--resume`` and no checkpoint in the folder.
        CheckpointError: ``--resume`` and every checkpoint in the folder is unreadable.
        RunFolderError: A fresh run into a folder holding another run, without ``train.overwrite``.
    """
    t = cfg.train
    out = Path(t.out_dir)
    check_output_dir(out, "train.out_dir")
    if t.init_from and _inside(Path(t.init_from), out):
        raise ConfigError(
            f"train.init_from {t.init_from} lies inside train.out_dir {out}: the run would overwrite the "
            "checkpoint it starts from; write the new run to another --out"
        )
    if resume:
        if t.overwrite:
            log.info("--resume continues the run in %s; train.overwrite is ignored", out)
        return _resume_checkpoint(out)
    existing = run_files(out)
    if existing and not t.overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in existing)
        raise RunFolderError(f"train.out_dir {out} holds another run ({names}); {_ways_out(out)}")
    return None


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is one of the files a run in ``folder`` writes or ``--overwrite`` deletes:
    directly in it, or in its run subfolders (a checkpoint in a subfolder of another run is not)."""
    try:
        parent, home = path.resolve().parent, folder.resolve()
    except OSError:
        return False
    return parent == home or any(parent.is_relative_to(home / name) for name in RUN_FOLDERS)


def _resume_checkpoint(out: Path) -> tuple[Path, dict[str, Any]]:
    paths = [out / name for name in CHECKPOINTS]
    present = [p for p in paths if p.exists()]
    if not present:
        raise FileNotFoundError(
            f"--resume: no checkpoint in {out} ({' or '.join(CHECKPOINTS)}) to resume from; "
            "start the run without --resume"
            + (" (with --overwrite: the folder holds an earlier run's files)" if run_files(out) else "")
        )
    found = latest_good_checkpoint(paths)
    if found is None:
        problems = []
        for p in present:
            try:
                load_checkpoint(p)
            except CheckpointError as err:
                problems.append(str(err))
        raise CheckpointError(
            f"--resume: no usable checkpoint in {out}: {'; '.join(problems)}. Nothing to resume from: "
            "start afresh with --overwrite (deletes them), or restore a checkpoint"
        )
    return found


# ------------------------------------------------------------------------------------------- lock


@dataclass
class RunFolderLock:
    """The lock of a run folder held by this process; :meth:`release` removes it (and the folder,
    if this run created it and left it empty)."""

    path: Path
    token: str  # the lock file's content, to remove only our own lock
    created_folder: bool = False

    def release(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.read_text() == self.token:
                self.path.unlink()
        if self.created_folder:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only if empty: a run that failed before writing anything


def _holder(path: Path) -> dict[str, Any] | None:
    """The lock's content, or None if it cannot be read (being written, or not one of ours)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_atomically(path: Path, text: str) -> bool:
    """Creates ``path`` holding ``text`` only if it does not exist; False if it does.

    The content is written to a temporary file first and hard-linked into place, so no reader
    ever sees a half-written lock; file systems without hard links fall back to ``O_EXCL``.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network or FUSE file systems)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def acquire_lock(out: Path) -> RunFolderLock:
    """Takes ``out/pixcon.lock`` for this process (creating ``out``).

    Raises:
        RunFolderError: Another process holds the lock (running on this host, or on another
            host, whose processes cannot be checked from here); the message names it.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    host = socket.gethostname()
    token = json.dumps(
        {
            "host": host,
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        }
    )
    for _ in range(3):
        if _create_atomically(path, token):
            return RunFolderLock(path, token, created_folder=created)
        holder = _holder(path)
        if holder is None:
            raise RunFolderError(
                f"train.out_dir {out} is locked by {path}, which cannot be read (another run is taking "
                f"it, or it is not pixcon's); if no run writes {out}, delete {path}"
            )
        who = f"process {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"
        try:
            pid = int(holder.get("pid", 0))
        except (TypeError, ValueError):
            pid = 0  # not a process id: no process holds it
        if holder.get("host") == host and not pid_alive(pid):
            log.warning(
                "%s: removing a stale lock of %s, which no longer runs (a run that was killed)", path, who
            )
            if _holder(path) == holder:  # still the stale one, not a lock taken meanwhile
                path.unlink(missing_ok=True)
            continue
        if holder.get("host") == host:
            raise RunFolderError(
                f"train.out_dir {out} is being written by {who}: two processes must not write one run "
                f"folder; wait for it to finish, or pick another --out (if that process is no pixcon run, "
                f"the lock is stale: delete {path})"
            )
        raise RunFolderError(
            f"train.out_dir {out} is locked by {who}, another machine, whose processes cannot be checked "
            f"from here; if that run is no longer running, delete {path}; otherwise pick another --out"
        )
    raise RunFolderError(f"train.out_dir {out}: could not take the lock {path}; another run keeps taking it")


def claim_run_folder(cfg: RunConfig, resume: bool) -> RunFolderLock:
    """Rank 0 takes the run folder: the lock, then ``--overwrite``'s deletion and the removal of
    stray temporary checkpoint files. Call :meth:`RunFolderLock.release` when the run ends."""
    out = Path(cfg.train.out_dir)
    lock = acquire_lock(out)
    try:
        if not resume and cfg.train.overwrite:
            old = run_files(out)
            if old:
                log.info(
                    "--overwrite: deleting the earlier run's files in %s: %s",
                    out,
                    ", ".join(p.name for p in old),
                )
            for p in old:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        for tmp in sorted(out.glob(TEMP_GLOB)):
            log.info("removing %s, a temporary checkpoint file left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock

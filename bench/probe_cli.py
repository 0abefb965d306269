"""Probe the command line as a new user would (issue 18): bad input and faults, each through
``python -m pixcon.cli`` in a subprocess, checked for its exit status and a message fragment.

Cases: the 13 cases issue 18 found worse than an error message (16-bit images, run folders, ids,
ignored-only crops, tracebacks), its 17 weak cases, and more of our own. Every case names what it
expects; a case passes when the exit status is the expected one, every expected fragment is in
its output (stdout + stderr), no forbidden fragment is (``Traceback`` always), and its check of
the files it leaves (if any) holds. The data are tiny folders this script writes in a temporary
folder; every process runs with one thread.

Read-only folders need a user that permissions apply to: as root the script mounts a read-only
bind mount over the folder (and reports the case as skipped if it cannot).

Run (from the repository root)::

    .venv/bin/python bench/probe_cli.py                 # every case, two at a time
    .venv/bin/python bench/probe_cli.py --jobs 1        # one at a time
    .venv/bin/python bench/probe_cli.py --only lock     # the cases whose name contains "lock"

Prints a markdown table (case, expected, got, ok) and writes ``bench/results/probe_cli.json``.
Exit status 0 when every case passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "--set", "model.encoder=tu-test_resnet", "--set", "model.proj_dim=8", "--set", "data.image_size=32",
    "--set", "data.batch_size=2", "--set", "train.eval_every=2", "--quiet",
]  # fmt: skip


@dataclass
class Case:
    """One probe: argv (``{name}`` placeholders filled from the workspace), the expected exit
    status and output fragments, and optionally a setup, a check of the files afterwards, and a
    condition after which the process gets SIGINT."""

    name: str
    group: str  # "issue-13" (worse than an error), "issue-17" (weak), "own"
    argv: list[str]
    code: int
    expect: list[str]
    forbid: list[str] = field(default_factory=list)
    setup: Callable[[], None] | None = None
    check: Callable[[], str | None] | None = None
    interrupt_when: Callable[[], bool] | None = None
    read_only: str | None = None  # a workspace folder made read-only for the case
    needs: str | None = None  # the name of a case that must run first (with --jobs > 1)


# ----------------------------------------------------------------------------------------- data


def write_folder(
    root: Path, counts: dict[str, int], size: int = 32, seed: int = 0, classes: bool = True
) -> Path:
    """Noisy coloured rectangles, index masks of 3 classes, splits/<split>.txt, classes.yaml."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, size=(3, 3))
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        ids = []
        for i in range(n):
            mask = np.zeros((size, size), dtype=np.uint8)
            for c in (1, 2):
                y0, x0 = rng.integers(0, size // 2, size=2)
                mask[y0 : y0 + size // 3, x0 : x0 + size // 3] = c
            image = np.clip(colors[mask] + rng.integers(-20, 20, size=(size, size, 3)), 0, 255)
            sid = f"{split}_{i:03d}"
            Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"{sid}.png")
            Image.fromarray(mask).save(root / "masks" / f"{sid}.png")
            ids.append(sid)
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    if classes:
        (root / "classes.yaml").write_text(
            yaml.safe_dump({"classes": ["c0", "c1", "c2"], "ignore_index": 255})
        )
    return root


def mri_slice(seed: int, size: int = 32) -> np.ndarray:
    """(size, size) uint16 nested ellipses at 12-bit grey levels, like a T1 head slice."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    out = np.zeros((size, size), dtype=np.uint16)
    rng = np.random.default_rng(seed)
    for k, level in enumerate((37, 410, 1290, 2047, 3001, 4095), start=1):
        r = 1.0 - 0.14 * k + rng.uniform(-0.02, 0.02)
        out[(yy / r) ** 2 + (xx / (0.8 * r)) ** 2 <= 1] = level
    return out


def write_mri(root: Path) -> Path:
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in range(10):
        split = "train" if i < 6 else "val" if i < 8 else "test"
        image = mri_slice(i)
        Image.fromarray(image).save(root / "images" / f"s{i}.png")  # I;16
        mask = np.where(image >= 2047, 2, np.where(image > 0, 1, 0)).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
        splits[split].append(f"s{i}")
    for split, ids in splits.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": ["air", "tissue", "core"]}))
    return root


def write_png16_colour(path: Path, size: int = 32) -> None:
    """A 16-bit-per-sample RGB PNG (Pillow cannot write one)."""
    rgb = np.random.default_rng(0).integers(0, 4096, (size, size, 3)).astype(">u2")
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------ workspace


class Workspace:
    """The temporary folder of a probe: datasets, a trained checkpoint, and helpers for cases."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self.paths: dict[str, str] = {"w": str(root)}

    def p(self, name: str) -> Path:
        return self.root / name

    def cli(self, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command(argv), env=self.env, capture_output=True, text=True, timeout=timeout)

    def must(self, argv: list[str]) -> None:
        done = self.cli(argv)
        if done.returncode != 0:
            raise RuntimeError(f"setup {' '.join(argv)} failed:\n{done.stderr[-3000:]}")

    def prepare(self) -> None:
        d = write_folder(self.p("data"), {"train": 8, "val": 4, "test": 4})
        write_mri(self.p("mri"))
        # a dataset whose training masks are 255 except a 4x4 corner
        shutil.copytree(d, self.p("mostly255"))
        for i in range(8):
            mask = np.full((32, 32), 255, dtype=np.uint8)
            mask[:4, :4] = 1
            Image.fromarray(mask).save(self.p("mostly255") / "masks" / f"train_{i:03d}.png")
        # the base run every inference case uses, and a pretraining run for --init-from
        self.must(
            ["train", "--data-root", str(d), "--out", str(self.p("base")), "--steps", "2", *FAST,
             "--set", "train.checkpoint_every=1", "--set", "train.log_every=1"]
        )  # fmt: skip
        self.must(["pretrain", "--data-root", str(d), "--out", str(self.p("pre")), "--steps", "1", *FAST])
        (self.p("labeled.txt")).write_text("train_000\ntrain_001\ntrain_002\n")
        self.must(
            ["train", "--data-root", str(d), "--out", str(self.p("labeled_run")), "--steps", "1", *FAST,
             "--labeled-split", str(self.p("labeled.txt"))]
        )  # fmt: skip
        self.p("file.txt").write_text("a regular file\n")
        rng = np.random.default_rng(1)
        for name in ("good1.png", "good2.png"):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(self.p(name))
        self.p("broken.png").write_bytes(self.p("good1.png").read_bytes()[:100])
        Image.fromarray(mri_slice(0)).save(self.p("slice16.png"))
        Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(self.p("big.png"))
        self.paths.update(
            {k: str(self.p(k)) for k in ("data", "mri", "mostly255", "base", "pre", "file.txt")}
        )

    def copy_run(self, name: str, source: str = "base") -> Path:
        dest = self.p(name)
        shutil.copytree(self.p(source), dest)
        return dest

    def variant(self, name: str, edit: Callable[[Path], None], source: str = "data") -> Path:
        """A copy of a dataset with ``edit`` applied."""
        dest = self.p(name)
        shutil.copytree(self.p(source), dest)
        edit(dest)
        return dest


# `python -m pixcon.cli ARGV`, with Python's own SIGINT handler even where this script was started
# with SIGINT ignored (a background job of a shell without job control), as in a terminal.
BOOT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'pixcon'; runpy.run_module('pixcon.cli', run_name='__main__', alter_sys=True)"
)


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", BOOT, *argv]


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[bool]:
    """``folder`` read-only for the processes started meanwhile; yields False when that cannot be
    arranged (root without mount rights)."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield True
        finally:
            folder.chmod(mode)
        return
    ok = (
        subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
        and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode
        == 0
    )
    try:
        yield ok
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


# ---------------------------------------------------------------------------------------- cases


def cases(ws: Workspace) -> list[Case]:
    w = ws.root
    train = ["train", "--data-root", "{data}", *FAST]

    def rows_once(run: str) -> Callable[[], str | None]:
        def check() -> str | None:
            with (w / run / "metrics.csv").open() as f:
                rows = [(r[0], r[1]) for r in list(csv.reader(f))[1:]]
            return (
                None
                if len(rows) == len(set(rows))
                else f"{len(rows) - len(set(rows))} repeated metrics.csv rows"
            )

        return check

    def value_range(run: str) -> Callable[[], str | None]:
        def check() -> str | None:
            got = yaml.safe_load((w / run / "config.yaml").read_text())["data"]["value_range"]
            return None if got == [0.0, 4095.0] else f"config.yaml data.value_range is {got}"

        return check

    def exists(*names: str, absent: tuple[str, ...] = ()) -> Callable[[], str | None]:
        def check() -> str | None:
            missing = [n for n in names if not (w / n).exists()]
            present = [n for n in absent if (w / n).exists()]
            return None if not missing and not present else f"missing {missing}, should be gone {present}"

        return check

    def same_bytes(path: str) -> tuple[Callable[[], None], Callable[[], str | None]]:
        saved: dict[str, bytes] = {}

        def setup() -> None:
            saved["b"] = (w / path).read_bytes()

        def check() -> str | None:
            return None if (w / path).read_bytes() == saved["b"] else f"{path} changed"

        return setup, check

    def dup_labeled() -> None:
        (w / "dup.txt").write_text("train_000\ntrain_001\ntrain_000\n")

    def two_files(d: Path) -> None:
        Image.open(d / "images" / "train_001.png").save(d / "images" / "train_001.tif")

    def stray(d: Path) -> None:
        (d / "classes.yaml").unlink()
        mask = np.asarray(Image.open(d / "masks" / "train_002.png")).copy()
        mask[0, 0] = 200
        Image.fromarray(mask).save(d / "masks" / "train_002.png")

    def empty_train(d: Path) -> None:
        (d / "splits" / "train.txt").write_text("")

    def same_splits(d: Path) -> None:
        for s in ("val", "test"):
            shutil.copy(d / "splits" / "train.txt", d / "splits" / f"{s}.txt")

    def no_splits(d: Path) -> None:
        shutil.rmtree(d / "splits")

    def no_val(d: Path) -> None:
        (d / "splits" / "val.txt").unlink()

    def colour16(d: Path) -> None:
        write_png16_colour(d / "images" / "train_003.png")

    def live_lock() -> None:
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        HOLDERS.append(holder)
        (w / "locked").mkdir()
        (w / "locked" / "pixcon.lock").write_text(
            json.dumps({"host": socket.gethostname(), "pid": holder.pid, "started": "now", "command": "x"})
        )

    def stale_lock() -> None:
        ws.copy_run("stale")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (w / "stale" / "pixcon.lock").write_text(
            json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "then", "command": "x"})
        )

    def foreign_lock() -> None:
        (w / "foreign").mkdir()
        (w / "foreign" / "pixcon.lock").write_text(
            json.dumps({"host": "node-17.cluster", "pid": 4242, "started": "then", "command": "x"})
        )

    def corrupt_both() -> None:
        run = ws.copy_run("corrupt")
        for name in ("last.pt", "previous.pt"):
            (run / name).write_bytes((run / name).read_bytes()[:200])

    def killed_mid_write(name: str) -> Callable[[], None]:
        def setup() -> None:
            # as a kill leaves a run: rows logged after its checkpoint, and half a checkpoint file
            run = ws.copy_run(name)
            shutil.copy(run / "previous.pt", run / "last.pt")  # step 1; metrics.csv has step 2 too
            (run / "final.json").unlink()
            (run / ".last.pt.x7k2q9.tmp").write_bytes(b"half a checkpoint")

        return setup

    def foreign_pickle() -> None:
        subprocess.run(
            [sys.executable, "-c", "import torch, collections\n"
             "class Foo: pass\n"
             f"torch.save({{'model': Foo()}}, {str(w / 'foreign.pt')!r})"],
            env=ws.env, check=True, capture_output=True,
        )  # fmt: skip

    def yaml_nan() -> None:
        (w / "nan.yaml").write_text("optim:\n  lr: .nan\n")

    keep_pre, pre_unchanged = same_bytes("pre/last.pt")
    keep_base, base_unchanged = same_bytes("base/last.pt")

    return [
        # ---- issue 18: the 13 cases worse than an error message
        Case("16bit: training measures the range, config keeps it", "issue-13",
             ["train", "--data-root", "{mri}", "--out", "{w}/mri_run", "--steps", "1", *FAST],
             0, ["train: val mIoU"], check=value_range("mri_run")),
        Case("16bit: evaluate scales by the checkpoint's range", "issue-13",
             ["evaluate", "{w}/mri_run/last.pt", "--split", "test", "--json", "--quiet"], 0, ['"miou"'],
             needs="16bit: training measures the range, config keeps it"),
        Case("16bit: predict scales by the checkpoint's range", "issue-13",
             ["predict", "{w}/mri_run/last.pt", "{w}/slice16.png", "--out", "{w}/pred16", "--quiet"], 0,
             ["slice16_mask.png"], check=exists("pred16/slice16_mask.png"),
             needs="16bit: training measures the range, config keeps it"),
        Case("run into a finished run's folder is refused", "issue-13",
             [*train, "--out", "{base}", "--steps", "1"], 2,
             ["holds another run", "--resume", "--overwrite"], setup=keep_base, check=base_unchanged),
        Case("finetune --init-from pre/last.pt --out pre is refused", "issue-13",
             ["finetune", "--data-root", "{data}", "--init-from", "{pre}/last.pt", "--out", "{pre}", "--steps", "1",
              *FAST], 2, ["lies inside train.out_dir"], setup=keep_pre, check=pre_unchanged),
        Case("a second process into a locked folder", "issue-13",
             [*train, "--out", "{w}/locked", "--steps", "1"], 2, ["is being written by process"], setup=live_lock),
        Case("duplicate ids in a labeled split", "issue-13",
             [*train, "--out", "{w}/dup_run", "--steps", "1", "--labeled-split", "{w}/dup.txt"], 2,
             ["train_000"], setup=dup_labeled),
        Case("an id with two image files (png and tif)", "issue-13",
             ["train", "--data-root", "{w}/twofiles", *FAST, "--out", "{w}/two_run", "--steps", "1"], 2,
             ["train_001.png", "train_001.tif"], setup=lambda: ws.variant("twofiles", two_files) and None),
        Case("crops with only ignored pixels: no NaN at step 0", "issue-13",
             ["train", "--data-root", "{mostly255}", "--out", "{w}/ign_run", "--steps", "4", *FAST,
              "--set", "data.scale_min=0.1"], 0, ["train: val mIoU"], check=exists("ign_run/last.pt")),
        Case("train --out under a regular file", "issue-13",
             [*train, "--out", "{w}/file.txt/run", "--steps", "1"], 2, ["file.txt is a file, not a folder"]),
        Case("evaluate --out under a regular file (before scoring)", "issue-13",
             ["evaluate", "{base}/last.pt", "--split", "nosuch", "--out", "{w}/file.txt/s.json", "--quiet"], 2,
             ["--out", "file.txt is a file, not a folder"]),
        Case("predict --out under a regular file", "issue-13",
             ["predict", "{base}/last.pt", "{w}/good1.png", "--out", "{w}/file.txt/p", "--quiet"], 2,
             ["file.txt is a file, not a folder"]),
        Case("train --out in a read-only folder", "issue-13",
             [*train, "--out", "{w}/ro/run", "--steps", "1"], 2, ["is not writable"],
             setup=lambda: (w / "ro").mkdir(), read_only="ro"),
        Case("evaluate --out in a read-only folder", "issue-13",
             ["evaluate", "{base}/last.pt", "--out", "{w}/ro2/s.json", "--quiet"], 2, ["is not writable"],
             setup=lambda: (w / "ro2").mkdir(), read_only="ro2"),
        Case("--resume into a read-only run folder", "issue-13",
             [*train, "--out", "{w}/ro_run", "--steps", "3", "--resume"], 2, ["is not writable"],
             setup=lambda: ws.copy_run("ro_run") and None, read_only="ro_run"),
        Case("train.accelerator=cuda without a GPU", "issue-13",
             [*train, "--out", "{w}/cuda_run", "--set", "train.accelerator=cuda"], 2,
             ["train.accelerator: 'cuda' needs a CUDA GPU"]),
        # ---- issue 18: the 17 weak cases
        Case("a stray mask value (a 201-class head)", "issue-17",
             ["train", "--data-root", "{w}/stray", *FAST, "--out", "{w}/stray_run", "--steps", "1"], 2,
             ["201-class head"], setup=lambda: ws.variant("stray", stray) and None),
        Case("data check: an empty train split", "issue-17",
             ["data", "check", "--root", "{w}/emptytrain"], 1, ["is empty"],
             setup=lambda: ws.variant("emptytrain", empty_train) and None),
        Case("data check: identical train/val/test", "issue-17",
             ["data", "check", "--root", "{w}/samesplits"], 1, ["list the same"],
             setup=lambda: ws.variant("samesplits", same_splits) and None),
        Case("data check: no splits/ folder", "issue-17",
             ["data", "check", "--root", "{w}/nosplits"], 1, ["no splits/ folder"],
             setup=lambda: ws.variant("nosplits", no_splits) and None),
        Case("a mistyped data.val_split", "issue-17",
             [*train, "--out", "{w}/vall_run", "--set", "data.val_split=vall"], 2, ["data.val_split 'vall'"]),
        Case("a missing default val split warns under --quiet", "issue-17",
             ["-q", "train", "--data-root", "{w}/noval", *FAST, "--out", "{w}/noval_run", "--steps", "1"], 0,
             ["WARNING", "training without validation"], setup=lambda: ws.variant("noval", no_val) and None),
        Case("an infinite learning rate", "issue-17",
             [*train, "--out", "{w}/inf_run", "--set", "optim.lr=.inf"], 2, ["optim.lr: expected a finite number"]),
        Case("a folder given as the labeled split", "issue-17",
             [*train, "--out", "{w}/fold_run", "--labeled-split", "{w}"], 2, ["is a folder"]),
        Case("a folder given as the checkpoint", "issue-17",
             ["evaluate", "{base}", "--quiet"], 2, ["is a folder, not a file"]),
        Case("torch's weights_only advice never reaches the user", "issue-17",
             ["evaluate", "{w}/foreign.pt", "--quiet"], 1, ["is not a pixcon checkpoint"],
             forbid=["weights_only", "trust"], setup=foreign_pickle),
        Case("exit codes as documented: a missing checkpoint is 2", "issue-17",
             ["evaluate", "{w}/none.pt", "--quiet"], 2, ["checkpoint not found"]),
        Case("--resume with both checkpoints corrupt", "issue-17",
             [*train, "--out", "{w}/corrupt", "--steps", "3", "--resume"], 1,
             ["no usable checkpoint", "last.pt is corrupt", "previous.pt is corrupt"], setup=corrupt_both,
             check=lambda: None if (w / "corrupt" / "last.pt").stat().st_size == 200 else "a fresh run replaced it"),
        Case("--resume with another objective", "issue-17",
             ["pretrain", "--data-root", "{data}", *FAST, "--out", "{w}/objrun", "--steps", "3", "--resume"], 1,
             ["is a run of objective 'ce'", "this run trains 'contrast'"],
             setup=lambda: ws.copy_run("objrun") and None),
        Case("one bad file in a multi-file predict", "issue-17",
             ["predict", "{base}/last.pt", "{w}/good1.png", "{w}/broken.png", "{w}/good2.png", "--out", "{w}/pb",
              "--quiet"], 1, ["2 of 3 images written", "skipped", "broken.png"],
             check=exists("pb/good1_mask.png", "pb/good2_mask.png")),
        Case("Ctrl-C during training", "issue-17",
             [*train, "--out", "{w}/sigint_run", "--steps", "60", "--set", "train.checkpoint_every=2"], 130,
             ["interrupted at step", "continue with --resume"], interrupt_when=lambda: (w / "sigint_run" / "last.pt").exists(),
             check=exists("sigint_run/last.pt", absent=("sigint_run/pixcon.lock", "sigint_run/final.json"))),
        Case("a temporary checkpoint file left by a kill", "issue-17",
             [*train, "--out", "{w}/killed", "--steps", "2", "--resume"], 0, ["train: val mIoU"],
             setup=killed_mid_write("killed"), check=exists(absent=("killed/.last.pt.x7k2q9.tmp",))),
        Case("metrics.csv rows are not repeated after a resume", "issue-17",
             [*train, "--out", "{w}/killed2", "--steps", "2", "--set", "train.log_every=1", "--resume"], 0,
             ["train: val mIoU"], setup=killed_mid_write("killed2"), check=rows_once("killed2")),
        Case("data check: crops with only ignored pixels", "issue-17",
             ["data", "check", "--root", "{mostly255}", "--set", "data.scale_min=0.1"], 0,
             ["of training crops would hold only ignored pixels"]),
        # ---- our own
        Case("--resume with no checkpoint", "own",
             [*train, "--out", "{w}/nothing", "--steps", "1", "--resume"], 2, ["no checkpoint in"],
             check=exists(absent=("nothing/last.pt",))),
        Case("--resume and --overwrite together", "own",
             [*train, "--out", "{w}/x", "--resume", "--overwrite"], 2, ["not allowed with argument"]),
        Case("a stale lock of this host is replaced", "own",
             [*train, "--out", "{w}/stale", "--steps", "3", "--resume"], 0,
             ["removing a stale lock"], setup=stale_lock, check=exists(absent=("stale/pixcon.lock",))),
        Case("a lock of another host is reported, not broken", "own",
             [*train, "--out", "{w}/foreign", "--steps", "1"], 2, ["node-17.cluster", "another machine"],
             setup=foreign_lock, check=exists("foreign/pixcon.lock")),
        Case("--overwrite replaces the earlier run", "own",
             [*train, "--out", "{w}/over", "--steps", "1", "--overwrite"], 0, ["train: val mIoU"],
             setup=lambda: ws.copy_run("over") and None, check=exists("over/last.pt", absent=("over/previous.pt",))),
        Case("the config file is a folder", "own", ["train", "{w}", "--quiet"], 2, ["is a folder, not a file"]),
        Case("data.root is a file", "own", ["train", "--data-root", "{w}/file.txt", *FAST, "--out", "{w}/r1"], 2,
             ["is a file, not a dataset folder"]),
        Case("--init-from is a folder", "own",
             [*train, "--out", "{w}/r2", "--init-from", "{pre}"], 2, ["is a folder, not a file"]),
        Case("evaluate --out is a folder", "own", ["evaluate", "{base}/last.pt", "--out", "{w}", "--quiet"], 2,
             ["is a folder, not a file"]),
        Case("predict --strict stops at the first bad file", "own",
             ["predict", "{base}/last.pt", "{w}/good1.png", "{w}/broken.png", "{w}/good2.png", "--out", "{w}/ps",
              "--strict", "--quiet"], 2, ["broken.png"], check=exists(absent=("ps/good2_mask.png",))),
        Case("predict with no readable image", "own",
             ["predict", "{base}/last.pt", "{w}/broken.png", "{w}/nope.png", "--out", "{w}/pn", "--quiet"], 2,
             ["none of the 2 images"]),
        Case("predict --device cuda without a GPU", "own",
             ["predict", "{base}/last.pt", "{w}/good1.png", "--out", "{w}/pc", "--device", "cuda", "--quiet"], 2,
             ["no CUDA GPU"]),
        Case("a 16-bit image into an 8-bit checkpoint", "own",
             ["predict", "{base}/last.pt", "{w}/slice16.png", "--out", "{w}/p16", "--quiet"], 2,
             ["is 16-bit (uint16), not 8-bit"]),
        Case("a 16-bit colour PNG is refused, not truncated", "own",
             ["train", "--data-root", "{w}/colour16", *FAST, "--out", "{w}/c16", "--steps", "1"], 2,
             ["16-bit colour PNG"], setup=lambda: ws.variant("colour16", colour16) and None),
        Case("split --out under a file", "own",
             ["split", "--root", "{data}", "--fractions", "0.5", "--out", "{w}/file.txt/s"], 2, ["file.txt"]),
        Case("pseudo-label --out under a file", "own",
             ["pseudo-label", "{w}/labeled_run/last.pt", "--out", "{w}/file.txt/ps", "--quiet"], 2,
             ["file.txt is a file, not a folder"]),
        Case("report --out under a file", "own",
             ["report", "{base}", "--out", "{w}/file.txt/r.html", "--quiet"], 2, ["file.txt is a file"]),
        Case("NaN in a YAML config file", "own", ["train", "{w}/nan.yaml", "--quiet"], 2,
             ["optim.lr: expected a finite number"], setup=yaml_nan),
        Case("an image given as the checkpoint", "own",
             ["evaluate", "{w}/broken.png", "--quiet"], 1, ["is corrupt or truncated, or not a checkpoint"]),
        Case("a truncated checkpoint", "own",
             ["evaluate", "{w}/corrupt/last.pt", "--quiet"], 1, ["last.pt is corrupt or truncated"],
             needs="--resume with both checkpoints corrupt"),
        Case("data.value_range with lo > hi", "own",
             [*train, "--out", "{w}/r3", "--set", "data.value_range=[5, 1]"], 2, ["data.value_range"]),
        Case("train.devices=0", "own", [*train, "--out", "{w}/r4", "--devices", "0"], 2, ["train.devices"]),
        Case("evaluate a split that does not exist", "own",
             ["evaluate", "{base}/last.pt", "--split", "nosuch", "--quiet"], 2, ["nosuch"]),
        Case("diagnose a missing checkpoint", "own", ["diagnose", "{w}/none.pt", "--quiet"], 2,
             ["checkpoint not found"]),
        Case("Ctrl-C during predict", "own",
             ["predict", "{base}/last.pt", "{w}/big.png", "--out", "{w}/pbig", "--window", "64", "--overlap", "0.5",
              "--quiet"], 130, ["pixcon predict: interrupted (Ctrl-C)"],
             interrupt_when=lambda: (w / "pbig").exists()),
        Case("the run stopped by Ctrl-C resumes to its end", "own",
             [*train, "--out", "{w}/sigint_run", "--steps", "60", "--set", "train.checkpoint_every=2", "--resume"],
             0, ["train: val mIoU"], check=exists("sigint_run/final.json", absent=("sigint_run/pixcon.lock",)),
             needs="Ctrl-C during training"),
    ]  # fmt: skip


HOLDERS: list[subprocess.Popen[bytes]] = []


def run_case(ws: Workspace, case: Case) -> dict[str, object]:
    argv = [a.format(**ws.paths) for a in case.argv]
    tic = time.perf_counter()
    note = ""
    if case.setup is not None:
        case.setup()
    with contextlib.ExitStack() as stack:
        if case.read_only is not None and not stack.enter_context(read_only(ws.p(case.read_only))):
            return {"case": case.name, "group": case.group, "expected": case.code, "got": None, "ok": None,
                    "note": "skipped: cannot make a folder read-only here"}  # fmt: skip
        proc = subprocess.Popen(
            command(argv), env=ws.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        if case.interrupt_when is not None:
            deadline = time.monotonic() + 240
            while proc.poll() is None and not case.interrupt_when() and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                time.sleep(0.2)
                proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
    text = out + err
    problems = []
    if proc.returncode != case.code:
        problems.append(f"exit {proc.returncode}")
    problems += [f"missing {frag!r}" for frag in case.expect if frag not in text]
    problems += [f"has {frag!r}" for frag in ["Traceback", *case.forbid] if frag in text]
    if case.check is not None and not problems:
        found = case.check()
        if found:
            problems.append(found)
    note = "; ".join(problems)
    last = [ln for ln in err.strip().splitlines() if ln.strip()]
    return {
        "case": case.name,
        "group": case.group,
        "argv": argv,
        "expected": case.code,
        "got": proc.returncode,
        "ok": not problems,
        "note": note,
        "message": last[-1][:300] if last else "",
        "seconds": round(time.perf_counter() - tic, 1),
    }


def run_all(ws: Workspace, chosen: list[Case], jobs: int) -> list[dict[str, object]]:
    """Runs the cases, ``jobs`` at a time (a case waits for the one it ``needs``); results in order."""
    futures: dict[str, Future[dict[str, object]]] = {}
    done = [0]
    lock = threading.Lock()

    def one(case: Case) -> dict[str, object]:
        if case.needs is not None and case.needs in futures:
            futures[case.needs].result()
        result = run_case(ws, case)
        with lock:
            done[0] += 1
            mark = {True: "ok", False: "FAIL", None: "skip"}[result["ok"]]  # type: ignore[index]
            print(
                f"[{done[0]}/{len(chosen)}] {mark} {case.name} ({result.get('seconds', 0)} s)",
                file=sys.stderr,
            )
        return result

    # A case's dependency comes earlier in the table: submitted, and so started, before it.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for case in chosen:
            futures[case.name] = pool.submit(one, case)
        return [futures[c.name].result() for c in chosen]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the cases whose name contains this text")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--jobs", type=int, default=2, help="cases run at a time, one thread each (default 2)"
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "probe_cli.json"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pixcon-probe-"))
    ws = Workspace(root)
    tic = time.perf_counter()
    results = []
    try:
        print(f"preparing data and three small runs in {root} ...", file=sys.stderr)
        ws.prepare()
        chosen = [c for c in cases(ws) if args.only is None or args.only in c.name]
        results = run_all(ws, chosen, args.jobs)
    finally:
        for holder in HOLDERS:
            holder.kill()
            holder.wait()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    lines = ["| # | group | case | expected | got | ok |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        ok = {True: "ok", False: f"**FAIL** ({r['note']})", None: str(r["note"])}[r["ok"]]  # type: ignore[index]
        lines.append(f"| {i} | {r['group']} | {r['case']} | {r['expected']} | {r['got']} | {ok} |")
    passed = sum(r["ok"] is True for r in results)
    failed = sum(r["ok"] is False for r in results)
    summary = (
        f"{passed} passed, {failed} failed, {len(results) - passed - failed} skipped of {len(results)} cases"
    )
    print("\n".join(lines))
    print(f"\n{summary} ({time.perf_counter() - tic:.0f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    Path(args.out).write_text(
        json.dumps({"machine": machine, "summary": summary, "cases": results}, indent=2) + "\n"
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

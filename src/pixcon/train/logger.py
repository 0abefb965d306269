"""Scalars of a run: ``metrics.csv`` and TensorBoard in the run directory (rank 0 only)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class MetricsLogger:
    """Appends ``(step, key, value)`` rows to ``out_dir/metrics.csv`` and the same scalars to
    ``out_dir/tensorboard``; does nothing when not ``enabled`` (ranks other than 0).

    A run resumed from its checkpoint at step ``resume_step`` first drops the rows logged after that
    step (a killed run logs steps it never checkpointed, and the resumed run logs them again), so
    ``metrics.csv`` holds each step's rows once; TensorBoard purges its events after that step too.
    """

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.csv_path = out_dir / "metrics.csv"
        if enabled and resume_step is not None:
            truncate_metrics(self.csv_path, resume_step)
        purge = None if resume_step is None else resume_step + 1
        self.writer = (
            SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=purge) if enabled else None
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "key", "value"])
            for k, v in values.items():
                w.writerow([step, k, v])
                if self.writer is not None:
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keeps the rows of ``metrics.csv`` up to ``last_step`` (rewritten atomically); returns how many
    rows were dropped (0 when the file does not exist)."""
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    kept = [r for r in body if not r or not r[0].isdigit() or int(r[0]) <= last_step]
    if len(kept) == len(body):
        return 0
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        csv.writer(f).writerows([header, *kept])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(body) - len(kept)

"""Scalars of a run: ``metrics.csv`` and TensorBoard in the run directory (rank 0 only)."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class MetricsLogger:
    """Appends ``(step, key, value)`` rows to ``out_dir/metrics.csv`` and the same scalars to
    ``out_dir/tensorboard``; does nothing when not ``enabled`` (ranks other than 0)."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.csv_path = out_dir / "metrics.csv"
        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard")) if enabled else None

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

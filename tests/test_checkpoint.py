"""Atomic checkpoints: round trip, corrupt files detected, fallback to the previous one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixcon.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    latest_good_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _state(step: int) -> dict:
    return {
        "model": {"w": torch.full((3,), float(step))},
        "step": step,
        "config": {"a": 1},
        "metrics": {"miou": 0.5},
    }


def test_round_trip_is_weights_only_loadable(tmp_path: Path) -> None:
    path = save_checkpoint(_state(3), tmp_path / "sub" / "last.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 3 and raw["format_version"] == FORMAT_VERSION == 2
    assert load_checkpoint(path)["metrics"] == {"miou": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_truncated_and_foreign_files_are_reported(tmp_path: Path) -> None:
    path = save_checkpoint(_state(1), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt or truncated"):
        load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(CheckpointError, match="not a pixcon checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_latest_good_falls_back_to_previous(tmp_path: Path) -> None:
    prev = save_checkpoint(_state(1), tmp_path / "previous.pt")
    last = tmp_path / "last.pt"
    last.write_bytes(b"garbage")
    found = latest_good_checkpoint([last, prev])
    assert found is not None and found[0] == prev and found[1]["step"] == 1
    assert latest_good_checkpoint([tmp_path / "none.pt"]) is None


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = save_checkpoint(_state(1), tmp_path / "last.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({**_state(2), "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_backup_rotation_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    last, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    save_checkpoint(_state(1), last, backup=previous)
    assert not previous.exists()
    save_checkpoint(_state(2), last, backup=previous)
    assert load_checkpoint(last)["step"] == 2 and load_checkpoint(previous)["step"] == 1


def test_a_checkpoint_loads_after_its_encoder_weights_file_is_gone(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """model.encoder_weights initialises a new run only: evaluating, fine-tuning or reporting a
    checkpoint must not need that file again."""
    from pixcon.config import load_config
    from pixcon.inference import load_model
    from pixcon.models import create_segmenter
    from pixcon.train import run_training

    weights = tmp_path / "enc.pt"
    torch.save(create_segmenter(num_classes=3).net.encoder.state_dict(), weights)
    cfg = load_config(
        overrides=[
            f"data.root={tiny_dataset}",
            f"model.encoder_weights={weights}",
            f"train.out_dir={tmp_path / 'run'}",
            "train.steps=1",
            "data.image_size=32",
            "data.batch_size=2",
            "model.proj_dim=16",
            "train.progress=false",
        ]
    )
    run_training(cfg)
    weights.unlink()
    model, state = load_model(tmp_path / "run" / "last.pt")
    for k, v in state["model"].items():
        torch.testing.assert_close(model.state_dict()[k], v)

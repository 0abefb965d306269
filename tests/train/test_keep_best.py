"""train.keep_best (issue 19, checkpoint selection by validation): best.pt holds the step with the
highest validation mIoU (ties keep the earlier), its record survives --resume, --overwrite removes it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import pixcon.train.loop as loop
from pixcon.checkpoint import load_checkpoint
from pixcon.config import load_config
from pixcon.train import run_training
from pixcon.train.loop import best_so_far


def _overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.root={data}",
        "data.image_size=32",
        "data.batch_size=2",
        "model.proj_dim=16",
        "train.steps=6",
        "train.eval_every=1",
        "train.checkpoint_every=3",
        "train.keep_best=true",
        "train.progress=false",
        "optim.name=adamw",
        "optim.lr=0.2",  # a large rate: validation goes up and down (the best is not the last step)
        f"train.out_dir={out}",
        *extra,
    ]


def _val_mious(out: Path) -> dict[int, float]:
    with (out / "metrics.csv").open() as f:
        return {int(r[0]): float(r[2]) for r in list(csv.reader(f))[1:] if r[1] == "val/miou"}


def _first_best(mious: dict[int, float]) -> int:
    top = max(mious.values())
    return min(step for step, v in mious.items() if v == top)


def test_best_so_far_keeps_the_earlier_of_ties() -> None:
    best, improved = best_so_far(None, {"miou": 0.5}, 2)
    assert best == {"step": 2, "miou": 0.5} and improved
    assert best_so_far(best, {"miou": 0.5}, 4) == (best, False)  # a tie: the earlier stays
    assert best_so_far(best, {"miou": 0.4}, 6) == (best, False)
    assert best_so_far(best, {"miou": 0.6}, 8) == ({"step": 8, "miou": 0.6}, True)
    assert best_so_far(best, {"miou": 0.9, "mean_miou": 0.3}, 8) == (best, False)  # several domains: the mean
    assert best_so_far(best, {}, 8) == (best, False)  # nothing scored


def test_best_checkpoint_holds_the_step_with_the_highest_val_miou(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = run_training(load_config(overrides=_overrides(tiny_dataset, out)))
    mious = _val_mious(out)
    assert sorted(mious) == [1, 2, 3, 4, 5, 6]
    step = _first_best(mious)
    assert step < 6  # not simply the last step
    best = load_checkpoint(out / "best.pt")
    assert best["step"] == step
    assert best["metrics"]["miou"] == pytest.approx(mious[step], rel=1e-6)
    assert best["metrics"]["best"] == {"step": step, "miou": best["metrics"]["miou"]}
    assert final["best"] == best["metrics"]["best"]
    assert json.loads((out / "final.json").read_text())["val"]["best"] == final["best"]
    # best.pt's weights score what metrics.csv logged at that step
    from pixcon.inference import evaluate_checkpoint

    assert evaluate_checkpoint(out / "best.pt", split="val")["miou"] == pytest.approx(mious[step], abs=1e-6)


def test_without_keep_best_no_best_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = run_training(
        load_config(overrides=_overrides(tiny_dataset, out, "train.keep_best=false", "train.steps=2"))
    )
    assert not (out / "best.pt").exists() and "best" not in final


def test_a_resumed_run_picks_the_same_best_checkpoint(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_training(load_config(overrides=_overrides(tiny_dataset, tmp_path / "full")))
    mious = _val_mious(tmp_path / "full")
    # The resume is only a test of the restored record if an evaluation after the cut (step 3) scores
    # below a best from before it: without the record the resumed run would take that step as best.
    before = max(v for s, v in mious.items() if s <= 3)
    assert any(v < before for s, v in mious.items() if s > 3), mious

    real_save = loop.save_checkpoint

    def die_after_last(state: dict, path: Path, **kwargs: Path) -> Path:
        real_save(state, path, **kwargs)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt  # the process dies right after its first last.pt (step 3)
        return Path(path)

    cfg = load_config(overrides=_overrides(tiny_dataset, tmp_path / "cut"))
    monkeypatch.setattr(loop, "save_checkpoint", die_after_last)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["metrics"]["best"]["step"] <= 3
    final = run_training(cfg, resume=True)

    full, cut = load_checkpoint(tmp_path / "full" / "best.pt"), load_checkpoint(tmp_path / "cut" / "best.pt")
    assert cut["step"] == full["step"] == _first_best(mious)
    assert cut["metrics"] == full["metrics"] and final["best"] == full["metrics"]["best"]
    for k, v in full["model"].items():
        torch.testing.assert_close(cut["model"][k], v, rtol=0, atol=0, msg=k)


def test_overwrite_removes_the_best_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_training(load_config(overrides=_overrides(tiny_dataset, out, "train.steps=2")))
    assert (out / "best.pt").exists()
    again = _overrides(tiny_dataset, out, "train.steps=1", "train.keep_best=false", "train.overwrite=true")
    run_training(load_config(overrides=again))
    assert not (out / "best.pt").exists()

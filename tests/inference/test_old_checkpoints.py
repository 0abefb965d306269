"""Checkpoints of the first format (written before the domain list) load in the inference layer and
evaluate to the scores the old code gave them (tests/fixtures/v1/README.md says how they were made)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixcon.checkpoint import load_checkpoint
from pixcon.cli import main
from pixcon.inference import evaluate_checkpoint, load_model

FIXTURE = Path(__file__).parents[1] / "fixtures" / "v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
CASES = {
    "ce": ("runs/ce/last.pt", "data", None),
    "multidomain:main": ("runs/multidomain/last.pt", "data", None),
    "multidomain:aux": ("runs/multidomain/last.pt", "data-aux", "aux"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_old_checkpoint_evaluates_to_the_same_scores(case: str) -> None:
    path, root, domain = CASES[case]
    scores = evaluate_checkpoint(FIXTURE / path, split="test", data_root=FIXTURE / root, domain=domain)
    expected = EXPECTED[case]
    for key in ("miou", "pixel_acc", "kappa", "mean_class_acc", "macro_f1"):
        assert scores[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    assert scores["iou_per_class"].keys() == expected["iou_per_class"].keys()
    for name, iou in expected["iou_per_class"].items():  # None: a class absent from target and prediction
        assert scores["iou_per_class"][name] == (None if iou is None else pytest.approx(iou, rel=1e-9)), name
    assert scores.get("domain") == expected.get("domain")


def test_old_checkpoints_read_as_the_current_format() -> None:
    single = load_checkpoint(FIXTURE / "runs/ce/last.pt")
    assert single["format_version"] == 2 and [d["name"] for d in single["domains"]] == ["data"]
    multi = load_checkpoint(FIXTURE / "runs/multidomain/last.pt")
    assert [d["name"] for d in multi["domains"]] == ["main", "aux"]
    assert multi["kind"] == "ce" and multi["config"]["train"]["objective"] == "ce"  # the removed objective
    assert not [k for k in multi["model"] if k.startswith(("segmenter.", "heads.", "image_projection."))]
    model, state = load_model(FIXTURE / "runs/multidomain/last.pt", domain="aux")
    assert model.num_classes == state["num_classes"] == len(state["class_names"]) == 7  # aux's own classes


def test_old_checkpoint_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = FIXTURE / "runs/multidomain/last.pt"
    argv = ["evaluate", str(ckpt), "--data-root", str(FIXTURE / "data-aux"), "--domain", "aux"]
    assert main([*argv, "--split", "test", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["miou"] == pytest.approx(EXPECTED["multidomain:aux"]["miou"], rel=1e-9)

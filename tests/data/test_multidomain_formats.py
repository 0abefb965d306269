"""Domains of one multi-domain run in different formats, and the band check across domains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dataset_layouts import write_potsdam

from pixcon.checkpoint import load_checkpoint
from pixcon.cli import main

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16", "--quiet"]


def _domain_file(path: Path, root: Path, bands: str) -> Path:
    data = {"format": "potsdam", "root": str(root), "bands": bands, "patch_size": 32}
    path.write_text(yaml.safe_dump({"name": "potsdam", "data": data}))
    return path


def test_a_domain_in_another_format(tiny_dataset: Path, tmp_path: Path) -> None:
    potsdam = write_potsdam(tmp_path / "potsdam").root
    spec = _domain_file(tmp_path / "potsdam.yaml", potsdam, "rgb")
    out = tmp_path / "run"
    argv = ["train", "--datasets", f"{tiny_dataset},{spec}", "--out", str(out), "--steps", "1", *TINY]
    assert main(argv) == 0
    domains = load_checkpoint(out / "last.pt")["domains"]
    assert [(d["name"], d["num_classes"], d["data"]["format"]) for d in domains] == [
        ("tiny", 3, "folder"),
        ("potsdam", 6, "potsdam"),
    ]
    assert main(["evaluate", str(out / "last.pt"), "--split", "val", "--domain", "potsdam", "--quiet"]) == 0


def test_domains_must_have_the_same_bands(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    potsdam = write_potsdam(tmp_path / "potsdam").root
    spec = _domain_file(tmp_path / "potsdam.yaml", potsdam, "rgbir")
    out = tmp_path / "run"
    argv = ["train", "--datasets", f"{tiny_dataset},{spec}", "--out", str(out), "--steps", "1", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "multidomain.domains[0] (domain 'potsdam'" in err and "has 4-band images" in err
    assert "primary domain 'tiny'" in err and "has 3" in err
    assert not (out / "last.pt").exists()

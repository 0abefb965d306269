"""`pixcon report`: a self-contained page from a demo directory, and graceful degradation."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest

from pixcon.cli import main
from pixcon.report import ReportOptions, build_report

IMG = re.compile(r'<img src="([^"]*)"')
SECTIONS = (
    "label-efficiency",
    "iou-per-class",
    "confusion",
    "training-curves",
    "predictions",
    "tsne",
    "spectrum",
)


def _figures(page: str) -> tuple[int, list[str]]:
    declared = int(re.search(r'<meta name="pixcon-figures" content="(\d+)">', page)[1])  # type: ignore[index]
    return declared, IMG.findall(page)


def _skipped(page: str) -> dict[str, str]:
    return dict(
        re.findall(r'<section id="([a-z-]+)"><h2>[^<]*</h2>\s*<p class="skipped">Skipped: ([^<]*)</p>', page)
    )


def test_demo_report_is_self_contained_and_complete(demo_report: Path) -> None:
    page = demo_report.read_text()
    declared, sources = _figures(page)
    assert declared == len(sources) == 7 and f"This report has <strong>{declared}</strong> figures." in page
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from elsewhere
    assert "http://" not in page and "https://" not in page
    assert _skipped(page) == {}
    for key in SECTIONS:
        assert f'<section id="{key}">' in page
    assert "CE only = runs/ce_f1_s0" in page and "contrastive = runs/contrast_f1_s0/finetune" in page
    assert "projection-head embeddings (D = 16)" in page and "effective rank" in page


def test_single_run_dir_skips_what_it_lacks(demo_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "ce_run"
    shutil.copytree(demo_dir / "runs" / "ce_f1_s0", run)
    out = build_report([run], options=ReportOptions(tsne_pixels=60))
    assert out == run / "report.html"
    page = out.read_text()
    skipped = _skipped(page)
    assert set(skipped) == {"label-efficiency"} and "no results.json" in skipped["label-efficiency"]
    declared, sources = _figures(page)
    assert declared == len(sources) == 6
    assert "does not train the projection head, so decoder features are shown" in page


def test_pretrain_run_without_its_dataset(demo_dir: Path, tmp_path: Path) -> None:
    run = demo_dir / "runs" / "contrast_f1_s0" / "pretrain"
    out = build_report([run], tmp_path / "r.html", ReportOptions(data_root=str(tmp_path / "gone")))
    page = out.read_text()
    skipped = _skipped(page)
    assert set(skipped) == set(SECTIONS) - {"training-curves"}
    assert f"dataset folder {tmp_path / 'gone'}" in skipped["tsne"]
    declared, sources = _figures(page)
    assert declared == len(sources) == 1  # the training curves only


def test_report_cli(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "page.html"
    pre = demo_dir / "runs" / "contrast_f1_s0" / "pretrain"
    argv = ["report", str(pre), "--out", str(out), "--tsne-pixels", "60", "--num-images", "2"]
    assert main([*argv, "--quiet"]) == 0
    assert str(out) in capsys.readouterr().out
    skipped = _skipped(out.read_text())
    assert "no run with a trained segmentation head" in skipped["predictions"]
    assert main(["report", str(tmp_path / "missing"), "--quiet"]) == 2
    assert f"run directory not found: {tmp_path / 'missing'}" in capsys.readouterr().err

"""Exit statuses and one-line messages of the CLI (issue 18): paths that cannot be written, read or
found, folders where files belong, checkpoints that are not pixcon's, devices that are not there,
bad files in a multi-file predict, and the table of exit statuses in docs/training.md."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixcon import cli
from pixcon.cli import main

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16", "--quiet"]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data-root", str(tiny_dataset), "--out", str(out), "--steps", "1", *TINY]) == 0
    return out / "last.pt"


class Foreign:
    """Not a tensor nor a plain value: what a pixcon checkpoint never holds."""


def _no_traceback(err: str) -> str:
    assert "Traceback" not in err, err
    return err


def test_exit_statuses_match_the_docs() -> None:
    rows = re.findall(r"^\| `?(\d+)`? \|", DOCS.read_text(), flags=re.MULTILINE)
    assert sorted(map(int, rows)) == sorted(
        {cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_INTERRUPTED}
    ), "docs/training.md#exit-statuses lists another set of exit statuses than pixcon.cli"


def test_evaluate_checks_its_output_before_scoring(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    # The split does not exist either: the --out message proves the output was checked first.
    argv = ["evaluate", str(trained), "--split", "no-such-split", "--out", str(blocker / "s.json"), "--quiet"]
    assert main(argv) == 2
    err = _no_traceback(capsys.readouterr().err)
    assert f"--out {blocker / 's.json'}: {blocker} is a file, not a folder" in err
    assert main(["evaluate", str(trained), "--out", str(tmp_path), "--quiet"]) == 2
    assert f"--out {tmp_path} is a folder, not a file" in capsys.readouterr().err
    nested = tmp_path / "new" / "dir" / "scores.json"  # missing folders are made
    assert main(["evaluate", str(trained), "--out", str(nested), "--quiet"]) == 0 and nested.is_file()


@pytest.mark.parametrize("command", ["predict", "pseudo-label"])
def test_inference_outputs_under_a_file(
    command: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    inputs = [str(image)] if command == "predict" else []
    assert main([command, str(trained), *inputs, "--out", str(blocker / "o"), "--quiet"]) == 2
    assert f"{blocker} is a file, not a folder" in _no_traceback(capsys.readouterr().err)


def test_checkpoints_that_are_folders_or_not_pixcons(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(trained.parent), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {trained.parent} is a folder, not a file ({trained}?)" in err

    foreign = tmp_path / "foreign.pt"
    torch.save({"model": Foreign()}, foreign)  # a pickle with a class: torch advises weights_only=False
    assert main(["evaluate", str(foreign), "--quiet"]) == 1
    err = _no_traceback(capsys.readouterr().err)
    assert "is not a pixcon checkpoint" in err and "weights_only" not in err and "trust" not in err
    assert main(["evaluate", str(tmp_path / "none.pt"), "--quiet"]) == 2  # not found: a path


def test_config_and_data_paths_that_are_folders_or_files(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tmp_path), "--quiet"]) == 2
    assert f"config file {tmp_path} is a folder, not a file" in capsys.readouterr().err
    data_file = tmp_path / "data.zip"
    data_file.write_text("x")
    assert main(["train", "--data-root", str(data_file), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert f"data.root: {data_file} is a file, not a dataset folder" in capsys.readouterr().err
    argv = ["train", "--data-root", str(tiny_dataset), "--out", str(tmp_path / "r"), *TINY]
    assert main([*argv, "--init-from", str(tmp_path)]) == 2
    assert f"checkpoint {tmp_path} is a folder, not a file" in capsys.readouterr().err


def test_os_errors_of_any_command_are_one_line_with_status_2(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    argv = ["split", "--root", str(tiny_dataset), "--fractions", "0.5", "--out", str(blocker / "splits")]
    assert main(argv) == 2
    err = _no_traceback(capsys.readouterr().err)
    assert len(err.strip().splitlines()) == 1 and str(blocker) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
@pytest.mark.parametrize("device, message", [("cuda", "no CUDA GPU"), ("gpu0", "is not a device")])
def test_predict_on_a_device_that_is_not_there(
    device: str, message: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    argv = ["predict", str(trained), str(image), "--out", str(tmp_path / "o"), "--device", device, "--quiet"]
    assert main(argv) == 2
    err = _no_traceback(capsys.readouterr().err)
    assert f"--device {device!r}" in err and message in err


def _images(tmp_path: Path) -> list[Path]:
    """good1.png, a truncated PNG, a folder, a missing file, good2.jpg, a 16-bit slice (8-bit model)."""
    rng = np.random.default_rng(0)
    good1, good2 = tmp_path / "good1.png", tmp_path / "good2.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(good1)
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(good2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good1.read_bytes()[:120])
    folder = tmp_path / "folder.png"
    folder.mkdir()
    deep = tmp_path / "deep.png"
    Image.fromarray(rng.integers(0, 4096, (32, 32), dtype=np.uint16)).save(deep)
    return [good1, broken, folder, tmp_path / "missing.png", good2, deep]


def test_predict_skips_bad_files_writes_the_others_and_counts_both(
    tmp_path: Path,
    untrained_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ckpt = untrained_checkpoint
    images = _images(tmp_path)
    out = tmp_path / "pred"
    assert (
        main(["predict", str(ckpt), *map(str, images), "--out", str(out), "--window", "64", "--quiet"]) == 1
    )
    captured = capsys.readouterr()
    _no_traceback(captured.err)
    assert sorted(p.name for p in out.iterdir()) == [
        "good1_mask.png",
        "good1_overlay.png",
        "good2_mask.png",
        "good2_overlay.png",
    ]
    assert "predict: 2 of 6 images written" in captured.out and "4 skipped" in captured.out
    reasons = {r.getMessage() for r in caplog.records if r.levelname == "WARNING"}
    for fragment in ("broken.png", "folder.png is a folder", "image not found", "deep.png is 16-bit"):
        assert any(fragment in r for r in reasons), (fragment, reasons)


def test_predict_strict_stops_at_the_first_bad_file(
    tmp_path: Path, untrained_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = untrained_checkpoint
    good1, broken, *_ = _images(tmp_path)
    good3 = tmp_path / "good3.png"
    shutil.copy(good1, good3)
    out = tmp_path / "pred"
    argv = [
        "predict",
        str(ckpt),
        str(good1),
        str(broken),
        str(good3),
        "--out",
        str(out),
        "--strict",
        "--quiet",
    ]
    assert main(argv) == 2
    assert "broken.png" in _no_traceback(capsys.readouterr().err)
    assert (out / "good1_mask.png").is_file() and not (out / "good3_mask.png").exists()
    # --strict checks every path before the model is loaded
    argv = ["predict", str(ckpt), str(good1), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o2")]
    assert main([*argv, "--strict", "--quiet"]) == 2
    assert not (tmp_path / "o2").exists()


def test_predict_with_no_good_file_is_an_error(
    tmp_path: Path, untrained_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = untrained_checkpoint
    _, broken, folder, missing, _, deep = _images(tmp_path)
    argv = ["predict", str(ckpt), str(broken), str(deep), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 2
    assert "none of the 2 images could be predicted" in _no_traceback(capsys.readouterr().err)
    assert (
        main(["predict", str(ckpt), str(folder), str(missing), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    )
    assert "none of the 2 images can be read" in capsys.readouterr().err

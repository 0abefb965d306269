"""The Triton kernels of the pixel loss against the float64 references, on the CPU via Triton's interpreter.

The kernels run in one worker process per test module (``fused_interpreter.py``) with
``TRITON_INTERPRET=1``: the flag only works if it is set before Triton is first imported, and in
this process torch, timm or lightning have imported Triton already (so the rest of the test
session never sees it). Every job is built here, sent to the worker in one batch, and its value
and gradient are checked here against the float64 loop reference (``test_contrastive.py``), its
numerical gradient, or the torch path. A small set of jobs runs in ``make test`` (every form,
variant and degenerate case, anchor ranges, float32); the full grid is marked ``slow``. The
compiled kernels are checked on a GPU by ``test_fused_cuda.py``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_contrastive import GRID, _data, _numeric_grad, reference_loss

from pixcon.losses.contrastive import pixel_contrastive_loss, pixel_contrastive_sum

pytest.importorskip("triton")

FORMS = ("zhao", "supcon")
VARIANTS = ("batch", "within", "cross")
SMALL_BLOCKS = (16, 16)  # several programs, and several column tiles per program, at N ~ 40
DEGENERATE = {
    "n1": [0],
    "n2-pair": [3, 3],  # one positive pair, no negative
    "n2-none": [2, 7],  # no positive
    "empty": [],
    "ignored": [255, 255, 255],
    "unique": [0, 1, 2, 3],  # no anchor has a positive
    "one-class": [4, 4, 4, 4, 4],  # no negatives
    "some": [0, 0, 1, 2, 255],  # some anchors without positives
}
ANCHOR_RANGES = ((0, 17), (17, 18), (18, 41))
WORKER = Path(__file__).with_name("fused_interpreter.py")
# Pretraining steps as a CUDA run takes them (fused_interpreter.run_step): the recipes' default
# (projection on the sampled pixels), the projection on every pixel, every labeled pixel, the
# per-image budget, and the CPU sampler (which must be seen to synchronise).
STEPS = {
    "sampled": dict(project_sampled=True, max_pixels=96, variant="cross", fixed_shapes=True),
    "every-pixel-projected": dict(project_sampled=False, max_pixels=96, variant="batch", fixed_shapes=True),
    "all-pixels": dict(project_sampled=True, max_pixels="all", variant="cross", fixed_shapes=True),
    "within": dict(project_sampled=True, max_pixels=96, variant="within", fixed_shapes=True),
    "cpu-sampler": dict(project_sampled=True, max_pixels=96, variant="cross", fixed_shapes=False),
}


def _job(
    z, labels, img, tau, form, variant, blocks=SMALL_BLOCKS, anchors=None, reduce="mean"
) -> dict[str, Any]:
    return dict(
        z=z,
        labels=labels,
        image_ids=img,
        temperature=tau,
        form=form,
        variant=variant,
        blocks=blocks,
        anchors=anchors,
        reduce=reduce,
    )


def _fast_jobs() -> dict[str, dict[str, Any]]:
    jobs = {}
    for form in FORMS:
        for variant in VARIANTS:
            z, labels, img = _data(9, 4, 3, 2, 0.0, seed=31)
            jobs[f"grad-{form}-{variant}"] = _job(z, labels, img, 0.5, form, variant)
            z, labels, img = _data(47, 6, 4, 4, 0.2, seed=5)
            jobs[f"dispatch-{form}-{variant}"] = _job(z, labels, img, 0.2, form, variant, blocks=None)
            jobs[f"small-{form}-{variant}"] = _job(z, labels, img, 0.2, form, variant)
            z, labels, img = _data(41, 5, 3, 4, 0.15, seed=9)
            for lo, hi in ANCHOR_RANGES:
                jobs[f"anchors-{form}-{variant}-{lo}-{hi}"] = _job(
                    z, labels, img, 0.3, form, variant, anchors=(lo, hi), reduce="sum"
                )
        for k, (name, labels) in enumerate(DEGENERATE.items()):
            y = torch.tensor(labels, dtype=torch.long)
            z = torch.randn(len(y), 8, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
            variant = VARIANTS[k % 3]
            jobs[f"degenerate-{form}-{name}"] = _job(
                z, y, torch.zeros_like(y), 0.1, form, variant, blocks=None
            )
        z = torch.ones(10, 4, dtype=torch.float64)
        jobs[f"identical-{form}"] = _job(z, torch.tensor([0] * 4 + [1] * 6), None, 0.1, form, "batch")
        z, labels, img = _data(40, 8, 3, 2, 0.1, seed=2)
        for tau in (0.07, 0.01):  # t = 0.01: exp(-2/t) underflows float32, the online maximum copes
            jobs[f"float32-{form}-{tau}"] = _job(z.float(), labels, img, tau, form, "batch")
    for name, step in STEPS.items():
        jobs[f"step-{name}"] = dict(kind="step", **step)
    return jobs


def _slow_jobs() -> dict[str, dict[str, Any]]:
    jobs = {}
    for form in FORMS:
        for variant in VARIANTS:
            for n, d, classes, images, ignore in GRID:
                z, labels, img = _data(n, d, classes, images, ignore, seed=n * 7 + d)
                for tau in (0.07, 0.5, 2.0):
                    for blocks in (SMALL_BLOCKS, None):
                        jobs[f"grid-{form}-{variant}-{n}-{tau}-{blocks}"] = _job(
                            z, labels, img, tau, form, variant, blocks=blocks
                        )
            for n, d, classes, images, ignore in GRID[1:3]:
                z, labels, img = _data(n, d, classes, images, ignore, seed=3 * n + d)
                for tau in (0.1, 1.0):
                    jobs[f"gridgrad-{form}-{variant}-{n}-{tau}"] = _job(z, labels, img, tau, form, variant)
            z, labels, img = _data(300, 16, 5, 6, 0.1, seed=4)
            jobs[f"large-{form}-{variant}"] = _job(z, labels, img, 0.1, form, variant, blocks=(32, 16))
    return jobs


def _run_worker(jobs: dict[str, dict[str, Any]], tmp: Path) -> dict[str, dict[str, Any]]:
    torch.save(jobs, tmp / "jobs.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp / "jobs.pt"), str(tmp / "results.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(tmp / "results.pt", weights_only=False)


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return _run_worker(_fast_jobs(), tmp_path_factory.mktemp("fused_fast"))


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return _run_worker(_slow_jobs(), tmp_path_factory.mktemp("fused_slow"))


def _torch_path(job: dict[str, Any]) -> tuple[torch.Tensor, int, torch.Tensor]:
    """The torch path on the same job: value, count, gradient."""
    z = job["z"].clone().requires_grad_(True)
    total, count = pixel_contrastive_sum(
        z,
        job["labels"],
        job["temperature"],
        job["form"],
        image_ids=job["image_ids"],
        variant=job["variant"],
        anchors=job["anchors"],
        backend="torch",
    )
    value = total / count.clamp(min=1) if job["reduce"] == "mean" else total
    value.backward()
    return value.detach(), int(count), z.grad


def _reference(job: dict[str, Any]) -> float:
    img = job["image_ids"]
    img = np.zeros(len(job["labels"]), dtype=np.int64) if img is None else img.numpy()
    return reference_loss(
        job["z"].double().numpy(), job["labels"].numpy(), job["temperature"], job["form"], job["variant"], img
    )


def test_worker_ran_interpreted_kernels(fast: dict[str, dict[str, Any]]) -> None:
    assert all(r["interpreted"] for name, r in fast.items() if not name.startswith("step-"))
    assert "TRITON_INTERPRET" not in os.environ or os.environ["TRITON_INTERPRET"] != "1"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_value_and_gradient_match_reference(fast: dict, form: str, variant: str) -> None:
    job = _fast_jobs()[f"grad-{form}-{variant}"]
    got = fast[f"grad-{form}-{variant}"]
    assert got["value"].item() == pytest.approx(_reference(job), rel=1e-9)
    expected = _numeric_grad(job["z"], job["labels"], job["image_ids"], job["temperature"], form, variant)
    np.testing.assert_allclose(got["grad"].numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("launch", ["dispatch", "small"])
def test_ignored_pixels_and_launch_configs_equal_torch_path(
    fast: dict, form: str, variant: str, launch: str
) -> None:
    name = f"{launch}-{form}-{variant}"
    job, got = _fast_jobs()[name], fast[name]
    assert got["value"].item() == pytest.approx(_reference(job), rel=1e-9)
    _value, count, grad = _torch_path(job)
    assert got["count"] == count
    torch.testing.assert_close(got["grad"], grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_batches_are_finite_and_equal_torch_path(fast: dict, form: str, name: str) -> None:
    job, got = _fast_jobs()[f"degenerate-{form}-{name}"], fast[f"degenerate-{form}-{name}"]
    assert torch.isfinite(got["value"]) and got["requires_grad"]
    assert torch.isfinite(got["grad"]).all()
    value, count, grad = _torch_path(job)
    assert got["value"].item() == pytest.approx(value.item(), rel=1e-9, abs=1e-12)
    assert got["count"] == count
    torch.testing.assert_close(got["grad"], grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_identical_embeddings_give_analytic_value(fast: dict, form: str) -> None:
    # All cosines are 1: zhao gives log(1 + |N|) per anchor, supcon log(N - 1).
    expected = (4 * math.log(1 + 6) + 6 * math.log(1 + 4)) / 10 if form == "zhao" else math.log(9)
    assert fast[f"identical-{form}"]["value"].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_anchor_ranges_add_up_to_the_whole_batch(fast: dict, form: str, variant: str) -> None:
    # The DDP split: each rank's anchors are its own rows of the gathered batch, ignored ones included.
    jobs = _fast_jobs()
    whole = dict(jobs[f"anchors-{form}-{variant}-0-17"], anchors=None)
    total, count, grad = _torch_path(whole)
    parts = [fast[f"anchors-{form}-{variant}-{lo}-{hi}"] for lo, hi in ANCHOR_RANGES]
    for (lo, hi), part in zip(ANCHOR_RANGES, parts, strict=True):
        value, n, _grad = _torch_path(jobs[f"anchors-{form}-{variant}-{lo}-{hi}"])
        assert part["value"].item() == pytest.approx(value.item(), rel=1e-9, abs=1e-12) and part["count"] == n
    assert sum(p["value"].item() for p in parts) == pytest.approx(total.item(), rel=1e-9)
    assert sum(p["count"] for p in parts) == count
    torch.testing.assert_close(sum(p["grad"] for p in parts), grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("tau", [0.07, 0.01])
def test_float32_accumulates_in_float32(fast: dict, form: str, tau: float) -> None:
    job, got = _fast_jobs()[f"float32-{form}-{tau}"], fast[f"float32-{form}-{tau}"]
    assert got["value"].dtype == torch.float32 and got["grad"].dtype == torch.float32
    assert got["value"].item() == pytest.approx(_reference(job), rel=1e-5)


def test_fused_loss_path_never_waits_for_the_host(fast: dict) -> None:
    # What a CUDA run checks under torch.cuda.set_sync_debug_mode("error") (bench/gpu_check.py),
    # here for the operators that synchronise (host_sync.py): every loss job, forward and backward,
    # through the dispatcher and the kernels' glue, ignored pixels, anchor ranges and degenerate
    # batches included.
    loss_jobs = {name: r for name, r in fast.items() if not name.startswith("step-")}
    assert len(loss_jobs) > 50
    assert {name: r["host_syncs"] for name, r in loss_jobs.items() if r["host_syncs"]} == {}


@pytest.mark.parametrize("step", [s for s in STEPS if s != "cpu-sampler"])
def test_pretraining_step_never_waits_for_the_host(fast: dict, step: str) -> None:
    # The model's forward, the fixed-shape sampler, the projection head and the fused loss, and
    # their backward: nothing reads a value on the host or makes a data-dependent shape.
    got = fast[f"step-{step}"]
    assert got["host_syncs"] == []
    assert len(got["kernel_rows"]) == 1 and got["kernel_rows"][0] >= 16  # the loss took the kernels
    assert torch.isfinite(got["value"]) and got["value"].item() > 0 and got["head_has_grad"]


def test_recorder_sees_the_cpu_sampler_synchronise(fast: dict) -> None:
    # The same step with the CPU sampler (nonzero, unique, mask indexing): the recorder is not blind.
    found = " | ".join(fast["step-cpu-sampler"]["host_syncs"])
    assert "aten.nonzero" in found and "aten._unique2" in found and "dense.py" in found


def test_backend_triton_needs_cuda_or_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="backend='triton' needs Triton and a CUDA tensor"):
        pixel_contrastive_loss(torch.randn(6, 3), labels, backend="triton")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        pixel_contrastive_loss(torch.randn(6, 3), labels, backend="cuda")  # type: ignore[arg-type]


@pytest.mark.slow
def test_full_grid_values(slow: dict) -> None:
    for name, job in _slow_jobs().items():
        if name.startswith("grid-"):
            assert slow[name]["value"].item() == pytest.approx(_reference(job), rel=1e-9, abs=1e-12), name


@pytest.mark.slow
def test_full_grid_gradients(slow: dict) -> None:
    for name, job in _slow_jobs().items():
        if name.startswith("gridgrad-"):
            expected = _numeric_grad(
                job["z"], job["labels"], job["image_ids"], job["temperature"], job["form"], job["variant"]
            )
            np.testing.assert_allclose(
                slow[name]["grad"].numpy(), expected, rtol=1e-5, atol=1e-7, err_msg=name
            )


@pytest.mark.slow
def test_full_grid_never_waits_for_the_host(slow: dict) -> None:
    assert {name: r["host_syncs"] for name, r in slow.items() if r["host_syncs"]} == {}


@pytest.mark.slow
def test_larger_batches_equal_torch_path(slow: dict) -> None:
    # Segments longer than a tile, six images: ranges that start and end inside tiles.
    for name, job in _slow_jobs().items():
        if name.startswith("large-"):
            value, count, grad = _torch_path(job)
            assert slow[name]["value"].item() == pytest.approx(value.item(), rel=1e-9), name
            assert slow[name]["count"] == count
            torch.testing.assert_close(slow[name]["grad"], grad, rtol=1e-8, atol=1e-12, msg=name)

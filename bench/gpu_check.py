"""One GPU session for the fused pixel-contrastive kernel: check, then sync-debug, then time.

A GPU is lent only now and then, for minutes, so everything that needs one is in this script, in
this order, and each part reports and goes on when another fails:

1. **Correctness on the GPU** (what Triton's interpreter cannot cover: compiled code, TF32,
   bfloat16, launch configurations): the fused kernel's value and gradient against the torch path
   in float64 on the CPU (itself tested against the loop reference of the equations), for both
   forms, the three variants, ignored pixels, a DDP anchor range, an odd D and a small temperature;
   float32 (IEEE), float32 with TF32 allowed, and bfloat16 inputs.
2. **No host synchronisation**: a pretraining step (model forward, class-balanced sampler, loss,
   backward, SGD step; the recipes' one: one-layer head, projection on the sampled pixels) and the
   sampler and loss alone run under
   ``torch.cuda.set_sync_debug_mode("error")``, with and without deterministic algorithms (the
   training loop turns them on), for the recipes' setting (cross-image pairs, budget 4,096), the
   within variant, ``max_pixels: all`` and the projection on every pixel; the first synchronising
   call is reported with its stack. (``make test`` checks the same path on the CPU for the
   operators that synchronise: ``tests/losses/host_sync.py``.)
3. **Timings** (CUDA events, median, forward + backward at D = 256, 10 classes): dense against
   fused at N = 4,096, 16,384 and 131,072 (dense skipped where it cannot fit), fused in float32,
   TF32 and bfloat16; a few launch configurations at 16k and 131k; then one optimisation step of
   DeepLabV3+/ResNet-18 at 8 x 512 px: CE against the recipes' pretraining step (the default
   budget), and against the same with the projection on every pixel, float32 and bf16-mixed with
   channels_last.

Targets (issue 21): fused at least as fast as dense at 4k and at least 2x faster at 16k; 131k
forward + backward in at most 150 ms; the pretraining step at most 1.15x the CE step at 512 px.

Run (from the repository root; about 3-5 minutes on an H100)::

    python bench/gpu_check.py                       # writes bench/results/gpu_check.json
    python bench/gpu_check.py --out $OUT/gpu_check.json --budget-s 420
    python bench/gpu_check.py --dry-run             # CPU: tiny sizes, the script's own logic only

``--dry-run`` runs every part on the CPU at tiny sizes (the torch path stands in for the kernel
unless ``TRITON_INTERPRET=1`` is set, the sync-debug part is skipped) so that the script can be
checked without a GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import pixcon
from pixcon.losses.contrastive import (
    pixel_contrastive_loss,
    pixel_contrastive_loss_dense,
    pixel_contrastive_sum,
)
from pixcon.losses.dense import PixelContrastiveLoss, balanced_sample_fixed
from pixcon.objectives.supervised import PixelContrast
from pixcon.recipes import VALIDATED

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import recipe_pixel_loss  # bench/: the recipes' pixel loss, one definition

FORMS = ("zhao", "supcon")
VARIANTS = ("batch", "within", "cross")
NUM_CLASSES = 10
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_check.json"


class Budget:
    """Wall-clock budget: later sections are skipped (and say so) once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def log(msg: str) -> None:
    print(msg, flush=True)


def _data(n: int, d: int, seed: int, classes: int = NUM_CLASSES, images: int = 8, ignore: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(classes, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore] = 255
    img = torch.randint(images, (n,), generator=g)
    return z, labels, img


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b|| in float64."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


# ----------------------------------------------------------------------------------------------
# 1. Correctness
# ----------------------------------------------------------------------------------------------


# (name, n, d, form, variant, temperature, anchors, dtype, tf32, value tol, grad tol)
def _correctness_cases(dry: bool) -> list[tuple[Any, ...]]:
    n = 96 if dry else 2000
    cases = []
    for form in FORMS:
        for variant in VARIANTS:
            cases.append(
                (f"fp32 {form} {variant}", n, 256, form, variant, 0.1, None, torch.float32, False, 1e-5, 1e-4)
            )
        cases.append(
            (f"tf32 {form} batch", n, 256, form, "batch", 0.1, None, torch.float32, True, 3e-3, 3e-2)
        )
        cases.append(
            (f"bf16 {form} batch", n, 256, form, "batch", 0.1, None, torch.bfloat16, False, 1e-2, 6e-2)
        )
        cases.append(
            (f"bf16 {form} cross", n, 256, form, "cross", 0.1, None, torch.bfloat16, False, 1e-2, 6e-2)
        )
        third = n // 3
        cases.append(
            (
                f"fp32 {form} within anchors",
                n,
                256,
                form,
                "within",
                0.1,
                (third, 2 * third),
                torch.float32,
                False,
                1e-5,
                1e-4,
            )
        )
        cases.append(
            (f"fp32 {form} D=100 t=0.02", n, 100, form, "batch", 0.02, None, torch.float32, False, 1e-5, 1e-4)
        )
    return cases


def check_correctness(device: str, dry: bool, fused_backend: str) -> list[dict[str, Any]]:
    results = []
    for k, (name, n, d, form, variant, tau, anchors, dtype, tf32, vtol, gtol) in enumerate(
        _correctness_cases(dry)
    ):
        z, labels, img = _data(n, d, seed=k)
        kwargs = dict(image_ids=img, variant=variant, anchors=anchors)
        ref_z = z.clone().requires_grad_(True)
        ref_total, ref_count = pixel_contrastive_sum(ref_z, labels, tau, form, backend="torch", **kwargs)
        ref_total.backward()
        row: dict[str, Any] = {"case": name, "n": n, "d": d}
        if dtype == torch.bfloat16 and fused_backend == "triton" and device == "cpu":
            row.update(ok=None, skipped="Triton's interpreter multiplies bfloat16 wrongly (tl.dot)")
            log(f"  skip {name}: Triton's interpreter multiplies bfloat16 wrongly (tl.dot)")
            results.append(row)
            continue
        try:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            x = z.to(device=device, dtype=dtype).requires_grad_(True)
            dev_kwargs = dict(kwargs, image_ids=img.to(device))
            total, count = pixel_contrastive_sum(
                x, labels.to(device), tau, form, backend=fused_backend, **dev_kwargs
            )
            total.backward()
            value_err = abs(total.item() - ref_total.item()) / max(abs(ref_total.item()), 1e-12)
            grad_err = _rel(x.grad, ref_z.grad)
            ok = value_err <= vtol and grad_err <= gtol and int(count) == int(ref_count)
            row.update(value_rel_err=value_err, grad_rel_err=grad_err, count=int(count), ok=ok)
            log(
                f"  {'ok  ' if ok else 'FAIL'} {name:<32} value rel err {value_err:.1e} (tol {vtol:.0e}), "
                f"grad rel err {grad_err:.1e} (tol {gtol:.0e}), anchors counted {int(count)}/{int(ref_count)}"
            )
        except Exception as exc:  # report and go on: the other parts still run
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            log(f"  FAIL {name}: {type(exc).__name__}: {exc}")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        results.append(row)
    return results


# ----------------------------------------------------------------------------------------------
# 2. Sync-debug
# ----------------------------------------------------------------------------------------------


def _first_sync(fn: Callable[[], Any]) -> str | None:
    """Run ``fn`` under sync-debug mode "error"; None if nothing synchronised, else where it did."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError as exc:
        roots = (str(Path(pixcon.__file__).resolve().parent), str(Path(__file__).resolve().parent))
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if str(Path(f.filename).resolve()).startswith(roots)
        ]
        where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in frames[-3:])
        return f"{exc} at {where}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    return None


def _pretraining_objective(
    variant: str | None = None, max_pixels: int | str = 4096, project_sampled: bool | None = None
) -> PixelContrast:
    """The pretraining step's objective as the recipes build it (``pixcon.recipes.VALIDATED``:
    temperature, variant, projection on the sampled pixels), at the default budget; arguments
    given override it."""
    sampled = VALIDATED["loss"]["project_sampled"] if project_sampled is None else project_sampled
    return PixelContrast(recipe_pixel_loss(max_pixels, variant), project_sampled=sampled)


def _segmenter(device: str) -> torch.nn.Module:
    """DeepLabV3+/ResNet-18 with the recipes' projection head (``VALIDATED["model"]``)."""
    from pixcon.models import create_segmenter

    return create_segmenter(
        arch="deeplabv3plus",
        encoder="resnet18",
        num_classes=14,
        proj_layers=VALIDATED["model"]["proj_layers"],
    ).to(device)


def _step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    objective: PixelContrast | None,
    images: torch.Tensor,
    masks: torch.Tensor,
    bf16: bool,
) -> None:
    """One optimisation step: CE on the segmentation head (``objective`` None) or the pixel loss."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        if objective is None:
            loss = F.cross_entropy(model(images).float(), masks)
        else:
            loss = objective(model, (images, masks))["contrast"]
    loss.backward()
    opt.step()


def _loss_alone(loss_fn: PixelContrastiveLoss, masks: torch.Tensor, size: int, device: str) -> None:
    proj = torch.randn(masks.shape[0], 256, size // 4, size // 4, device=device, requires_grad=True)
    loss_fn(proj, masks).backward()


def check_sync(device: str, dry: bool) -> list[dict[str, Any]]:
    if not device.startswith("cuda"):
        log("  skipped: sync-debug mode needs CUDA")
        return [{"skipped": "no CUDA"}]
    results = []
    size = 512
    torch.manual_seed(0)
    model = _segmenter(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images = torch.rand(8, 3, size, size, device=device)
    blocks = torch.randint(0, 14, (8, size // 16, size // 16), device=device)
    masks = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)
    masks[:, :32] = 255
    # (variant, max_pixels, project_sampled); None: the recipes' setting
    settings = ((None, 4096, None), ("within", 4096, None), (None, "all", None), (None, 4096, False))
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        for variant, max_pixels, project_sampled in settings:
            objective = _pretraining_objective(variant, max_pixels, project_sampled)
            loss_fn = objective.loss
            name = (
                f"deterministic={deterministic} max_pixels={max_pixels} variant={loss_fn.variant} "
                f"project_sampled={objective.project_sampled}"
            )
            step = functools.partial(_step, model, opt, objective, images, masks, False)
            sampler = functools.partial(balanced_sample_fixed, masks[:, ::4, ::4].flatten(), 4096)
            loss_alone = functools.partial(_loss_alone, loss_fn, masks, size, device)
            for part, fn in (("sampler", sampler), ("loss", loss_alone), ("training step", step)):
                try:
                    fn()  # warm-up outside the check: kernels compile, cuDNN picks algorithms
                    found = _first_sync(fn)
                except Exception as exc:
                    found = f"error outside the check: {type(exc).__name__}: {exc}"
                results.append({"setting": name, "part": part, "sync": found})
                log(
                    f"  {'ok  ' if found is None else 'SYNC'} {name}, {part}"
                    + ("" if found is None else f": {found}")
                )
    torch.use_deterministic_algorithms(False)
    return results


# ----------------------------------------------------------------------------------------------
# 3. Timings
# ----------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_loss(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    labels: torch.Tensor,
    device: str,
    repeats: int,
    max_s: float,
) -> dict[str, Any]:
    """Median forward + backward time (ms) and peak memory above the inputs (MiB)."""
    z = z.detach().requires_grad_(True)
    fn(z, labels).backward()  # warm-up (compilation)
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    spent = time.perf_counter()
    for _ in range(repeats):
        z.grad = None
        _sync(device)
        t0 = time.perf_counter()
        loss = fn(z, labels)
        loss.backward()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
        if time.perf_counter() - spent > max_s:
            break
    out: dict[str, Any] = {"ms": statistics.median(times), "runs": len(times), "loss": float(loss.detach())}
    if device.startswith("cuda"):
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def time_losses(device: str, dry: bool, fused_backend: str, budget: Budget) -> list[dict[str, Any]]:
    sizes = (256, 512) if dry else (4096, 16384, 131072)
    d = 256
    free = torch.cuda.mem_get_info()[0] if device.startswith("cuda") else 8 * 2**30
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        z = torch.randn(n, d, generator=g).to(device)
        labels = torch.randint(NUM_CLASSES, (n,), generator=g).to(device)
        impls: list[tuple[str, Callable[..., torch.Tensor], torch.dtype, bool]] = []
        for form in FORMS:
            if 7 * 4 * n**2 < 0.8 * free:  # dense keeps about 7 (N, N) float32 matrices
                impls.append((f"dense-{form} fp32", _dense(form), torch.float32, False))
            impls.append((f"fused-{form} fp32", _fused(form, fused_backend), torch.float32, False))
            impls.append((f"fused-{form} tf32", _fused(form, fused_backend), torch.float32, True))
            impls.append((f"fused-{form} bf16", _fused(form, fused_backend), torch.bfloat16, False))
        for name, fn, dtype, tf32 in impls:
            if budget.left() < 60:
                log(f"  skipped N={n} {name}: time budget spent")
                rows.append({"n": n, "impl": name, "skipped": "time budget"})
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                r = time_loss(fn, z.to(dtype), labels, device, repeats=3 if n > 20000 else 10, max_s=20)
                rows.append({"n": n, "impl": name, **r})
                log(
                    f"  N={n:>6} {name:<20} {r['ms']:9.2f} ms  {r.get('peak_mib', float('nan')):9.1f} MiB  loss {r['loss']:.5f}"
                )
            except Exception as exc:
                rows.append({"n": n, "impl": name, "error": f"{type(exc).__name__}: {exc}"})
                log(f"  N={n:>6} {name:<20} error: {type(exc).__name__}: {exc}")
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
    return rows


def _dense(form: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda z, labels: pixel_contrastive_loss_dense(z, labels, 0.1, form)


def _fused(form: str, backend: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda z, labels: pixel_contrastive_loss(z, labels, 0.1, form, backend=backend)  # type: ignore[arg-type]


def time_launch_configs(device: str, dry: bool, budget: Budget) -> list[dict[str, Any]]:
    """A few (BLOCK_M, BLOCK_N, num_warps) for fused zhao: which default to keep."""
    if not device.startswith("cuda"):
        log("  skipped: launch configurations need CUDA")
        return []
    from pixcon.losses.fused import fused_pixel_contrastive_sum

    rows = []
    configs = [(32, 32, 4), (64, 32, 4), (64, 32, 8), (64, 64, 4), (64, 64, 8), (128, 64, 8), (128, 32, 8)]
    for n in (16384, 131072):
        g = torch.Generator().manual_seed(1)
        z = torch.randn(n, 256, generator=g).to(device)
        labels = torch.randint(NUM_CLASSES, (n,), generator=g).to(device)
        for dtype in (torch.float32, torch.bfloat16):
            for cfg in configs:
                if budget.left() < 45:
                    rows.append({"n": n, "config": cfg, "skipped": "time budget"})
                    continue

                def fn(x: torch.Tensor, y: torch.Tensor, cfg: tuple[int, ...] = cfg) -> torch.Tensor:
                    total, count = fused_pixel_contrastive_sum(
                        x,
                        y,
                        0.1,
                        "zhao",
                        255,
                        pos_groups=None,
                        neg_groups=None,
                        anchors=(0, len(y)),
                        blocks=cfg,
                    )
                    return total / count.clamp(min=1)

                try:
                    r = time_loss(fn, z.to(dtype), labels, device, repeats=3, max_s=10)
                    rows.append({"n": n, "dtype": str(dtype), "config": cfg, **r})
                    log(f"  N={n:>6} {dtype!s:<15} blocks {cfg}: {r['ms']:9.2f} ms")
                except Exception as exc:
                    rows.append(
                        {"n": n, "dtype": str(dtype), "config": cfg, "error": f"{type(exc).__name__}: {exc}"}
                    )
                    log(
                        f"  N={n:>6} {dtype!s:<15} blocks {cfg}: error {type(exc).__name__}: {str(exc)[:200]}"
                    )
    return rows


# The steps timed at 8 x 512 px: CE-only's, the recipes' pretraining step (one-layer head, the
# projection on the sampled pixels only) and the same with the projection on every pixel.
STEP_CASES = ("ce", "pretraining", "pretraining, every pixel projected")


def time_train_steps(device: str, dry: bool, budget: Budget) -> list[dict[str, Any]]:
    """CE step against the pretraining step at 8 x 512 px (tiny on --dry-run)."""
    size, batch = (64, 2) if dry else (512, 8)
    warmup, repeats = (1, 2) if dry else (5, 20)
    rows = []
    for precision in ("fp32", "bf16-mixed"):
        for case in STEP_CASES:
            if budget.left() < 20:
                rows.append({"precision": precision, "case": case, "skipped": "time budget"})
                continue
            torch.manual_seed(0)
            model = _segmenter(device)
            bf16 = precision == "bf16-mixed"
            if bf16:
                model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
            objective = (
                None if case == "ce" else _pretraining_objective(project_sampled=case == "pretraining")
            )
            images = torch.rand(batch, 3, size, size, device=device)
            blocks = torch.randint(0, 14, (batch, size // 16, size // 16), device=device)
            masks = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)

            step = functools.partial(_step, model, opt, objective, images, masks, bf16)
            for _ in range(warmup):
                step()
            _sync(device)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                step()
                _sync(device)
                times.append(1000 * (time.perf_counter() - t0))
            ms = statistics.median(times)
            rows.append({"precision": precision, "case": case, "ms": ms, "size": size, "batch": batch})
            log(f"  {precision:<10} {case:<34} {ms:8.2f} ms")
    for precision in ("fp32", "bf16-mixed"):
        ms = {r["case"]: r["ms"] for r in rows if r["precision"] == precision and "ms" in r}
        for case in STEP_CASES[1:]:
            if "ce" in ms and case in ms:
                ratio = ms[case] / ms["ce"]
                # the target is the recipes' step's; the every-pixel projection is for comparison
                verdict = ("PASS" if ratio <= 1.15 else "FAIL") if case == "pretraining" else "info"
                log(f"  {verdict} {precision}: {case} step {ratio:.2f}x the CE step (target <= 1.15)")
    return rows


def targets(loss_rows: list[dict[str, Any]]) -> list[str]:
    out = []
    ms = {(r["n"], r["impl"]): r["ms"] for r in loss_rows if "ms" in r}
    for form in FORMS:
        for n, limit in ((4096, 1.0), (16384, 0.5)):
            dense = ms.get((n, f"dense-{form} fp32"))
            for prec in ("fp32", "tf32", "bf16"):
                fused = ms.get((n, f"fused-{form} {prec}"))
                if dense and fused:
                    ratio = fused / dense
                    out.append(
                        f"{'PASS' if ratio <= limit else 'FAIL'} N={n} fused-{form} {prec}: {ratio:.2f}x dense fp32 "
                        f"(target <= {limit})"
                    )
        for prec in ("fp32", "tf32", "bf16"):
            fused = ms.get((131072, f"fused-{form} {prec}"))
            if fused:
                out.append(
                    f"{'PASS' if fused <= 150 else 'FAIL'} N=131072 fused-{form} {prec}: {fused:.0f} ms (target <= 150)"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the script itself")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--budget-s", type=float, default=420.0, help="skip timings once this much wall time is spent"
    )
    p.add_argument(
        "--skip", nargs="*", default=[], choices=["correctness", "sync", "losses", "configs", "steps"]
    )
    args = p.parse_args(argv)
    budget = Budget(args.budget_s)
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    fused_backend = "triton" if (not args.dry_run or interpreting) else "torch"
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    machine = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
        "capability": list(torch.cuda.get_device_capability(0)) if device == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "fused_backend": fused_backend,
    }
    log(f"machine: {json.dumps(machine)}")
    report: dict[str, Any] = {"machine": machine}
    sections: list[tuple[str, str, Callable[[], Any]]] = [
        (
            "correctness",
            "1. fused kernel against float64",
            lambda: check_correctness(device, args.dry_run, fused_backend),
        ),
        ("sync", "2. sync-debug mode 'error'", lambda: check_sync(device, args.dry_run)),
        (
            "losses",
            "3a. loss timings (forward + backward, D = 256)",
            lambda: time_losses(device, args.dry_run, fused_backend, budget),
        ),
        (
            "configs",
            "3b. launch configurations (fused zhao)",
            lambda: time_launch_configs(device, args.dry_run, budget),
        ),
        (
            "steps",
            "3c. training steps (DeepLabV3+/ResNet-18, 8 x 512 px)",
            lambda: time_train_steps(device, args.dry_run, budget),
        ),
    ]
    for key, title, fn in sections:
        if key in args.skip:
            continue
        log(f"{title} ({budget.left():.0f} s of the budget left)")
        t0 = time.perf_counter()
        try:
            report[key] = fn()
        except Exception as exc:
            report[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            log(f"  section failed: {type(exc).__name__}: {exc}")
        report[f"{key}_seconds"] = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(report, indent=2, default=str)
        )  # after every section: partial results survive
    if isinstance(report.get("losses"), list):
        report["targets"] = targets(report["losses"])
        for line in report["targets"]:
            log(line)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

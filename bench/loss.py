"""Benchmark: time and peak memory of the pixel contrastive loss, forward + backward.

Compares, for N flattened pixels with D-dimensional embeddings (default N = 1k, 4k, 16k, 32k and
D = 256, 10 random classes, temperature 0.1), each in the ``zhao`` and ``supcon`` forms:

* ``torch-<form>``: :func:`pixcon.losses.contrastive.pixel_contrastive_loss` with
  ``backend="torch"``, the library's CPU path: symmetric tiles over label-sorted pixels
  (:mod:`pixcon.losses.blocked`);
* ``fused-<form>`` (CUDA only): the same function's Triton kernels (:mod:`pixcon.losses.fused`);
* ``rowblock-<form>``: the blocked loss as it was before the symmetric tiles (row blocks streamed
  over all columns), kept as a bench-only reference in ``bench/blocked_reference.py``;
* ``dense-<form>``: :func:`pixcon.losses.contrastive.pixel_contrastive_loss_dense`, the same
  formula with (N, N) matrices and autograd;
* ``pml-supcon``: ``pytorch_metric_learning.losses.SupConLoss`` (dense, SupCon L_out form).

Method:

* Every (implementation, N, device) case runs in a fresh subprocess (``--case IMPL N``), so that
  one case's allocations cannot hide another's and a crash or a timeout stays contained.
* CPU peak memory: PyTorch keeps no statistics for its CPU allocator, so the child reads the
  kernel's resident-set high-water mark ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux). It
  creates the inputs, runs one forward + backward at a tiny N (loads the lazily loaded kernels
  without raising the high-water mark), resets the mark to the current RSS by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux >= 4.0; skipped if refused), takes the current RSS as the
  baseline, runs the timed forward + backward passes and reports ``ru_maxrss - baseline``.
  ``ru_maxrss`` of a child also carries the parent's high-water mark from the ``fork``/``exec``,
  so this parent process never imports torch; the child falls back to ``VmHWM`` from
  ``/proc/self/status`` (the same counter without the inherited part) if it detects such a floor.
  A known 512 MiB allocation is measured first as a check of the method.
* GPU peak memory (only when ``torch.cuda.is_available()``): ``torch.cuda.max_memory_allocated``
  minus the allocation before the timed passes.
* Time: wall time of forward + backward (``loss.backward()``), median over ``--repeats`` passes,
  fewer once ``--time-budget`` seconds are spent (large N). ``torch.set_num_threads(--threads)``.
  The process CPU time (all threads) is recorded too, and so is the share of the machine's CPU
  that *other* processes used meanwhile (``/proc/stat`` busy time minus ours, column
  ``others' CPU``): on a small shared machine a few percent there already inflate the wall times,
  so compare times only between rows where it is near 0 %.
* The dense implementations need about ``k * N**2 * 4`` bytes. ``k`` is measured per
  implementation at N = 4096 (a calibration case is run if 4096 is not among ``--sizes``); a larger
  dense case whose estimate exceeds ``--max-gib`` (or 85 % of the available memory) is skipped and
  printed as ``skipped (est. X GiB)``. Each case also has a ``--timeout``.
* The loss value of every case is recorded: every implementation of a form must agree, and PML
  must agree with ``supcon``. ``--agreement`` additionally compares PML's SupConLoss with ours in float64 (value and
  gradient) at small N.

Run (from the repository root)::

    .venv/bin/python bench/loss.py                 # full run, writes bench/results/loss_cpu.json
    .venv/bin/python bench/loss.py --quick         # N = 1k, 4k only
    .venv/bin/python bench/loss.py --sizes 4096 16384 --impls torch-zhao rowblock-zhao --repeats 3

Output: a markdown table (``mem: dense / impl`` = dense peak / this peak, ``time: impl / dense`` =
this time / dense time, ``time: impl / rowblock`` likewise against the row-block reference, all of
the same form), the issue targets with PASS/FAIL, and a JSON file with every number and the
machine description (CPU model, GPU name, torch, triton and pytorch-metric-learning versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# torch is imported inside the functions that run in the child processes: a parent that had
# imported it would pass its resident-set high-water mark on to every child's ru_maxrss.

FORMS: tuple[str, ...] = ("zhao", "supcon")
KINDS: tuple[str, ...] = ("torch", "fused", "rowblock", "dense")
IMPLS: tuple[str, ...] = (*(f"{k}-{f}" for f in FORMS for k in KINDS), "pml-supcon")
CUDA_ONLY: tuple[str, ...] = ("fused-zhao", "fused-supcon")
DENSE_IMPLS: tuple[str, ...] = ("dense-zhao", "dense-supcon", "pml-supcon")
# The implementations each row is compared with (same form).
DENSE_REFERENCE: dict[str, str] = {i: f"dense-{i.split('-')[1]}" for i in IMPLS}
ROWBLOCK_REFERENCE: dict[str, str] = {i: f"rowblock-{i.split('-')[1]}" for i in IMPLS}
DEFAULT_SIZES: tuple[int, ...] = (1024, 4096, 16384, 32768)
QUICK_SIZES: tuple[int, ...] = (1024, 4096)
CALIBRATION_N = 4096
NUM_CLASSES = 10
WARMUP_N = 64
SANITY_MIB = 512
MIB = 2**20
GIB = 2**30
RESULT_PREFIX = "RESULT "
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "loss_cpu.json"


# ----------------------------------------------------------------------------------------------
# Child side: one case per process.
# ----------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to the current RSS; False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _busy_cpu_s() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``), NaN where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _loss_fn(impl: str, temperature: float) -> Callable[[Any, Any], Any]:
    """``(z (N, D), labels (N,)) -> scalar loss`` for one implementation name."""
    from pytorch_metric_learning.losses import SupConLoss

    from pixcon.losses.contrastive import pixel_contrastive_loss, pixel_contrastive_loss_dense

    if impl not in IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; choose from {sorted(IMPLS)}")
    if impl == "pml-supcon":
        pml = SupConLoss(temperature=temperature)
        return lambda z, labels: pml(z, labels)
    kind, form = impl.split("-")
    if kind == "rowblock":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from blocked_reference import reference_blocked_loss

        return lambda z, labels: reference_blocked_loss(z, labels, temperature=temperature, form=form)
    if kind == "dense":
        return lambda z, labels: pixel_contrastive_loss_dense(z, labels, temperature=temperature, form=form)
    backend = "triton" if kind == "fused" else "torch"
    return lambda z, labels: pixel_contrastive_loss(
        z, labels, temperature=temperature, form=form, backend=backend
    )


def _inputs(n: int, dim: int, device: str, seed: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g).to(device).requires_grad_(True)  # (N, D)
    labels = torch.randint(NUM_CLASSES, (n,), generator=g).to(device)  # (N,)
    return z, labels


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(
    impl: str,
    n: int,
    dim: int,
    device: str,
    threads: int,
    repeats: int,
    time_budget: float,
    temperature: float,
    seed: int,
) -> dict[str, Any]:
    """Time and peak memory of forward + backward for one implementation at one N (child side)."""
    import torch

    torch.set_num_threads(threads)
    loss_fn = _loss_fn(impl, temperature)
    z, labels = _inputs(n, dim, device, seed)
    # Warm-up at a tiny N: loads lazily initialised libraries, allocates next to nothing.
    z_small, labels_small = _inputs(WARMUP_N, dim, device, seed + 1)
    loss_fn(z_small, labels_small).backward()
    _sync(device)
    del z_small, labels_small

    cuda = device.startswith("cuda")
    reset_ok = False
    rss_floor_kib = 0
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline_bytes = torch.cuda.memory_allocated()
    else:
        reset_ok = _reset_peak_rss()
        baseline_bytes = _status_kib("VmRSS") * 1024
        rss_floor_kib = _maxrss_kib()

    times: list[float] = []
    cpu_times: list[float] = []  # user + sys of all threads; less sensitive to other processes
    loss_value = float("nan")
    grad_norm = float("nan")
    spent = 0.0
    busy0, own0 = _busy_cpu_s(), time.process_time()
    for _ in range(repeats):
        z.grad = None
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = loss_fn(z, labels)
        loss.backward()
        _sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        cpu_times.append(time.process_time() - c0)
        spent += dt
        loss_value = float(loss.detach())
        grad_norm = float(z.grad.norm())  # type: ignore[union-attr]
        del loss
        if spent > time_budget:
            break

    # CPU time other processes took while this case ran, as a fraction of all cores: the wall times
    # of a case that shared the machine are inflated (a 2-core box is easily oversubscribed).
    others_s = max(0.0, (_busy_cpu_s() - busy0) - (time.process_time() - own0))
    others_frac = others_s / (spent * (os.cpu_count() or 1)) if spent > 0 else float("nan")
    out: dict[str, Any] = {
        "other_processes_cpu_frac": others_frac,
        "impl": impl,
        "n": n,
        "dim": dim,
        "device": device,
        "status": "ok",
        "times_s": times,
        "time_s": statistics.median(times),
        "cpu_times_s": cpu_times,
        "cpu_time_s": statistics.median(cpu_times),
        "loss": loss_value,
        "grad_norm": grad_norm,
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated() - baseline_bytes
        out.update(peak_mib=peak / MIB, peak_source="torch.cuda.max_memory_allocated")
    else:
        maxrss_kib = _maxrss_kib()
        hwm_kib = _status_kib("VmHWM")
        # ru_maxrss also holds the parent's mark inherited at exec; if that floor sits above the
        # baseline the process's own counter (VmHWM, reset above) is the one to read.
        floored = rss_floor_kib * 1024 > baseline_bytes + 16 * MIB
        use_hwm = floored and reset_ok
        peak_kib = hwm_kib if use_hwm else maxrss_kib
        out.update(
            peak_mib=(peak_kib * 1024 - baseline_bytes) / MIB,
            peak_source="VmHWM" if use_hwm else "ru_maxrss",
            baseline_mib=baseline_bytes / MIB,
            ru_maxrss_mib=maxrss_kib / 1024,
            vm_hwm_mib=hwm_kib / 1024,
            hwm_reset=reset_ok,
            maxrss_floor_above_baseline=floored,
        )
    return out


def run_sanity(threads: int) -> dict[str, Any]:
    """Measure a known allocation of ``SANITY_MIB`` MiB the same way as a case (child side)."""
    import torch

    torch.set_num_threads(threads)
    torch.ones(8).sum()
    reset_ok = _reset_peak_rss()
    baseline = _status_kib("VmRSS") * 1024
    x = torch.ones(SANITY_MIB * MIB // 4)  # written, so every page is resident
    del x
    peak_mib = (_maxrss_kib() * 1024 - baseline) / MIB
    return {"expected_mib": SANITY_MIB, "measured_mib": peak_mib, "hwm_reset": reset_ok}


def run_probe() -> dict[str, Any]:
    """Machine description (child side, so the parent stays free of torch)."""
    import pytorch_metric_learning
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "triton": triton_version,
        "pytorch_metric_learning": pytorch_metric_learning.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, gpu_total_gib=props.total_memory / GIB)
    return info


def run_agreement(temperature: float) -> dict[str, Any]:
    """PML SupConLoss vs ours (form="supcon"), float64, value and gradient (child side)."""
    import torch

    trials: list[dict[str, Any]] = []
    setups = [
        ("10 classes", 64, 16, NUM_CLASSES),
        ("10 classes", 257, 32, NUM_CLASSES),
        ("3 classes", 100, 8, 3),
        ("singleton classes", 40, 8, 30),
        ("one class", 16, 8, 1),
    ]
    for name, n, dim, classes in setups:
        for tau in (temperature, 0.5):
            g = torch.Generator().manual_seed(n * 7 + classes)
            z0 = torch.randn(n, dim, generator=g, dtype=torch.float64)  # (N, D)
            labels = torch.randint(classes, (n,), generator=g)  # (N,)
            values, grads = {}, {}
            for impl in ("torch-supcon", "dense-supcon", "pml-supcon"):
                z = z0.clone().requires_grad_(True)
                loss = _loss_fn(impl, tau)(z, labels)
                loss.backward()
                values[impl] = float(loss)
                grads[impl] = z.grad
            trials.append(
                {
                    "setup": name,
                    "n": n,
                    "dim": dim,
                    "temperature": tau,
                    **{f"loss_{k}": v for k, v in values.items()},
                    "abs_diff_pml_vs_torch": abs(values["pml-supcon"] - values["torch-supcon"]),
                    "abs_diff_dense_vs_torch": abs(values["dense-supcon"] - values["torch-supcon"]),
                    "max_grad_diff_pml_vs_torch": float(
                        (grads["pml-supcon"] - grads["torch-supcon"]).abs().max()
                    ),
                }
            )
    return {"dtype": "float64", "trials": trials}


# ----------------------------------------------------------------------------------------------
# Parent side: orchestration, skipping, reporting.
# ----------------------------------------------------------------------------------------------


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script with ``args`` in a fresh interpreter and parse its result line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    status = "killed (out of memory?)" if proc.returncode in (-9, 137) else "error"
    return {"status": status, "returncode": proc.returncode, "error": " | ".join(tail)}


def _meminfo_gib(key: str) -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _case_args(impl: str, n: int, device: str, cfg: argparse.Namespace) -> list[str]:
    return [
        "--case", impl, str(n),
        "--device", device,
        "--dim", str(cfg.dim),
        "--threads", str(cfg.threads),
        "--repeats", str(cfg.repeats),
        "--time-budget", str(cfg.time_budget),
        "--temperature", str(cfg.temperature),
        "--seed", str(cfg.seed),
    ]  # fmt: skip


def _memory_limit_gib(device: str, cfg: argparse.Namespace, machine: dict[str, Any]) -> float:
    if device == "cpu":
        return min(cfg.max_gib, 0.85 * _meminfo_gib("MemAvailable"))
    return 0.9 * float(machine.get("gpu_total_gib", 0.0))


def run_device(device: str, cfg: argparse.Namespace, machine: dict[str, Any]) -> list[dict[str, Any]]:
    """All (N, implementation) cases on one device, smallest N first, each in a subprocess."""
    rows: list[dict[str, Any]] = []
    k_dense: dict[str, float] = {}  # bytes / (4 * N^2), measured at CALIBRATION_N
    limit_gib = _memory_limit_gib(device, cfg, machine)

    def record(row: dict[str, Any]) -> dict[str, Any]:
        if row["n"] == CALIBRATION_N and row["impl"] in DENSE_IMPLS and row.get("status") == "ok":
            k_dense[row["impl"]] = row["peak_mib"] * MIB / (4 * CALIBRATION_N**2)
        return row

    for n in sorted(cfg.sizes):
        for impl in cfg.impls:
            if impl in CUDA_ONLY and device == "cpu":
                continue
            row: dict[str, Any] = {"impl": impl, "n": n, "dim": cfg.dim, "device": device}
            if impl in DENSE_IMPLS and n > CALIBRATION_N:
                if impl not in k_dense:
                    print(f"[{device}] calibrating {impl} at N={CALIBRATION_N}", flush=True)
                    calib = record(_child(_case_args(impl, CALIBRATION_N, device, cfg), cfg.timeout))
                    calib["calibration_only"] = True
                    rows.append(calib)
                if impl in k_dense:
                    est_gib = k_dense[impl] * 4 * n**2 / GIB
                    row["est_gib"] = est_gib
                    if est_gib > limit_gib:
                        row.update(status="skipped", reason=f"skipped (est. {est_gib:.1f} GiB)")
                        print(f"[{device}] N={n:>6} {impl:<15} skipped (est. {est_gib:.1f} GiB)", flush=True)
                        rows.append(row)
                        continue
            result = _child(_case_args(impl, n, device, cfg), cfg.timeout)
            row.update(result)
            rows.append(record(row))
            if row.get("status") == "ok":
                print(
                    f"[{device}] N={n:>6} {impl:<15} {row['time_s']:8.3f} s {row['peak_mib']:10.1f} MiB"
                    f"  loss {row['loss']:.6f}",
                    flush=True,
                )
            else:
                print(
                    f"[{device}] N={n:>6} {impl:<15} {row.get('status')}: {row.get('error', '')}", flush=True
                )
    for row in rows:
        if row["impl"] in k_dense and row.get("status") == "ok":
            row["k_dense"] = k_dense[row["impl"]]
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios against the same-form dense row (memory dense / impl, time impl / dense) and the
    same-form row-block reference (time and memory impl / rowblock)."""
    ok = {
        (r["device"], r["n"], r["impl"]): r
        for r in rows
        if r.get("status") == "ok" and not r.get("calibration_only")
    }
    for r in rows:
        if r.get("status") != "ok" or r.get("calibration_only"):
            continue
        ref = ok.get((r["device"], r["n"], DENSE_REFERENCE[r["impl"]]))
        if ref is not None:
            r["mem_ratio_dense_over_impl"] = ref["peak_mib"] / max(r["peak_mib"], 1e-9)
            r["time_ratio_impl_over_dense"] = r["time_s"] / ref["time_s"]
            r["loss_abs_diff_vs_dense"] = abs(r["loss"] - ref["loss"])
        old = ok.get((r["device"], r["n"], ROWBLOCK_REFERENCE[r["impl"]]))
        if old is not None:
            r["time_ratio_impl_over_rowblock"] = r["time_s"] / old["time_s"]
            r["cpu_time_ratio_impl_over_rowblock"] = r["cpu_time_s"] / old["cpu_time_s"]


def _ratio(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | device | impl | time (s) | CPU time (s) | peak MiB | mem: dense / impl | time: impl / dense "
        "| time: impl / rowblock | loss | others' CPU |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("calibration_only"):
            continue
        head = f"| {r['n']} | {r['device']} | {r['impl']} |"
        if r.get("status") != "ok":
            msg = r.get("reason") or f"{r.get('status')}"
            lines.append(f"{head} {msg} | | | | | | | |")
            continue
        others = r.get("other_processes_cpu_frac", float("nan"))
        lines.append(
            f"{head} {r['time_s']:.3f} | {r.get('cpu_time_s', float('nan')):.3f} | {r['peak_mib']:.1f} | "
            f"{_ratio(r.get('mem_ratio_dense_over_impl'), '.1f')}x | "
            f"{_ratio(r.get('time_ratio_impl_over_dense'), '.2f')} | "
            f"{_ratio(r.get('time_ratio_impl_over_rowblock'), '.2f')} | "
            f"{r['loss']:.6f} | {others:.0%} |"
        )
    return "\n".join(lines)


def _find(rows: list[dict[str, Any]], device: str, n: int, impl: str) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in rows
            if (r["device"], r["n"], r["impl"]) == (device, n, impl)
            and r.get("status") == "ok"
            and not r.get("calibration_only")
        ),
        None,
    )


def _busy_note(*rows: dict[str, Any]) -> str:
    others = max(r.get("other_processes_cpu_frac", 0.0) for r in rows)
    return f" (other processes used up to {others:.0%} of the CPU: times unreliable)" if others > 0.05 else ""


def target_checks(rows: list[dict[str, Any]]) -> list[str]:
    """The issue targets that this run can check.

    * CPU, N = 16k (issue 21): the torch path in at most 0.6x the time of the row-block reference
      and at most 200 MiB extra peak memory; and (issue 2) >= 8x less memory than dense, no slower.
    * GPU (issue 21): the fused kernel at most as slow as dense at N = 4k, at least 2x faster at
      16k, and N = 131,072 forward + backward in at most 150 ms.
    """
    out = []
    for form in FORMS:
        r = _find(rows, "cpu", 16384, f"torch-{form}")
        old = _find(rows, "cpu", 16384, f"rowblock-{form}")
        if r is not None and old is not None:
            ratio = r["time_s"] / old["time_s"]
            verdict = "PASS" if ratio <= 0.6 and r["peak_mib"] <= 200 else "FAIL"
            out.append(
                f"{verdict} cpu N=16384 torch-{form}: {ratio:.2f}x the row-block time (target <= 0.6; CPU time "
                f"{r['cpu_time_s'] / old['cpu_time_s']:.2f}x), {r['peak_mib']:.0f} MiB peak (target <= 200)"
                + _busy_note(r, old)
            )
        dense = _find(rows, "cpu", 16384, f"dense-{form}")
        if r is not None and dense is not None:
            mem, tim = dense["peak_mib"] / max(r["peak_mib"], 1e-9), r["time_s"] / dense["time_s"]
            verdict = "PASS" if mem >= 8 and tim <= 1.0 else "FAIL"
            out.append(
                f"{verdict} cpu N=16384 torch-{form}: {mem:.1f}x less memory than dense (target >= 8), "
                f"time {tim:.2f}x dense (target <= 1)" + _busy_note(r, dense)
            )
        for n, limit in ((4096, 1.0), (16384, 0.5)):
            fused, dense = _find(rows, "cuda", n, f"fused-{form}"), _find(rows, "cuda", n, f"dense-{form}")
            if fused is not None and dense is not None:
                ratio = fused["time_s"] / dense["time_s"]
                verdict = "PASS" if ratio <= limit else "FAIL"
                out.append(
                    f"{verdict} cuda N={n} fused-{form}: {ratio:.2f}x the dense time (target <= {limit})"
                )
        fused = _find(rows, "cuda", 131072, f"fused-{form}")
        if fused is not None:
            verdict = "PASS" if fused["time_s"] <= 0.150 else "FAIL"
            out.append(
                f"{verdict} cuda N=131072 fused-{form}: {1000 * fused['time_s']:.0f} ms (target <= 150 ms)"
            )
    return out


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help=f"N values (default {DEFAULT_SIZES})")
    p.add_argument("--dim", type=int, default=256, help="embedding dimension D")
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--repeats", type=int, default=3, help="timed passes per case (median)")
    p.add_argument("--time-budget", type=float, default=60.0, help="stop repeating after this many s")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-gib", type=float, default=16.0, help="skip dense CPU cases estimated above")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per case subprocess")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help=f"sanity run at N = {QUICK_SIZES}")
    p.add_argument("--no-gpu", action="store_true", help="CPU rows only, even with CUDA")
    p.add_argument("--no-cpu", action="store_true", help="GPU rows only (on a GPU machine)")
    p.add_argument("--no-agreement", action="store_true", help="skip the float64 PML comparison")
    # Child modes (used internally).
    p.add_argument("--case", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--sanity", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--agreement", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.out is None:
        args.out = DEFAULT_OUT.with_name("loss_cpu_quick.json") if args.quick else DEFAULT_OUT
    return args


def main(argv: Sequence[str] | None = None) -> int:
    cfg = _parse(argv)
    child: dict[str, Any] | None = None
    if cfg.case:
        impl, n = cfg.case[0], int(cfg.case[1])
        child = run_case(
            impl, n, cfg.dim, cfg.device, cfg.threads, cfg.repeats, cfg.time_budget, cfg.temperature, cfg.seed
        )
    elif cfg.sanity:
        child = run_sanity(cfg.threads)
    elif cfg.probe:
        child = run_probe()
    elif cfg.agreement:
        child = run_agreement(cfg.temperature)
    if child is not None:
        print(RESULT_PREFIX + json.dumps(child), flush=True)
        return 0

    machine = _child(["--probe"], timeout=600)
    machine.update(
        threads=cfg.threads,
        cpu_count=os.cpu_count(),
        cpu_model=_cpu_model(),
        mem_total_gib=_meminfo_gib("MemTotal"),
        python=platform.python_version(),
        platform=platform.platform(),
    )
    print(f"machine: {json.dumps(machine)}", flush=True)

    sanity = _child(["--sanity", "--threads", str(cfg.threads)], timeout=600)
    print(f"sanity: allocated {SANITY_MIB} MiB, measured {sanity.get('measured_mib', float('nan')):.1f} MiB")
    if abs(sanity.get("measured_mib", 0.0) - SANITY_MIB) > 0.05 * SANITY_MIB:
        print("WARNING: the RSS measurement does not see a known allocation; memory numbers are suspect")

    rows = [] if cfg.no_cpu else run_device("cpu", cfg, machine)
    if machine.get("cuda_available") and not cfg.no_gpu:
        rows += run_device("cuda", cfg, machine)
    _add_ratios(rows)

    agreement = (
        None if cfg.no_agreement else _child(["--agreement", "--temperature", str(cfg.temperature)], 600)
    )

    print()
    print(markdown_table(rows))
    print()
    for line in target_checks(rows):
        print(line)
    if agreement is not None and "trials" in agreement:
        worst = max(agreement["trials"], key=lambda t: t["abs_diff_pml_vs_torch"])
        print(
            "PML SupConLoss vs pixcon form='supcon' (float64): "
            + "; ".join(
                f"{t['setup']} N={t['n']} t={t['temperature']}: |diff| {t['abs_diff_pml_vs_torch']:.2e}"
                for t in agreement["trials"]
            )
        )
        print(
            f"largest difference: {worst['setup']} ({worst['loss_pml-supcon']} vs {worst['loss_torch-supcon']})"
        )

    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "machine": machine,
        "sanity": sanity,
        "rows": rows,
        "targets": target_checks(rows),
        "agreement": agreement,
    }
    cfg.out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

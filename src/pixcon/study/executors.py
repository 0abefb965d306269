"""Where a study's runs train: in this process, in ``--jobs N`` worker processes on this machine,
or as jobs of a cluster scheduler through submitit (SLURM job arrays; its local executor runs the
same code path as subprocesses of this machine).

Every executor takes a list of :class:`~pixcon.study.cell.Job` and returns their results in order;
each finished job has written its ``result.json``, so an executor killed half-way loses at most the
runs in flight (and those resume from their checkpoints).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pixcon.config import ConfigError
from pixcon.study.cell import Job, run_job, train_job
from pixcon.study.spec import EXECUTORS

log = logging.getLogger(__name__)


Progress = Callable[[Job], None]  # called as each job finishes


class StudyRunError(RuntimeError):
    """A run of the study failed in a worker (a process or a cluster job); the message names the run
    and carries the worker's error message (exit status 1)."""


def run_jobs(
    jobs: Sequence[Job],
    executor: str = "local",
    workers: int = 1,
    on_done: Progress | None = None,
    folder: Path | None = None,
    cluster: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Runs ``jobs``; ``workers`` at a time for ``local`` (each with its share of the CPU threads),
    as submitit jobs for ``submitit-local`` and ``slurm`` (``cluster``: submitit parameters such
    as ``slurm_partition``, ``timeout_min``, ``gpus_per_node``; logs under ``folder``).

    Raises:
        StudyRunError: A run failed in a worker (it is named; the other runs of a local pool not
            yet started are cancelled). In this process (``local``, one worker) the run's own
            error propagates.
    """
    on_done = on_done or (lambda job: None)
    if not jobs:
        return []
    if executor == "local" and workers == 1:
        results = []
        for job in jobs:
            results.append(run_job(job))
            on_done(job)
        return results
    if executor == "local":
        return _pool(jobs, workers, on_done)
    if executor in ("submitit-local", "slurm"):
        assert folder is not None
        return _submitit(jobs, executor, folder, dict(cluster or {}), on_done)
    raise ValueError(f"unknown executor {executor!r}; choose from {list(EXECUTORS)}")


def _init_worker(level: int) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pixcon").setLevel(level)


def _pool(jobs: Sequence[Job], workers: int, on_done: Progress) -> list[dict[str, Any]]:
    """``workers`` spawned processes, each with 1/workers of this process's intra-op threads."""
    threads = max(1, torch.get_num_threads() // workers)
    level = logging.getLogger("pixcon").getEffectiveLevel()
    log.info("study: %d runs in %d worker processes, %d thread(s) each", len(jobs), workers, threads)
    results: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(level,),
    ) as pool:
        futures = {pool.submit(run_job, replace(job, threads=threads)): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                i = futures[future]
                if error is not None:
                    log.error(
                        "study run %s failed: %s; waiting for the runs in flight", jobs[i].cell.label, error
                    )
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise StudyRunError(f"study run {jobs[i].cell.label} failed: {error}") from error
                results[i] = future.result()
                on_done(jobs[i])
    return [results[i] for i in range(len(jobs))]


def _submitted(job: Job) -> dict[str, Any] | None:
    """A submitit task: under a multi-task SLURM job (Fabric's multi-GPU runs) every task trains,
    and task 0 alone scores and records."""
    import submitit  # an optional extra (pixcon[cluster]), needed only on this path

    try:
        rank = submitit.JobEnvironment().global_rank
    except RuntimeError:  # not inside a submitit job (the debug executor)
        rank = 0
    if rank != 0:
        train_job(job)
        return None
    return run_job(job)


def _submitit(
    jobs: Sequence[Job], kind: str, folder: Path, params: dict[str, Any], on_done: Progress
) -> list[dict[str, Any]]:
    try:
        import submitit  # an optional extra (pixcon[cluster])
    except ImportError as err:
        raise ConfigError(
            f"--executor {kind} needs submitit: pip install 'pixcon[cluster]' (or pip install submitit)"
        ) from err
    cluster = "local" if kind == "submitit-local" else "slurm"
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    params.setdefault("timeout_min", 24 * 60)
    params.setdefault("name", "pixcon-study")
    try:
        executor.update_parameters(**params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--cluster-param: {err}") from err
    with executor.batch():  # one SLURM job array
        handles = [executor.submit(_submitted, job) for job in jobs]
    log.info("study: submitted %d runs (%s), logs in %s", len(jobs), kind, folder)
    results: list[dict[str, Any]] = []
    for job, handle in zip(jobs, handles, strict=True):
        try:
            result = handle.result()
        except Exception as err:  # submitit's FailedJobState / UncompletedJobError
            raise StudyRunError(
                f"study run {job.cell.label} failed in job {handle.job_id} "
                f"(logs: {handle.paths.stderr}): {str(err).splitlines()[-1] if str(err) else err!r}"
            ) from err
        assert result is not None
        results.append(result)
        on_done(job)
    return results

"""Where simulation tasks run: in-process, a dask LocalCluster or a dask-jobqueue SLURMCluster.

The task functions are pure (arguments in, arrays out); this module only schedules them and hands each
result to a callback on the calling process, which writes it. The same task code runs under every
executor, so tests use the in-process one and the workflow the clusters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence

from tqdm import tqdm

from stemstrain.config import Cluster

__all__ = ["available_cores", "run_tasks"]

log = logging.getLogger(__name__)

# Workers return freed memory to the OS and run single-threaded numerics (the worker count is the parallelism).
WORKER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _client(cluster: Cluster, n_tasks: int) -> Iterator:
    from dask.distributed import Client

    if cluster.kind == "local":
        from dask.distributed import LocalCluster

        workers = min(cluster.workers or max(1, available_cores() // cluster.threads_per_worker), n_tasks)
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=cluster.threads_per_worker,
                processes=True,
                dashboard_address=None,
                env=WORKER_ENV,
            ) as local,
            Client(local) as client,
        ):
            yield client
        return
    from dask_jobqueue import SLURMCluster

    with SLURMCluster(
        queue=cluster.queue,
        account=cluster.account,
        cores=cluster.cores,
        processes=max(1, cluster.cores // cluster.threads_per_worker),
        memory=cluster.memory,
        walltime=cluster.walltime,
        job_extra_directives=cluster.job_extra_directives,
        job_script_prologue=[f"export {k}={v}" for k, v in WORKER_ENV.items()],
    ) as slurm:
        slurm.scale(jobs=min(cluster.workers or 1, n_tasks))
        with Client(slurm) as client:
            yield client


def run_tasks(
    function: Callable,
    tasks: Sequence[tuple[str, tuple]],
    cluster: Cluster,
    on_result: Callable[[str, object], None],
    description: str = "simulate",
    items_per_task: Sequence[int] | None = None,
    unit: str = "pattern",
) -> float:
    """Run ``function(*args)`` for each ``(key, args)`` and pass each result to ``on_result(key, result)``.

    A LocalCluster starts its workers by spawning Python processes that import the caller's main
    module, so a script that calls this (directly or through ``simulate_training_set``) must do so
    under ``if __name__ == "__main__":``; the ``stemstrain`` command and pytest already are.

    Parameters
    ----------
    function : callable
        Importable, pure task function.
    tasks : sequence of (str, tuple)
        Task key (unique) and positional arguments.
    cluster : stemstrain.config.Cluster
        Executor: ``none`` runs in this process, ``local`` on a LocalCluster, ``slurm`` on a SLURMCluster.
    on_result : callable
        Called on this process for every finished task, in completion order.
    description, unit : str
        Progress-bar label and unit.
    items_per_task : sequence of int, optional
        Items (patterns) each task makes, for the progress bar and rate; 1 per task when omitted.

    Returns
    -------
    float
        Items per second over the whole run (0 when there was nothing to do).
    """
    counts = dict(zip((k for k, _ in tasks), items_per_task or [1] * len(tasks), strict=True))
    total = sum(counts.values())
    if not tasks:
        return 0.0
    start = time.perf_counter()
    with tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, mininterval=1.0) as progress:
        if cluster.kind == "none":
            for key, args in tasks:
                on_result(key, function(*args))
                progress.update(counts[key])
        else:
            from dask.distributed import as_completed

            with _client(cluster, len(tasks)) as client:
                futures = {
                    client.submit(function, *args, key=f"{description}-{key}", pure=False): key for key, args in tasks
                }
                for future in as_completed(futures):
                    key = futures[future]
                    on_result(key, future.result())
                    future.release()
                    progress.update(counts[key])
    elapsed = time.perf_counter() - start
    rate = total / elapsed if elapsed > 0 else 0.0
    log.info(
        "%s: %d %ss in %.1f s (%.2f %ss/s, executor %s)", description, total, unit, elapsed, rate, unit, cluster.kind
    )
    return rate

"""Where tasks run: in this process, on a dask LocalCluster or on a dask-jobqueue SLURMCluster.

The one executor of every dask stage (simulate, simulate-scan, the strain run on a cluster). Task
functions are importable and pure, or write only their own region of a resumable store; this
module schedules them and hands each result to a callback on the calling process. The same task
code runs under every executor, so tests use the in-process one and the workflow the clusters.
A :class:`~stemstrain.config.Cluster` says which executor and how large.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence

from tqdm import tqdm

from stemstrain.config import Cluster

__all__ = ["available_cores", "dask_client", "run_tasks", "worker_env"]

log = logging.getLogger(__name__)

# Size of a Slurm worker job where neither the Cluster nor the site's dask jobqueue.yaml gives one.
SLURM_CORES = 1
SLURM_MEMORY = "4GB"


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a dask worker process with ``threads`` threads.

    The worker returns freed memory to the OS, and its numerics (OpenMP, BLAS, numba, torch) use the
    worker's own threads only, so that workers do not oversubscribe the cores: the worker count is
    the parallelism.
    """
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    return env | {
        name: str(threads)
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
    }


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _local_cluster(cluster: Cluster, n_tasks: int | None):
    from dask.distributed import LocalCluster

    workers = cluster.workers or max(1, available_cores() // cluster.threads_per_worker)
    return LocalCluster(
        n_workers=min(workers, n_tasks or workers),
        threads_per_worker=cluster.threads_per_worker,
        processes=True,
        dashboard_address=None,
        env=worker_env(cluster.threads_per_worker),
    )


def _slurm_cluster(cluster: Cluster, n_tasks: int | None):
    import dask
    from dask_jobqueue import SLURMCluster

    # Cores and memory that the Cluster leaves unset come from the site's ~/.config/dask/jobqueue.yaml.
    cores = cluster.cores or dask.config.get("jobqueue.slurm.cores", None) or SLURM_CORES
    memory = cluster.memory or dask.config.get("jobqueue.slurm.memory", None) or SLURM_MEMORY
    slurm = SLURMCluster(
        queue=cluster.queue,
        account=cluster.account,
        cores=cores,
        processes=max(1, cores // cluster.threads_per_worker),
        memory=memory,
        walltime=cluster.walltime,
        job_extra_directives=cluster.job_extra_directives,
        job_script_prologue=[f"export {k}={v}" for k, v in worker_env(cluster.threads_per_worker).items()],
    )
    jobs = cluster.workers or 1
    slurm.scale(jobs=min(jobs, n_tasks or jobs))
    return slurm


@contextlib.contextmanager
def dask_client(cluster: Cluster, n_tasks: int | None = None) -> Iterator:
    """A dask distributed Client on the LocalCluster or SLURMCluster that ``cluster`` describes.

    A LocalCluster starts its workers by spawning Python processes that import the caller's main
    module, so a script that starts one must do so under ``if __name__ == "__main__":``; the
    ``stemstrain`` command and pytest already are.

    Parameters
    ----------
    cluster : stemstrain.config.Cluster
        ``kind`` local or slurm, and its size.
    n_tasks : int, optional
        Tasks to come; no more workers (local) or jobs (slurm) than tasks are started.
    """
    from dask.distributed import Client

    if cluster.kind not in ("local", "slurm"):
        raise ValueError(f"a dask client needs a local or slurm cluster, found kind {cluster.kind!r}")
    make = _local_cluster if cluster.kind == "local" else _slurm_cluster
    environ = dict(os.environ)
    try:
        with make(cluster, n_tasks) as scheduled, Client(scheduled) as client:
            _set_environ(environ)
            yield client
    finally:
        _set_environ(environ)


def _set_environ(environ: dict[str, str]) -> None:
    """Give this process the environment ``environ`` back.

    distributed's nannies write their workers' pre-spawn environment (``OMP_NUM_THREADS=1``,
    ``MKL_NUM_THREADS=1``, ...) into the environment of the process that starts a LocalCluster (again
    at each worker restart) and leave it there, so a library that loads its thread pool later in this
    process (torch imported after a simulation, ONNX Runtime, numba) would run on one core.
    """
    os.environ.clear()
    os.environ.update(environ)


def run_tasks(
    function: Callable,
    tasks: Sequence[tuple[str, tuple]],
    cluster: Cluster,
    on_result: Callable[[str, object], None],
    description: str = "tasks",
    items_per_task: Sequence[int] | None = None,
    unit: str = "pattern",
    client=None,
    progress: bool = True,
) -> float:
    """Run ``function(*args)`` for each ``(key, args)`` and pass each result to ``on_result(key, result)``.

    Parameters
    ----------
    function : callable
        Importable task function.
    tasks : sequence of (str, tuple)
        Task key (unique) and positional arguments.
    cluster : stemstrain.config.Cluster
        Executor: ``none`` runs in this process, ``local`` on a LocalCluster, ``slurm`` on a
        SLURMCluster (see :func:`dask_client`).
    on_result : callable
        Called on this process for every finished task, in completion order.
    description, unit : str
        Progress-bar label and unit.
    items_per_task : sequence of int, optional
        Items (patterns) each task makes, for the progress bar and rate; 1 per task when omitted.
    client : dask.distributed.Client, optional
        A running client to submit to instead of the executor of ``cluster``.
    progress : bool
        Show a progress bar.

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
    bar = tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, mininterval=1.0, disable=not progress)
    with bar, contextlib.ExitStack() as stack:
        if client is None and cluster.kind == "none":
            for key, args in tasks:
                on_result(key, function(*args))
                bar.update(counts[key])
        else:
            from dask.distributed import as_completed

            if client is None:
                client = stack.enter_context(dask_client(cluster, len(tasks)))
            futures = {
                client.submit(function, *args, key=f"{description}-{key}", pure=False): key for key, args in tasks
            }
            for future in as_completed(futures):
                key = futures[future]
                on_result(key, future.result())
                future.release()
                bar.update(counts[key])
    elapsed = time.perf_counter() - start
    rate = total / elapsed if elapsed > 0 else 0.0
    executor = "client" if client is not None and cluster.kind == "none" else cluster.kind
    log.info("%s: %d %ss in %.1f s (%.2f %ss/s, executor %s)", description, total, unit, elapsed, rate, unit, executor)
    return rate

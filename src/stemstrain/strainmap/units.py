"""Work units of the strain run and the task that fits one, on any process.

A unit is a block of whole patterns aligned with the input chunks (:func:`plan_units`). The task
(:func:`fit_unit_task`) reads its patterns, detects their spots, indexes them to the initial
lattice and fits each lattice (:func:`stemstrain.lattice.fit_patterns`), and writes the unit's
region of the partial store. It needs only the :class:`Job` (paths and numbers), so the same task
runs in this process, on a dask LocalCluster or on a SLURMCluster; each process builds its scan and
detector once, or uses those of the run in this process (:func:`local_worker`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator

import numpy as np
import xarray as xr

from stemstrain.detect import Detector, make_detector
from stemstrain.io import SCAN_DIMS, ResumableStore, check_counts, open_4d, read_values
from stemstrain.lattice import FitOptions, fit_patterns, reciprocal_vectors
from stemstrain.runtime import Timings

__all__ = ["Job", "WorkUnit", "fit_unit_task", "local_worker", "plan_units"]


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """A block of whole patterns ``[y0:y1, x0:x1]`` of the scan; its key names it in the store."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def key(self) -> str:
        return f"fit-{self.y0}-{self.x0}"

    @property
    def region(self) -> dict[str, slice]:
        return {"scan_y": slice(self.y0, self.y1), "scan_x": slice(self.x0, self.x1)}

    @property
    def size(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def plan_units(data: xr.DataArray, target_patterns: int) -> tuple[tuple[int, int], list[WorkUnit]]:
    """Split the scan into blocks of whole input chunks holding about ``target_patterns`` patterns.

    Returns the block shape (the output chunks, so that units write disjoint Zarr chunks) and the units.
    """
    n_y, n_x = data.shape[:2]
    if data.chunks is not None:
        chunk_y, chunk_x = data.chunks[0][0], data.chunks[1][0]
    else:
        chunk_y, chunk_x = 1, n_x
    per_chunk = chunk_y * chunk_x
    factor_x = max(1, min(math.ceil(n_x / chunk_x), target_patterns // per_chunk))
    unit_x = min(n_x, chunk_x * factor_x)
    factor_y = max(1, target_patterns // (chunk_y * unit_x)) if unit_x >= n_x else 1
    unit_y = min(n_y, chunk_y * factor_y)
    units = [
        WorkUnit(y0, min(y0 + unit_y, n_y), x0, min(x0 + unit_x, n_x))
        for y0 in range(0, n_y, unit_y)
        for x0 in range(0, n_x, unit_x)
    ]
    return (unit_y, unit_x), units


@dataclasses.dataclass(frozen=True)
class Job:
    """What a task needs to fit units on any process: paths and numbers, nothing open (picklable)."""

    scan_path: str
    out: str
    method: str
    model: str | None
    detector_options: tuple
    lattice0: tuple
    origin0: tuple
    fit_options: FitOptions
    calibration: tuple = ()  # rows (h, k, dx, dy, weight factor) of lattice.reflection_calibration


def fit_unit_task(unit: WorkUnit, job: Job) -> int:
    """Fit one unit and write its region of the store (a task on any process); returns its patterns."""
    worker = _worker(job)
    patterns, seconds = worker.reader(unit)
    worker.timings.add("read", seconds)
    positions, weights = worker.detector(np.asarray(patterns, dtype=np.float32))  # it times its own stages
    with worker.timings.measure("fit"):
        result = _fitted_region(positions, weights, worker.detector.space, unit, job)
    with worker.timings.measure("write"):
        ResumableStore(job.out).write_region(result, unit.region, unit.key)
    return unit.size


def _fitted_region(positions: np.ndarray, weights: np.ndarray, space: str, unit: WorkUnit, job: Job) -> xr.Dataset:
    """Index the spots of one unit's patterns and fit their lattices; returns the region Dataset to write."""
    fit_origin = space == "reciprocal"
    lattice0, origin0 = np.array(job.lattice0), np.array(job.origin0)
    calibration = np.asarray(job.calibration, dtype=float).reshape(-1, 5)
    fit = fit_patterns(positions, weights, lattice0, origin0, fit_origin, job.fit_options, calibration)
    lattice = fit["lattice"] if fit_origin else reciprocal_vectors(fit["lattice"])
    shape = (unit.y1 - unit.y0, unit.x1 - unit.x0)
    return xr.Dataset(
        {
            "lattice": (SCAN_DIMS + ("axis", "vector"), lattice.reshape(shape + (2, 2))),
            "origin": (SCAN_DIMS + ("axis",), fit["origin"].reshape(shape + (2,))),
            "fit_error": (SCAN_DIMS, fit["fit_error"].reshape(shape)),
            "n_peaks": (SCAN_DIMS, fit["n_peaks"].reshape(shape).astype(np.int32)),
            "mask": (SCAN_DIMS, fit["valid"].reshape(shape)),
        }
    )


class _ReadAhead:
    """Patterns (n, k_y, k_x) of work units and the seconds spent reading them.

    With an ``order`` (a run in this process), the unit after the one asked for is read in a thread
    while this one is computed. A damaged chunk, NaN/inf or negative patterns are bad input.
    """

    def __init__(self, scan: xr.Dataset, order: list[WorkUnit] | None = None):
        self.scan = scan
        self.following = dict(zip(order, order[1:], strict=False)) if order else {}
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1) if order else None
        self.pending: dict[WorkUnit, concurrent.futures.Future] = {}

    def __call__(self, unit: WorkUnit) -> tuple[np.ndarray, float]:
        future = self.pending.pop(unit, None)
        following = self.following.get(unit)
        if following is not None:
            self.pending[following] = self.pool.submit(self._read, following)
        return future.result() if future is not None else self._read(unit)

    def _read(self, unit: WorkUnit) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        source = self.scan.encoding.get("source", "4D data")
        where = f" at scan_y {unit.y0}:{unit.y1}, scan_x {unit.x0}:{unit.x1}"
        block = read_values(self.scan["data"].isel(unit.region), source, where)
        check_counts(block, source, "data", where)
        return block.reshape((-1,) + block.shape[2:]), time.perf_counter() - start

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass
class _Worker:
    """The scan, detector and reader of a job on one process, with the seconds its stages took."""

    scan: xr.Dataset
    detector: Detector
    reader: _ReadAhead
    timings: Timings


_WORKERS: dict[Job, _Worker] = {}


def _worker(job: Job) -> _Worker:
    """The worker of a job on this process, built once (a dask worker opens the scan and loads the model)."""
    if job not in _WORKERS:
        _WORKERS.clear()
        scan = open_4d(job.scan_path)
        detector = make_detector(job.method, scan, model=job.model, **dict(job.detector_options))
        _WORKERS[job] = _Worker(scan, detector, _ReadAhead(scan), Timings())
    return _WORKERS[job]


@contextlib.contextmanager
def local_worker(
    job: Job, scan: xr.Dataset, detector: Detector, order: list[WorkUnit], timings: Timings
) -> Iterator[None]:
    """Make this process the worker of ``job`` with the run's own scan and detector.

    The units of ``order`` are read one ahead in a thread while the current one is computed; the
    seconds of each stage go to ``timings``.
    """
    _WORKERS.clear()
    worker = _Worker(scan, detector, _ReadAhead(scan, order), timings)
    _WORKERS[job] = worker
    try:
        yield
    finally:
        _WORKERS.pop(job, None)
        worker.reader.close()

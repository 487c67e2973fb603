"""The strain run: a 4D scan in, a strain map out, in three phases over one resumable store.

1. :func:`plan_strain_map`: open the scan, build the method's detector (:mod:`stemstrain.detect`),
   find the initial lattice g1, g2 in the reference region's mean pattern, split the scan into
   work units (blocks of whole patterns aligned with the input chunks) and start, or resume,
   ``<out>.partial`` (:class:`stemstrain.io.ResumableStore`);
2. :func:`fit_units`: each unit not yet done is a task of :func:`stemstrain.execute.run_tasks`
   (this process, reading the next unit ahead; or a dask LocalCluster or SLURMCluster, as
   ``StrainConfig.cluster`` says): its spots are detected, indexed to the initial lattice and its
   lattices fitted (:func:`stemstrain.lattice.fit_patterns`), and the unit writes its region;
3. :func:`write_strain`: the reference lattice is the median over the reference region, the strain
   of every unit is written by region (:mod:`stemstrain.strain`) and the store renamed to ``<out>``.

:func:`strain_map` runs the three. Nothing holds the whole 4D array: memory is bounded by a couple
of work units, and an interrupted run resumes from the units it finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from stemstrain.config import StrainConfig, updated
from stemstrain.detect import NETWORK, Detector, make_detector
from stemstrain.errors import StemstrainInputError
from stemstrain.execute import run_tasks
from stemstrain.io import (
    SCAN_DIMS,
    ResumableStore,
    check_counts,
    check_reference_roi,
    open_4d,
    read_values,
    strain_map_dataset,
)
from stemstrain.lattice import (
    SCATTER_LIMIT,
    FitOptions,
    initial_lattice,
    lagrange_reduce,
    reciprocal_vectors,
    reflection_calibration,
)
from stemstrain.runtime import Timings
from stemstrain.strain import STRAIN_COMPONENTS, reference_lattice, strain_from_lattice
from stemstrain.strainmap.units import Job, WorkUnit, fit_unit_task, local_worker, plan_units

REFERENCE_VALID_WARNING = 0.95
"""Below this fraction of valid fits in the reference region a strain run warns [1]."""

__all__ = [
    "StrainRun",
    "describe_readout",
    "fit_units",
    "material_lattice",
    "plan_strain_map",
    "strain_map",
    "write_strain",
]


@dataclasses.dataclass
class StrainRun:
    """A planned strain run: the scan and its detector, the initial lattice, the units and their store."""

    job: Job
    config: StrainConfig
    scan: xr.Dataset
    detector: Detector
    reference_roi: tuple[int, int, int, int]
    units: list[WorkUnit]
    store: ResumableStore
    timings: Timings

    @property
    def todo(self) -> list[WorkUnit]:
        """The units that no earlier run finished."""
        return [unit for unit in self.units if not self.store.is_done(unit.key)]


def strain_map(
    scan_path: str | Path,
    out: str | Path,
    method: str = NETWORK,
    model=None,
    config: StrainConfig | None = None,
    *,
    reference_roi: tuple[int, int, int, int] | None = None,
    detector_options: dict | None = None,
    fit_options: FitOptions = FitOptions(),
    fresh: bool = False,
    progress: bool = True,
    client=None,
    timings: dict | None = None,
    **settings,
) -> Path:
    """Measure the strain map of a 4D scan and write it in the strain-map contract.

    Parameters
    ----------
    scan_path : path
        4D-data Zarr store (contract of docs/DESIGN.md).
    out : path
        Strain-map Zarr store to write (via ``<out>.partial``; an earlier partial run resumes).
    method : {"unet", "bragg", "cepstrum", "cepstrum-multi", "peaks"}
        Spot detector (:data:`stemstrain.detect.METHODS`).
    model : path or (torch.nn.Module, dict), optional
        Exported network, for ``unet`` (a path when the units run on a cluster); default: the
        shipped model for the scan (:func:`stemstrain.model.default_model`: camera-v1 for data resampled
        to the network's calibration, else fast-v1).
    config : StrainConfig, optional
        Network batch, device, precision, compile, work-unit size and the cluster of the units.
    reference_roi : (y0, y1, x0, x1), optional
        Half-open scan indices of the unstrained reference region; default: the scan's
        ``reference_roi`` attr, else the whole scan.
    detector_options : dict, optional
        Further options of the method's detector (:func:`stemstrain.detect.make_detector`).
    fit_options : FitOptions
        Indexing and fit validity settings.
    fresh : bool
        Discard a partial store from an earlier run instead of resuming it.
    progress : bool
        Show a progress bar with patterns/s.
    client : dask.distributed.Client, optional
        Run the units on this running client instead of the executor of ``config.cluster``.
    timings : dict, optional
        Filled with seconds per stage (read, network, peaks, fit, write, total) and pattern count
        (stages inside the units are timed when they run in this process).
    **settings
        Options of :class:`~stemstrain.config.StrainConfig` that override ``config``
        (``batch_size=256, precision="fp32"``).

    Returns
    -------
    Path
        ``out``.
    """
    start = time.perf_counter()
    config = updated(config or StrainConfig(), settings, "strain")
    run = plan_strain_map(scan_path, out, method, model, config, reference_roi, detector_options, fit_options, fresh)
    try:
        fit_units(run, progress=progress, client=client)
        with run.timings.measure("write"):
            written = write_strain(run)
    except StemstrainInputError:
        # the input is bad (a damaged chunk, NaN, no reference lattice): a resume would fail the same way
        run.store.discard()
        raise
    run.timings["total"] = time.perf_counter() - start
    run.timings["patterns"] = sum(unit.size for unit in run.units)
    if timings is not None:
        timings.update(run.timings)
    return written


# ---------------------------------------------------------------- 1. plan


def plan_strain_map(
    scan_path: str | Path,
    out: str | Path,
    method: str = NETWORK,
    model=None,
    config: StrainConfig = StrainConfig(),
    reference_roi: tuple[int, int, int, int] | None = None,
    detector_options: dict | None = None,
    fit_options: FitOptions = FitOptions(),
    fresh: bool = False,
) -> StrainRun:
    """Open the scan, build its detector, find the initial lattice and start (or resume) the store.

    Parameters are those of :func:`strain_map`.

    Raises
    ------
    StemstrainInputError
        For a bad scan, reference region, method, option or model, or a reference region whose
        mean pattern shows no lattice.
    """
    scan_path, out = Path(scan_path), Path(out)
    scan = open_4d(scan_path)
    roi = _reference_roi(scan, scan_path, reference_roi)
    if method == NETWORK:
        from stemstrain.model import resolve_model

        model = resolve_model(model, scan)
    options = {**detector_settings(method, config), **(detector_options or {})}
    detector = make_detector(method, scan, model=model, **options)
    timings = Timings()
    with timings.measure("read"):
        mean_pattern = reference_mean(scan, roi)
    if not np.any(mean_pattern > 0):
        raise StemstrainInputError(f"{scan_path}: the patterns of the reference region {list(roi)} are all zero")
    positions, weights = detector(mean_pattern[None])
    lattice0, origin0 = initial_lattice(
        positions[0], weights[0], detector.space, fit_options, fallback=material_lattice(scan.attrs, detector.space)
    )
    if fit_options.scatter_limit is None:  # weights that are inverse variances can be checked against the scatter
        limit = SCATTER_LIMIT if getattr(detector, "inverse_variance_weights", False) else 0.0
        fit_options = dataclasses.replace(fit_options, scatter_limit=limit)
    calibration = np.zeros((0, 5))
    if fit_options.static_offsets or fit_options.scatter_limit > 0:
        with timings.measure("read"):
            sample = _reference_patterns(scan, roi)
        positions, weights = detector(sample)
        reciprocal = detector.space == "reciprocal"
        calibration = reflection_calibration(positions, weights, lattice0, origin0, reciprocal, fit_options)
    unit_shape, units = plan_units(scan["data"], config.unit_patterns)
    settings = {
        "method": method,
        "model": Path(model).stem if isinstance(model, (str, Path)) else None,
        "model_hash": getattr(detector, "model_hash", None),
        "reference_roi": list(roi),
        "initial_g1": lattice0[:, 0].tolist(),
        "initial_g2": lattice0[:, 1].tolist(),
        "initial_origin": origin0.tolist(),
        "fit_options": dataclasses.asdict(fit_options),
        "reflection_calibration": calibration.tolist(),
        "lattice_space": detector.space,
        "source": str(scan_path),
        "precision": getattr(detector, "precision", None),
        "engine": getattr(detector, "engine", None),
        "readout": getattr(detector, "refine", None),
        "readout_template": getattr(detector, "template_source", None),
        "readout_tilt_prior": getattr(detector, "tilt_prior", None),
        "readout_disk_correction": getattr(detector, "disk_correction", None),
    }
    store = ResumableStore(out)
    lattice0, origin0, calibration = _start_store(store, scan, unit_shape, settings, fresh)
    job = Job(
        str(scan_path.resolve()),
        str(out.resolve()),
        method,
        str(Path(model).resolve()) if isinstance(model, (str, Path)) else None,
        tuple(sorted(options.items())),
        tuple(map(tuple, lattice0)),
        tuple(origin0),
        fit_options,
        tuple(map(tuple, calibration)),
    )
    return StrainRun(job, config, scan, detector, roi, units, store, timings)


def detector_settings(method: str, config: StrainConfig) -> dict:
    """The detector options a strain config sets: where and how the network runs and is read; a baseline's device."""
    if method == "peaks":
        return {}
    if method != NETWORK:
        return {"device": config.device}
    return {
        "device": config.device,
        "batch_size": config.batch_size,
        "precision": config.precision,
        "engine": config.engine,
        "compile": config.compile,
        "refine": config.refine,
    }


def _reference_roi(scan: xr.Dataset, scan_path: Path, roi) -> tuple[int, int, int, int]:
    shape = (scan.sizes["scan_y"], scan.sizes["scan_x"])
    if roi is None:
        roi = scan.attrs.get("reference_roi")
    if roi is None:
        roi = (0, shape[0], 0, shape[1])
        warnings.warn(f"{scan_path}: no reference region given; the whole scan is the reference", stacklevel=3)
    return check_reference_roi(roi, shape, "--ref-roi")


def _read_reference(scan: xr.Dataset, roi, max_patterns: int, reduce) -> np.ndarray:
    """``reduce`` of the reference region's patterns on a regular sub-grid of at most ``max_patterns``
    positions, read and checked (a damaged chunk, NaN/inf or negative counts are bad input)."""
    y0, y1, x0, x1 = roi
    stride = max(1, int(math.ceil(math.sqrt((y1 - y0) * (x1 - x0) / max_patterns))))
    block = scan["data"].isel(scan_y=slice(y0, y1, stride), scan_x=slice(x0, x1, stride))
    source, where = scan.encoding.get("source", "4D data"), f" in the reference region {list(roi)}"
    values = read_values(reduce(block), source, where)
    check_counts(values.reshape(-1, *values.shape[-2:]), source, "data", where)
    return values


def reference_mean(scan: xr.Dataset, roi, max_patterns: int = 4096) -> np.ndarray:
    """Mean pattern of the reference region, from at most ``max_patterns`` positions."""
    mean = _read_reference(scan, roi, max_patterns, lambda b: b.astype(np.float64).mean(dim=("scan_y", "scan_x")))
    return mean.astype(np.float32)


def _reference_patterns(scan: xr.Dataset, roi, max_patterns: int = 64) -> np.ndarray:
    """Patterns (n, k_y, k_x) of the reference region, at most ``max_patterns`` of them.

    They are read by the detector once more before the map (the reflection calibration): 64 keep that
    within ~1.5 % of a 4096-pattern run, and measure a reflection's mean offset to 1/8 of its scatter.
    """
    patterns = _read_reference(scan, roi, max_patterns, lambda b: b.astype(np.float32))
    return patterns.reshape(-1, *patterns.shape[-2:])


def material_lattice(attrs: dict, space: str) -> np.ndarray | None:
    """Lattice basis of the crystal that a scan's ``material`` / ``zone_axis`` attrs name, if known.

    Parameters
    ----------
    attrs : dict
        Scan attributes; ``material`` is a crystal name of :mod:`stemstrain.simulate.crystals`
        (e.g. ``"Si_110"``) or an element/compound (``"Si"``) completed by ``zone_axis`` (``"[110]"``).
    space : {"reciprocal", "real"}
        Reciprocal basis [1/angstrom] or the projected real-space cell [angstrom].

    Returns
    -------
    ndarray (2, 2) or None
        Lagrange-reduced basis as columns, right-handed; None for an unknown or absent material.
    """
    material = attrs.get("material")
    if not material:
        return None
    try:
        from stemstrain.simulate.crystals import CRYSTALS, projected_cell
    except ImportError:
        return None
    zone = "".join(ch for ch in str(attrs.get("zone_axis", "")) if ch.isdigit() or ch == "-")
    name = next((n for n in (str(material), f"{material}_{zone}") if n in CRYSTALS), None)
    if name is None:
        return None
    cell = projected_cell(name)
    return lagrange_reduce(cell if space == "real" else reciprocal_vectors(cell))


def _start_store(
    store: ResumableStore, scan: xr.Dataset, unit_shape: tuple[int, int], settings: dict, fresh: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Start the partial store, or resume one left by a run with the same settings.

    Returns the initial lattice, origin and reflection calibration the units are fitted with: a resumed
    run keeps exactly those its finished units were fitted with.
    """
    measured = ("initial_g1", "initial_g2", "reflection_calibration")  # numbers a rerun may round differently
    lattice0 = np.stack([settings["initial_g1"], settings["initial_g2"]], axis=-1)
    origin0 = np.asarray(settings["initial_origin"])
    calibration = np.asarray(settings["reflection_calibration"], dtype=float).reshape(-1, 5)
    if store.started and not fresh:
        previous = xr.open_zarr(store.partial).attrs
        if any(previous.get(k) != v for k, v in settings.items() if k not in measured):
            warnings.warn(f"{store.partial}: left by a run with other settings; starting afresh", stacklevel=3)
            fresh = True
        else:
            lattice0 = np.stack([previous["initial_g1"], previous["initial_g2"]], axis=-1)
            origin0 = np.asarray(previous["initial_origin"])
            calibration = np.asarray(previous["reflection_calibration"], dtype=float).reshape(-1, 5)
    fit_units = "1/angstrom" if settings["lattice_space"] == "reciprocal" else "angstrom"
    attrs = {k: v for k, v in settings.items() if v is not None}
    store.start(_template(scan, unit_shape, attrs, fit_units), fresh)
    return lattice0, origin0, calibration


def _template(scan: xr.Dataset, unit_shape: tuple[int, int], attrs: dict, fit_units: str) -> xr.Dataset:
    """Lazy output store: the strain-map contract plus the fitted lattice and origin per position."""
    shape = (scan.sizes["scan_y"], scan.sizes["scan_x"])
    nan = np.broadcast_to(np.nan, shape)
    ds = strain_map_dataset(
        {name: nan for name in STRAIN_COMPONENTS},
        scan["scan_y"].values,
        scan["scan_x"].values,
        fit_error=nan,
        n_peaks=np.broadcast_to(np.int32(0), shape),
        mask=np.broadcast_to(False, shape),
        **attrs,
    )
    ds["fit_error"].attrs["units"] = fit_units
    ds["lattice"] = (
        SCAN_DIMS + ("axis", "vector"),
        np.broadcast_to(np.nan, shape + (2, 2)),
        {"units": "1/angstrom", "long_name": "fitted reciprocal basis, g1 and g2 as columns (x, y)"},
    )
    ds["origin"] = (
        SCAN_DIMS + ("axis",),
        np.broadcast_to(np.nan, shape + (2,)),
        {"units": fit_units, "long_name": "fitted position of the (0, 0) spot"},
    )
    return ds.chunk({"scan_y": unit_shape[0], "scan_x": unit_shape[1], "axis": 2, "vector": 2})


# ---------------------------------------------------------------- 2. fit the units


def fit_units(run: StrainRun, units: list[WorkUnit] | None = None, progress: bool = True, client=None) -> None:
    """Detect, index and fit the units (default: those not done), each writing its region of the store.

    Parameters
    ----------
    run : StrainRun
        From :func:`plan_strain_map`.
    units : list of WorkUnit, optional
        The units to fit, e.g. a few of ``run.todo``; default: every unit not done.
    progress : bool
        Show a progress bar with patterns/s.
    client : dask.distributed.Client, optional
        A running client to submit the units to instead of the executor of ``run.config.cluster``.
    """
    todo = run.todo if units is None else list(units)
    in_process = client is None and run.config.cluster.kind == "none"
    if not in_process and run.job.method == NETWORK and run.job.model is None:
        raise StemstrainInputError("model: a distributed run needs the model as a checkpoint path")
    with contextlib.ExitStack() as stack:
        if in_process:
            stack.enter_context(local_worker(run.job, run.scan, run.detector, todo, run.timings))
        run_tasks(
            fit_unit_task,
            [(unit.key, (unit, run.job)) for unit in todo],
            run.config.cluster,
            lambda key, patterns: None,
            description="strain",
            items_per_task=[unit.size for unit in todo],
            client=client,
            progress=progress,
        )
    # the detector's own stages (network, peaks) of the units run here
    detector_timings = getattr(run.detector, "timings", {}) if in_process else {}
    for stage, seconds in detector_timings.items():
        run.timings.add(stage, seconds)
    detector_timings.clear()


# ---------------------------------------------------------------- 3. strain


def write_strain(run: StrainRun) -> Path:
    """The reference lattice (median over the reference region), the strain of every unit, the final store.

    Raises
    ------
    StemstrainInputError
        If no valid lattice lies in the reference region.
    """
    store = run.store
    fitted = xr.open_zarr(store.partial)
    y0, y1, x0, x1 = run.reference_roi
    region = fitted.isel(scan_y=slice(y0, y1), scan_x=slice(x0, x1))
    # the region is cropped before it is read: the error names it as the user gave it
    label = f"{run.job.scan_path} (--method {run.job.method}): reference region [y0, y1, x0, x1] = {[y0, y1, x0, x1]}"
    mask = region["mask"].values
    try:
        reference = reference_lattice(region["lattice"].values, None, valid=mask, label=label)
    except StemstrainInputError as err:
        hint = _camera_hint(run)
        if not hint:
            raise
        raise StemstrainInputError(f"{err}; {hint}") from None
    n_valid, total = int(mask.sum()), mask.size
    if n_valid < REFERENCE_VALID_WARNING * total:
        hint = _camera_hint(run)
        warnings.warn(
            f"{label}: only {n_valid} of {total} positions ({100 * n_valid / total:.0f} %) have a valid lattice fit; "
            "in a crystal every pattern should, so this method misreads these patterns and the whole map is "
            "suspect" + (f"; {hint}" if hint else ""),
            stacklevel=3,
        )
    for unit in run.units:
        block = fitted.isel(unit.region)
        valid = block["mask"].values
        components = strain_from_lattice(np.where(valid[..., None, None], block["lattice"].values, np.nan), reference)
        finite = np.all([np.isfinite(components[name]) for name in STRAIN_COMPONENTS], axis=0)
        result = xr.Dataset({name: (SCAN_DIMS, components[name]) for name in STRAIN_COMPONENTS})
        result["mask"] = (SCAN_DIMS, valid & finite)
        store.write_region(result, unit.region, unit.key.replace("fit-", "strain-"))
    _record_reference(store.partial, reference)
    return store.finalize()


def describe_readout(attrs: dict) -> str:
    """One line on how a network map's disks were placed, from its attributes ("" for other maps).

    Says which network found the disks, which template placed them and whether their intensity tilt was
    fitted, or that the network's offsets placed them, and which disk correction moved them; where the
    template was simulated (no measured probe), it says how to give one.
    """
    corrected = attrs.get("readout_disk_correction")
    network = f"network {attrs['model']}; " if attrs.get("model") else ""
    if attrs.get("readout") == "offsets" and corrected:
        return f"{network}read-out: the network's offsets; disk centres corrected by {corrected}"
    if attrs.get("readout") != "template":
        return network.removesuffix("; ")
    source, tilt = attrs.get("readout_template"), attrs.get("readout_tilt_prior") or 0.0
    fit = f"each disk's intensity tilt fitted (tilt_prior {tilt:g})" if tilt else "plain correlation (tilt_prior 0)"
    parts = [f"{network}read-out: the {source} template at each network spot, {fit}"]
    if corrected:
        parts.append(f"disk centres corrected by {corrected}")
    if not tilt and source == "simulated":
        parts.append(
            "the scan has no measured vacuum probe: `stemstrain ingest --probe FILE` stores one, and the "
            "read-out then fits each disk's intensity tilt"
        )
    return "; ".join(parts)


def describe_fit(attrs: dict) -> str:
    """One line on the reference region's reflection calibration of a map's lattice fit ("" when it changed nothing)."""
    table = np.asarray(attrs.get("reflection_calibration") or np.zeros((0, 5)), dtype=float).reshape(-1, 5)
    parts = []
    if np.any(table[:, 2:4] != 0):
        parts.append(f"static offsets of {len(table)} reflections taken off")
    down = table[:, 4] < 1
    if down.any():
        limit = (attrs.get("fit_options") or {}).get("scatter_limit")
        flag = f" (--scatter-limit {limit:g}; 0: off)" if isinstance(limit, (int, float)) else ""
        parts.append(
            f"{int(down.sum())} of {len(table)} reflections weighted down (to {table[down, 4].min():.2g}-"
            f"{table[down, 4].max():.2g}) for their scatter in the reference region{flag}"
        )
    return "lattice fit: " + "; ".join(parts) if parts else ""


def _camera_hint(run: StrainRun) -> str:
    """The advice to try the camera model, for a network run with another model (else "")."""
    from stemstrain.model.export import CAMERA_MODEL

    if run.job.method != NETWORK or Path(str(run.job.model)).stem == CAMERA_MODEL:
        return ""
    return (
        "on real detector data (a diffuse halo, blurred spots, a saturated beam) "
        f"try --model {CAMERA_MODEL} (models/{CAMERA_MODEL}.md)"
    )


def _record_reference(partial: Path, reference: np.ndarray) -> None:
    """Record the reference lattice g1, g2 in the store's attributes."""
    import zarr

    group = zarr.open_group(str(partial), mode="r+")
    group.attrs.update({"g1": reference[:, 0].tolist(), "g2": reference[:, 1].tolist()})
    zarr.consolidate_metadata(str(partial))

"""Peers run fairly, scored like our own methods: tuned py4DSTEM, and the spread of a strain map in a region.

``run_py4dstem`` runs py4DSTEM 0.14.18 as /work/shared/reference/py4dstem-tuned.md prescribes, in
its own venv (``.venv-py4dstem``; py4DSTEM needs numpy < 2) through ``bench/py4dstem_runner.py``:
one process per core, each detecting disks on a slab of scan rows, then one process for the
scan-wide steps (origin fit, basis, lattice fit, strain against the reference region) on the joined
vectors, which makes the result independent of the number of processes (checked: identical maps).
The basis is chosen on the Bragg vector map of the reference region by default: on a scan over
several crystals the whole-scan map mixes their lattices (MgO nanocubes: spread 3.9e-3 instead of
2.8e-3). py4DSTEM's fitted lattice vectors are mapped into our convention (DESIGN.md) here, on our
side of the boundary, and written in the strain-map contract, so that ``stemstrain evaluate``
scores them like our methods. A kept ``work`` folder lets a second run (another reference region
or basis map) reuse the disk detection, which is nearly all of the cost.

Convention mapping (py4dstem-tuned.md): py4DSTEM's x is the first array axis (k_y), y the second
(k_x). It solves β = G G0⁻¹ (columns g1, g2, its axes) and reports e_xx_p = 1 − β00,
e_yy_p = 1 − β11, e_xy_p = −(β01 + β10)/2, θ_p = (β01 − β10)/2. In our axes T = P β P with
P = [[0, 1], [1, 0]], F = T⁻ᵀ, and F = R U gives ε = U − I and θ. The strain map is computed from its
fitted g1/g2 maps against their median over the reference region (the same median py4DSTEM takes);
the strain rebuilt from its reported e_xx_p, e_yy_p, e_xy_p, θ_p must agree, and the largest
difference is reported as ``convention_max_abs_diff``.

Usage::

    python bench/peers.py py4dstem SCAN.zarr OUT.zarr [--ref-roi Y0 Y1 X0 X1] [--vacuum-roi Y0 Y1 X0 X1]
        [--processes 2] [--basis-map reference|scan] [--work DIR] [--json RESULT.json]
    python bench/peers.py spread STRAIN.zarr --rows R0 R1 --cols C0 C1 [--json RESULT.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from stemstrain.errors import StemstrainInputError
from stemstrain.io import (
    check_reference_roi,
    k_calibration,
    open_4d,
    open_strain_map,
    read_values,
    strain_map_dataset,
    write_strain_map,
)
from stemstrain.strain import (
    STRAIN_COMPONENTS,
    reference_lattice,
    strain_from_deformation,
    strain_from_lattice,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY4DSTEM_VENV = ROOT / ".venv-py4dstem"
PY4DSTEM_INSTALL = (
    'python3 -m venv .venv-py4dstem && .venv-py4dstem/bin/pip install "py4DSTEM==0.14.18" "numpy==1.26.4" '
    'xarray "zarr>=3"'
)
RUNNER = HERE / "py4dstem_runner.py"
DEGENERATE_AREA = 1e-3
"""A fitted cell area |det(g1, g2)| below this fraction of the median marks a degenerate fit."""
SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])
"""P: exchanges py4DSTEM's (qx, qy) = (k_y, k_x) with our (x, y) = (k_x, k_y)."""


# ---------------------------------------------------------------- convention mapping


def py4dstem_transformation(e_xx_p, e_yy_p, e_xy_p, theta_p) -> np.ndarray:
    """py4DSTEM's β = G G0⁻¹ rebuilt exactly from the four numbers it reports.

    Parameters
    ----------
    e_xx_p, e_yy_p, e_xy_p, theta_p : array_like
        py4DSTEM's ``e_xx``, ``e_yy``, ``e_xy`` [1] and ``theta`` [rad], in its axes (x = k_y).

    Returns
    -------
    ndarray, shape (..., 2, 2)
        β = [[1 − e_xx_p, θ_p − e_xy_p], [−e_xy_p − θ_p, 1 − e_yy_p]], in py4DSTEM's axes.
    """
    e_xx_p, e_yy_p, e_xy_p, theta_p = np.broadcast_arrays(
        *(np.asarray(v, float) for v in (e_xx_p, e_yy_p, e_xy_p, theta_p))
    )
    return np.stack(
        [np.stack([1 - e_xx_p, theta_p - e_xy_p], axis=-1), np.stack([-e_xy_p - theta_p, 1 - e_yy_p], axis=-1)],
        axis=-2,
    )


def deformation_from_py4dstem(beta: np.ndarray) -> np.ndarray:
    """Our real-space deformation gradient F = (P β P)⁻ᵀ from py4DSTEM's β (its axes)."""
    return np.swapaxes(np.linalg.inv(SWAP @ np.asarray(beta, float) @ SWAP), -1, -2)


def lattice_from_py4dstem(g1x, g1y, g2x, g2y) -> np.ndarray:
    """Reciprocal basis as columns in our (x, y) axes from py4DSTEM's g1/g2 components (qx = our y).

    Returns
    -------
    ndarray, shape (..., 2, 2)
        ``[[g1_x, g2_x], [g1_y, g2_y]]`` with ``g_x = g_qy`` and ``g_y = g_qx`` (any length unit).
    """
    g1x, g1y, g2x, g2y = (np.asarray(v, float) for v in (g1x, g1y, g2x, g2y))
    return np.stack([np.stack([g1y, g2y], axis=-1), np.stack([g1x, g2x], axis=-1)], axis=-2)


# ---------------------------------------------------------------- running py4DSTEM


def py4dstem_python() -> Path:
    """The interpreter of the py4DSTEM venv; a clear error with the install command when missing."""
    python = PY4DSTEM_VENV / "bin" / "python"
    if not python.exists():
        raise StemstrainInputError(
            f"py4DSTEM venv not found at {PY4DSTEM_VENV}; create it in {ROOT} with: {PY4DSTEM_INSTALL}"
        )
    return python


def template_image(
    scan: xr.Dataset, source: str, probe: np.ndarray | None = None, vacuum_roi=None
) -> tuple[np.ndarray, str]:
    """The vacuum probe image for py4DSTEM's template, and where it came from.

    Parameters
    ----------
    scan : xr.Dataset
        4D data (contract of DESIGN.md), opened lazily.
    source : str
        The store path, for messages.
    probe : ndarray (k_y, k_x), optional
        A given probe image; wins over the rest.
    vacuum_roi : (y0, y1, x0, x1), optional
        Scan region in vacuum: its mean pattern is the probe.

    Without either, the scan's ``probe`` variable.
    """
    if probe is not None and vacuum_roi is not None:
        raise StemstrainInputError("give either a probe image or a vacuum region, not both")
    if probe is not None:
        image, origin = np.asarray(probe, float), "given image"
    elif vacuum_roi is not None:
        scan_shape = tuple(scan.sizes[d] for d in ("scan_y", "scan_x"))
        y0, y1, x0, x1 = check_reference_roi(vacuum_roi, scan_shape, "vacuum region")
        region = scan["data"][y0:y1, x0:x1].astype(np.float64).mean(("scan_y", "scan_x"))
        image = read_values(region, source, f" in vacuum region {[y0, y1, x0, x1]}")
        origin = f"mean pattern of vacuum region {[y0, y1, x0, x1]}"
    elif "probe" in scan:
        image, origin = read_values(scan["probe"], source), "scan variable 'probe'"
    else:
        raise StemstrainInputError(
            f"{source}: no 'probe' variable; give a vacuum region (--vacuum-roi) or a probe image"
        )
    expected = tuple(scan.sizes[d] for d in ("k_y", "k_x"))
    if image.shape != expected:
        raise StemstrainInputError(f"probe image has shape {image.shape}, the patterns {expected}")
    return image, origin


def _start(args: list[str], log: Path) -> tuple[subprocess.Popen, Path]:
    """Start one py4DSTEM runner process on one core, its output to ``log``."""
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(py4dstem_python()), str(RUNNER), *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **threads, "MPLBACKEND": "Agg"},
        )
    return process, log


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished children so far [s]."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait(processes: list[tuple[subprocess.Popen, Path]]) -> None:
    """Wait for every process; raise with the tails of the failed ones' logs."""
    failed = [log for process, log in processes if process.wait() != 0]
    if failed:
        tails = "\n".join(f"{log}:\n{log.read_text()[-3000:]}" for log in failed)
        raise RuntimeError(f"py4DSTEM run failed:\n{tails}")


def _detection_key(scan_zarr: Path, params: dict, probe_image: np.ndarray, slabs: list) -> dict:
    """What the disk detection depends on: scan store, shapes, probe, row slabs and the runner's code."""
    metadata = max((p.stat().st_mtime_ns for p in scan_zarr.glob("zarr.json")), default=0)
    return {
        "scan": str(scan_zarr.resolve()),
        "scan_metadata_mtime_ns": metadata,
        "scan_shape": params["scan_shape"],
        "detector_shape": params["detector_shape"],
        "slabs": [[int(rows[0]), int(rows[-1]) + 1] for rows in slabs],
        "probe_sha256": hashlib.sha256(np.ascontiguousarray(probe_image, np.float64).tobytes()).hexdigest(),
        "runner_sha256": hashlib.sha256(RUNNER.read_bytes()).hexdigest(),
    }


def fit_py4dstem(
    scan_zarr: Path, work: Path, params: dict, probe_image: np.ndarray, processes: int
) -> tuple[dict, dict]:
    """Run py4DSTEM: disk detection in ``processes`` row slabs side by side, then the strain step.

    Disk detection (the costly part) is skipped when ``work`` holds the Bragg vectors of an earlier
    run with the same scan, probe, slabs and runner code (``detection.json``); its timing is reused.

    Returns
    -------
    fitted : dict of ndarray
        py4DSTEM's arrays in its own axes and pixel units (see ``py4dstem_runner.strain_step``).
    timing : dict
        Wall-clock seconds of the two phases and of each disk-detection process, CPU seconds of
        all py4DSTEM processes (a rate that holds when other work shares the cores), versions.
    """
    (work / "params.json").write_text(json.dumps(params, indent=2))
    np.save(work / "probe.npy", probe_image.astype(np.float64))
    slabs = [rows for rows in np.array_split(np.arange(params["scan_shape"][0]), max(1, processes)) if rows.size]
    peak_files = [work / f"peaks_{i}.npz" for i in range(len(slabs))]
    key = _detection_key(scan_zarr, params, probe_image, slabs)
    record = work / "detection.json"
    done = json.loads(record.read_text()) if record.exists() else {}
    if done.get("key") != key or not all(path.exists() for path in peak_files):
        record.unlink(missing_ok=True)
        commands = [
            ["disks", key["scan"], str(work), "--rows", str(r0), str(r1), "--out", str(path)]
            for (r0, r1), path in zip(key["slabs"], peak_files, strict=True)
        ]
        cpu, start = children_cpu_seconds(), time.perf_counter()
        _wait([_start(command, Path(command[-1]).with_suffix(".log")) for command in commands])
        done = {
            "key": key,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": children_cpu_seconds() - cpu,
            "seconds_per_worker": [json.loads(path.with_suffix(".json").read_text())["seconds"] for path in peak_files],
        }
        record.write_text(json.dumps(done, indent=2))
    else:
        done["reused"] = str(work)
    result = work / "result.npz"
    cpu, start = children_cpu_seconds(), time.perf_counter()
    _wait([_start(["strain", str(work), "--peaks", *map(str, peak_files), "--out", str(result)], work / "strain.log")])
    seconds_strain, cpu_strain = time.perf_counter() - start, children_cpu_seconds() - cpu
    versions = json.loads(result.with_suffix(".json").read_text())
    timing = {
        "processes": len(slabs),
        "seconds_disk_detection": done["seconds"],
        "seconds_strain_step": seconds_strain,
        "seconds_per_worker": done["seconds_per_worker"],
        "cpu_seconds_py4dstem": done["cpu_seconds"] + cpu_strain,
        "disk_detection_reused_from": done.get("reused"),
        "py4dstem_version": versions["py4dstem_version"],
        "numpy_version": versions["numpy_version"],
    }
    return dict(np.load(result)), timing


def py4dstem_strain(fitted: dict, scan: xr.Dataset, reference_roi, k_sampling: float) -> tuple[dict, xr.Dataset]:
    """py4DSTEM's fitted lattices mapped into our convention, as a strain map in our contract.

    The strain comes from its g1/g2 maps against their median over the reference region; the strain
    rebuilt from its four reported numbers must agree (``convention_max_abs_diff``). A fit py4DSTEM
    calls valid but whose g1, g2 are (anti)parallel or zero (all indexed peaks on one lattice row:
    its least-squares fit then leaves g2 undetermined) has no strain; it is counted in
    ``degenerate_fits`` and masked.

    Returns
    -------
    summary : dict
        Valid fraction, reference basis [1/angstrom], basis chosen [px], convention cross-check.
    strain : xr.Dataset
        Strain map (contract of DESIGN.md), ``mask`` = py4DSTEM's valid, non-degenerate fits.
    """
    fitted_ok = fitted["mask"].astype(bool)
    lattice = lattice_from_py4dstem(fitted["g1x"], fitted["g1y"], fitted["g2x"], fitted["g2y"]) * k_sampling
    area = np.abs(np.linalg.det(lattice))
    scale = np.median(area[fitted_ok]) if fitted_ok.any() else 0.0
    valid = fitted_ok & np.isfinite(area) & (area > DEGENERATE_AREA * scale)
    lattice = np.where(valid[..., None, None], lattice, np.nan)
    reference = reference_lattice(lattice, reference_roi, valid)
    components = strain_from_lattice(lattice, reference)
    reported = py4dstem_transformation(*(fitted[f"strain_{name}"][valid] for name in STRAIN_COMPONENTS))
    rebuilt = strain_from_deformation(deformation_from_py4dstem(reported))
    convention_diff = max(
        float(np.max(np.abs(components[c][valid] - rebuilt[c]), initial=0.0)) for c in STRAIN_COMPONENTS
    )
    strain = strain_map_dataset(
        components,
        scan["scan_y"].values,
        scan["scan_x"].values,
        fit_error=np.where(valid, fitted["error"] * k_sampling, np.nan),
        n_peaks=fitted["n_indexed"],
        mask=valid,
        method="py4dstem",
        model_hash="none",
        reference_roi=list(reference_roi),
        g1=reference[:, 0],
        g2=reference[:, 1],
        peer_workflow="/work/shared/reference/py4dstem-tuned.md: flat probe kernel, multicorr x32, origin "
        "measure_origin + plane fit (robust), explicit primitive basis, max peak spacing 2 px, median reference",
        fit_error_definition="py4DSTEM's intensity-weighted mean distance of indexed peaks from the fitted lattice",
    )
    g0, g1, g2 = fitted["basis_g0g1g2"]
    summary = {
        "valid_fraction": float(valid.mean()),
        "degenerate_fits": int((fitted_ok & ~valid).sum()),
        "reference_g1_g2_per_angstrom": [reference[:, 0].tolist(), reference[:, 1].tolist()],
        "basis_px_qx_qy": {"origin": list(g0), "g1": list(g1), "g2": list(g2)},
        "origin_fit_mean_px": np.asarray(fitted["origin_fit"]).reshape(2, -1).mean(axis=1).tolist(),
        "probe_radius_px": float(fitted["probe_radius_px"]),
        "convention_max_abs_diff": convention_diff,
    }
    return summary, strain


def run_py4dstem(
    scan_zarr: str | Path,
    out_zarr: str | Path,
    reference_roi: tuple[int, int, int, int] | None = None,
    processes: int = 2,
    probe: np.ndarray | None = None,
    vacuum_roi: tuple[int, int, int, int] | None = None,
    work: str | Path | None = None,
    basis_map: str = "reference",
) -> dict:
    """Tuned py4DSTEM on a 4D store; its strain map written in our contract.

    Parameters
    ----------
    scan_zarr : path
        4D-data store (contract of DESIGN.md).
    out_zarr : path
        Strain-map store to write (``method`` = "py4dstem", ``mask`` = py4DSTEM's valid fits).
    reference_roi : (y0, y1, x0, x1), optional
        Reference region (half-open scan indices); default the scan's ``reference_roi`` attr.
    processes : int
        py4DSTEM disk-detection processes, each on a slab of scan rows (one per core).
    probe : ndarray (k_y, k_x), optional
        Vacuum probe image for the template; default the scan's ``probe`` variable.
    vacuum_roi : (y0, y1, x0, x1), optional
        Scan region in vacuum whose mean pattern is the template (data without a ``probe``).
    work : path, optional
        Folder for the exchanged files and logs, kept. When omitted, ``<out_zarr>.py4dstem-work``,
        removed after success and kept after a failure (logs, peaks, py4DSTEM's fitted arrays).
    basis_map : {"reference", "scan"}
        Bragg vector map the basis is chosen on: of the reference region (the crystal strain is
        measured against; right for scans over several crystals) or of the whole scan.

    Returns
    -------
    dict
        Timing [s] and rates [patterns/s] (end to end: wall clock from opening the scan to the
        written strain map, all processes), valid fraction, basis, convention cross-check, versions.
    """
    start = time.perf_counter()
    scan_zarr, out_zarr = Path(scan_zarr), Path(out_zarr)
    scan = open_4d(scan_zarr)
    n_y, n_x, n_ky, n_kx = scan["data"].shape
    roi = reference_roi if reference_roi is not None else scan.attrs.get("reference_roi")
    if roi is None:
        raise StemstrainInputError(f"{scan_zarr}: no reference_roi attribute; pass the reference region (--ref-roi)")
    roi = check_reference_roi(roi, (n_y, n_x))
    if basis_map not in ("reference", "scan"):
        raise StemstrainInputError(f"basis map {basis_map!r}: expected 'reference' or 'scan'")
    probe_image, probe_source = template_image(scan, str(scan_zarr), probe, vacuum_roi)
    k_sampling, _ = k_calibration(scan)
    params = {
        "k_sampling": k_sampling,
        "scan_step_nm": float(scan["scan_x"][1] - scan["scan_x"][0]) if n_x > 1 else 1.0,
        "reference_roi": list(roi),
        "scan_shape": [n_y, n_x],
        "detector_shape": [n_ky, n_kx],
        "basis_map": basis_map,
    }
    folder = Path(work) if work is not None else out_zarr.with_name(f"{out_zarr.name}.py4dstem-work")
    folder.mkdir(parents=True, exist_ok=True)
    fitted, timing = fit_py4dstem(scan_zarr, folder, params, probe_image, processes)
    summary, strain = py4dstem_strain(fitted, scan, roi, k_sampling)
    strain.attrs["peer_software"] = f"py4DSTEM {timing['py4dstem_version']} (numpy {timing['numpy_version']})"
    strain.attrs["probe_source"] = probe_source
    write_strain_map(strain, out_zarr)
    if work is None:
        shutil.rmtree(folder)
    seconds = time.perf_counter() - start
    n = n_y * n_x
    return {
        "patterns": n,
        "seconds_total": seconds,
        "patterns_per_s_end_to_end": n / seconds,
        "patterns_per_s_disk_detection": n / timing["seconds_disk_detection"],
        "patterns_per_cpu_s": n / timing["cpu_seconds_py4dstem"],
        **timing,
        "reference_roi": list(roi),
        "basis_map": basis_map,
        "probe_source": probe_source,
        **summary,
    }


# ---------------------------------------------------------------- statistics of a region


def region_spread(strain_zarr: str | Path, rows: tuple[int, int], cols: tuple[int, int]) -> dict:
    """Valid fraction and spread of each strain component over a scan region.

    Parameters
    ----------
    strain_zarr : path
        Strain-map store (contract of DESIGN.md).
    rows, cols : (int, int)
        Half-open scan-index ranges (scan_y, scan_x) of the region.

    Returns
    -------
    dict
        ``positions``, ``valid`` and ``valid_fraction`` of the region, and for e_xx, e_yy, e_xy [1]
        and theta [rad] over its valid positions: ``median``, ``std`` and ``half_width_16_84``
        (half the distance between the 16th and 84th percentiles: the standard deviation for
        Gaussian scatter, robust to a few outliers); NaN where no position is valid.
    """
    ds = open_strain_map(strain_zarr, require_valid=False)
    n_y, n_x = ds.sizes["scan_y"], ds.sizes["scan_x"]
    r0, r1 = rows
    c0, c1 = cols
    check_reference_roi((r0, r1, c0, c1), (n_y, n_x), "region")
    region = {name: np.asarray(ds[name].values[r0:r1, c0:c1], float) for name in STRAIN_COMPONENTS}
    valid = np.all([np.isfinite(v) for v in region.values()], axis=0)
    if "mask" in ds:
        valid &= ds["mask"].values[r0:r1, c0:c1].astype(bool)
    result: dict = {
        "region_rows": [r0, r1],
        "region_cols": [c0, c1],
        "positions": int(valid.size),
        "valid": int(valid.sum()),
        "valid_fraction": float(valid.mean()),
    }
    for name, values in region.items():
        v = values[valid]
        if v.size:
            p16, p50, p84 = np.percentile(v, [16, 50, 84])
            result[name] = {"median": float(p50), "std": float(np.std(v)), "half_width_16_84": float((p84 - p16) / 2)}
        else:
            result[name] = {"median": float("nan"), "std": float("nan"), "half_width_16_84": float("nan")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    peer = commands.add_parser("py4dstem", help="tuned py4DSTEM on a 4D store, strain map in our contract")
    peer.add_argument("scan", type=Path, help="4D-data Zarr store")
    peer.add_argument("out", type=Path, help="strain-map Zarr store to write")
    peer.add_argument(
        "--ref-roi",
        type=int,
        nargs=4,
        metavar=("Y0", "Y1", "X0", "X1"),
        help="reference region (half-open); default the scan's reference_roi",
    )
    peer.add_argument(
        "--vacuum-roi",
        type=int,
        nargs=4,
        metavar=("Y0", "Y1", "X0", "X1"),
        help="vacuum region whose mean pattern is the probe template; default the scan's probe variable",
    )
    peer.add_argument("--processes", type=int, default=2, help="disk-detection processes (one per core)")
    peer.add_argument(
        "--basis-map",
        choices=("reference", "scan"),
        default="reference",
        help="Bragg vector map the basis is chosen on: of the reference region (default) or of the whole scan",
    )
    peer.add_argument("--work", type=Path, help="keep the exchanged files here; reuses its disk detection")
    peer.add_argument("--json", type=Path, help="also write the timing and run summary here")
    spread = commands.add_parser("spread", help="valid fraction and spread of a strain map over a region")
    spread.add_argument("strain", type=Path, help="strain-map Zarr store")
    spread.add_argument("--rows", type=int, nargs=2, required=True, metavar=("R0", "R1"), help="scan rows, half-open")
    spread.add_argument(
        "--cols", type=int, nargs=2, required=True, metavar=("C0", "C1"), help="scan columns, half-open"
    )
    spread.add_argument("--json", type=Path, help="also write the statistics here")
    args = parser.parse_args()
    try:
        if args.command == "py4dstem":
            result = run_py4dstem(
                args.scan,
                args.out,
                args.ref_roi,
                args.processes,
                vacuum_roi=args.vacuum_roi,
                work=args.work,
                basis_map=args.basis_map,
            )
        else:
            result = region_spread(args.strain, tuple(args.rows), tuple(args.cols))
    except StemstrainInputError as err:
        sys.exit(f"error: {err}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

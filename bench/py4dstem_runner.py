"""py4DSTEM side of the peer benchmark: runs in py4DSTEM's own venv (``.venv-py4dstem``), not in ours.

This follows /work/shared/reference/py4dstem-tuned.md step by step (py4DSTEM 0.14.18). It imports
nothing from stemstrain (py4DSTEM needs numpy < 2); ``bench/peers.py`` starts it and maps its
results into our convention. Two commands, one py4DSTEM process each:

``disks SCAN.zarr WORK --rows Y0 Y1 --out PEAKS.npz``
    Template cross-correlation disk detection (flat kernel of the vacuum probe ``WORK/probe.npy``,
    multicorr upsampling 32) on scan rows ``Y0:Y1`` of our 4D store, read block by block. Disk
    detection is a serial loop over patterns with nothing shared between them, so one such
    process per core, each on a slab of rows, gives the same vectors as one process on all rows.

``strain WORK --peaks PEAKS.npz ... --out RESULT.npz``
    Joins the slabs into one BraggVectors and runs the scan-wide steps: origin (measure_origin,
    plane fit, robust), StrainMap with an explicit primitive basis chosen on the Bragg vector map
    of the reference region (its maximum closest to the calibrated origin, g1 the shortest vector,
    g2 the shortest not (anti)parallel to g1), ``set_max_peak_spacing(2)``, ``fit_basis_vectors``,
    ``get_strain`` against the median of the reference region. Writes py4DSTEM's fitted g1/g2
    maps and its strain, in its own axes: qx along detector rows (our k_y), qy along columns (our
    k_x), pixel units.

``WORK/params.json`` holds the calibration: ``k_sampling`` [1/angstrom per pixel], ``scan_step_nm``,
``reference_roi`` [y0, y1, x0, x1], the scan and detector shapes, and ``basis_map``: "reference"
(the basis is chosen on the Bragg vector map of the reference region) or "scan" (of the whole scan,
py4DSTEM's default map).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before numpy: one core per process

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import py4DSTEM  # noqa: E402
import zarr  # noqa: E402

# the tuned settings of py4dstem-tuned.md, held fixed for every scan
DISK_DETECTION = {
    "corrPower": 1.0,
    "sigma": 1,
    "subpixel": "multicorr",
    "upsample_factor": 32,
    "minAbsoluteIntensity": 0,
    "minRelativeIntensity": 0.005,
    "relativeToPeak": 0,
    "minPeakSpacing": 6,
    "edgeBoundary": 4,
    "maxNumPeaks": 100,
}
BASIS_CHOICE = {"sigma": 1, "minRelativeIntensity": 0.005, "minSpacing": 6, "maxNumPeaks": 150}
MAX_PEAK_SPACING_PX = 2.0
PARALLEL_SINE = 0.2
"""|sin| of the angle below which a vector counts as (anti)parallel to g1 (about 11.5 degrees)."""
BLOCK_BYTES = 128 * 2**20
"""Patterns read and searched at once per process [bytes]."""


def template(probe_image: np.ndarray) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Flat cross-correlation kernel of a vacuum probe image (step 2 of the tuned workflow).

    Returns
    -------
    kernel : ndarray
        The normalised probe shifted to the array corner.
    radius : float
        Probe disk radius [px].
    centre : (float, float)
        Probe centre (row, column) [px]: the origin guess of :func:`strain_step`.
    """
    probe = py4DSTEM.Probe(data=np.asarray(probe_image, dtype=np.float64))
    radius, q0x, q0y = probe.measure_disk(plot=False)
    kernel = probe.get_kernel(mode="flat")
    return kernel, float(radius), (float(q0x), float(q0y))


def _calibrate(calibration, params: dict) -> None:
    """Step 1: pixel sizes from our coords, QR rotation 0, no flip."""
    calibration.set_Q_pixel_size(params["k_sampling"])
    calibration.set_Q_pixel_units("A^-1")
    calibration.set_R_pixel_size(params["scan_step_nm"])
    calibration.set_R_pixel_units("nm")
    calibration.set_QR_rotation_degrees(0)
    calibration.set_QR_flip(False)


def disks(scan: Path, work: Path, rows: tuple[int, int], out: Path) -> dict:
    """Bragg disks of scan rows ``rows[0]:rows[1]`` (step 3), written as flat arrays to ``out``."""
    params = json.loads((work / "params.json").read_text())
    start = time.perf_counter()
    kernel, _, _ = template(np.load(work / "probe.npy"))
    patterns = zarr.open_group(str(scan), mode="r")["data"]
    n_x, n_ky, n_kx = patterns.shape[1:]
    block_rows = max(1, BLOCK_BYTES // (n_x * n_ky * n_kx * 4))
    counts, qx, qy, intensity = [], [], [], []
    t_read = 0.0
    for y0 in range(rows[0], rows[1], block_rows):
        y1 = min(y0 + block_rows, rows[1])
        t0 = time.perf_counter()
        block = np.asarray(patterns[y0:y1], dtype=np.float32)
        t_read += time.perf_counter() - t0
        datacube = py4DSTEM.DataCube(data=block)
        _calibrate(datacube.calibration, params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bragg = datacube.find_Bragg_disks(template=kernel, **DISK_DETECTION)
        for ry in range(y1 - y0):
            for rx in range(n_x):
                vectors = bragg.raw[ry, rx].data
                counts.append(len(vectors))
                qx.append(vectors["qx"])
                qy.append(vectors["qy"])
                intensity.append(vectors["intensity"])
    np.savez(
        out,
        rows=np.array(rows),
        counts=np.array(counts, dtype=np.int64).reshape(rows[1] - rows[0], n_x),
        qx=np.concatenate(qx),
        qy=np.concatenate(qy),
        intensity=np.concatenate(intensity),
    )
    seconds = time.perf_counter() - start
    return {"rows": list(rows), "patterns": (rows[1] - rows[0]) * n_x, "seconds": seconds, "seconds_read": t_read}


def bragg_vectors(peaks: list[dict], params: dict):
    """One py4DSTEM BraggVectors over the whole scan from slabs of flat peak arrays (pixel units)."""
    shape = (params["scan_shape"][0], params["scan_shape"][1])
    bragg = py4DSTEM.BraggVectors(shape, tuple(params["detector_shape"]))
    for slab in peaks:
        y0 = int(slab["rows"][0])
        ends = np.cumsum(slab["counts"].ravel())
        starts = ends - slab["counts"].ravel()
        n_x = slab["counts"].shape[1]
        for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
            if b > a:
                ry, rx = divmod(i, n_x)
                bragg._v_uncal[y0 + ry, rx].add_data_by_field(
                    (slab["qx"][a:b], slab["qy"][a:b], slab["intensity"][a:b])
                )
    _calibrate(bragg.calibration, params)
    return bragg


def primitive_basis_indices(qx: np.ndarray, qy: np.ndarray, origin: tuple[float, float]) -> tuple[int, int, int]:
    """Indices (origin, g1, g2) among Bragg-vector-map maxima for a reduced, primitive basis.

    origin: the maximum closest to the calibrated origin; g1: the shortest vector from it; g2:
    the shortest vector not (anti)parallel to g1 (|sin| of the angle above :data:`PARALLEL_SINE`).
    """
    i0 = int(np.argmin(np.hypot(qx - origin[0], qy - origin[1])))
    vx, vy = qx - qx[i0], qy - qy[i0]
    length = np.hypot(vx, vy)
    length[i0] = np.inf
    i1 = int(np.argmin(length))
    with np.errstate(invalid="ignore", divide="ignore"):
        sine = np.abs(vx[i1] * vy - vy[i1] * vx) / (length[i1] * length)
    candidates = np.flatnonzero(np.isfinite(length) & (sine > PARALLEL_SINE))
    if candidates.size == 0:
        raise RuntimeError("the Bragg vector map holds no maximum off the line of g1: no 2D lattice")
    i2 = int(candidates[np.argmin(length[candidates])])
    return i0, i1, i2


def strain_step(bragg, params: dict, centre_guess: tuple[float, float]) -> dict:
    """Steps 4-6 of the tuned workflow on joined Bragg vectors; py4DSTEM's results as arrays."""
    n_y, n_x = bragg.Rshape
    bragg.measure_origin(center_guess=centre_guess, score_method="distance")
    qx0, qy0, _, _ = bragg.fit_origin(fitfunction="plane", robust=True, plot=False)
    y0, y1, x0, x1 = params["reference_roi"]
    reference = np.zeros((n_y, n_x), bool)
    reference[y0:y1, x0:x1] = True
    strain_map = py4DSTEM.StrainMap(braggvectors=bragg)
    if params.get("basis_map", "reference") == "reference":
        # the Bragg vector map of the crystal strain is measured against: the whole-scan map of a
        # scan over several crystals (MgO nanocubes) mixes their lattices
        strain_map.bvm = bragg.histogram(mode="cal", weights=reference)
    strain_map.choose_basis_vectors(**BASIS_CHOICE)
    g = strain_map.g
    index_origin, index_g1, index_g2 = primitive_basis_indices(g["x"], g["y"], strain_map.origin)
    strain_map.choose_basis_vectors(index_origin=index_origin, index_g1=index_g1, index_g2=index_g2, **BASIS_CHOICE)
    strain_map.set_max_peak_spacing(MAX_PEAK_SPACING_PX)
    strain_map.fit_basis_vectors()
    strain_map.get_strain(gvects=reference, coordinate_rotation=0)
    plt.close("all")
    g1g2 = strain_map.g1g2_map
    result = {name: np.asarray(g1g2.get_slice(name).data) for name in g1g2.slicelabels}
    for i, name in enumerate(("e_xx", "e_yy", "e_xy", "theta")):
        result[f"strain_{name}"] = np.asarray(strain_map.data[i])
    result["strain_mask"] = np.asarray(strain_map.data[4]).astype(bool)
    result["n_indexed"] = np.array(
        [[len(strain_map.bragg_vectors_indexed[ry, rx].data) for rx in range(n_x)] for ry in range(n_y)]
    )
    reference_g1, reference_g2 = strain_map.get_reference_g1g2(reference & result["mask"].astype(bool))
    result["reference_g1g2"] = np.array([reference_g1, reference_g2])
    result["basis_g0g1g2"] = np.array([strain_map.g0, strain_map.g1, strain_map.g2])
    result["basis_indices"] = np.array([index_origin, index_g1, index_g2])
    result["bvm_maxima"] = np.stack([g["x"], g["y"], g["intensity"]], axis=-1)
    result["origin_fit"] = np.stack([qx0, qy0])
    return result


def strain(work: Path, peak_files: list[Path], out: Path) -> dict:
    """Join the slabs and run :func:`strain_step`; write its arrays to ``out``."""
    params = json.loads((work / "params.json").read_text())
    start = time.perf_counter()
    _, radius, centre = template(np.load(work / "probe.npy"))
    peaks = [dict(np.load(path)) for path in peak_files]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = strain_step(bragg_vectors(peaks, params), params, centre)
    np.savez(out, **result, probe_radius_px=radius, probe_centre_px=np.array(centre))
    return {"seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    detect = commands.add_parser("disks", help="Bragg disk detection on a slab of scan rows")
    detect.add_argument("scan", type=Path)
    detect.add_argument("work", type=Path)
    detect.add_argument("--rows", type=int, nargs=2, required=True, metavar=("Y0", "Y1"))
    detect.add_argument("--out", type=Path, required=True)
    fit = commands.add_parser("strain", help="origin, basis, lattice fit and strain on joined slabs")
    fit.add_argument("work", type=Path)
    fit.add_argument("--peaks", type=Path, nargs="+", required=True)
    fit.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "disks":
        timing = disks(args.scan, args.work, tuple(args.rows), args.out)
    else:
        timing = strain(args.work, args.peaks, args.out)
    timing["py4dstem_version"] = py4DSTEM.__version__
    timing["numpy_version"] = np.__version__
    args.out.with_suffix(".json").write_text(json.dumps(timing, indent=2))


if __name__ == "__main__":
    main()

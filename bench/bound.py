"""How far each method is from the best any method could do: the Cramér–Rao bound of each suite scan.

For every pattern of a suite scan, its noise-free multislice (the suite's cache) times the scan's dose
gives the expected counts; :func:`stemstrain.evaluate.bound.strain_bound` turns them into a lower
bound on the variance of the pattern's strain from where its disks lie (kinematic centres of the
truth's deformation). The bound of a component is the RMS of the per-pattern bound over the scored
patterns (outside the reference region), the same patterns the accuracy suite scores. Beside it, each
method's worst-component RMSE from ``bench/results/accuracy.json``: its ratio to the bound says how
much is left, and whether the error at a scan's dose is counting noise or bias. The bound treats each
disk's image as known, and counts none of the information in intensities that change with strain.
It is optimistic on sharp simulated disk edges; a second bound with a 0.5 px detector point-spread
(``bound_psf``) is the less optimistic one (:mod:`stemstrain.evaluate.bound`).

Usage: ``python bench/bound.py``; writes ``bench/results/bound.json``. Needs the suite's scans and their
cache (``python bench/accuracy.py --simulate-only``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402

from stemstrain.config import load_config  # noqa: E402
from stemstrain.detect.bragg import disk_radius  # noqa: E402
from stemstrain.evaluate.bound import PARAMETERS, strain_bound  # noqa: E402
from stemstrain.io import open_strain_map  # noqa: E402
from stemstrain.simulate.scan import clean_scan_patterns  # noqa: E402
from stemstrain.simulate.targets import kinematic_spots  # noqa: E402
from stemstrain.strain import STRAIN_COMPONENTS, deformation_from_strain, rotation_matrix  # noqa: E402

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite.yaml"
WORK = HERE / "work" / "suite"
BOUNDED = ("e_xx", "e_yy", "e_xy")
"""The components the accuracy suite's worst-component RMSE runs over."""
PSF_PX = 0.5
"""Detector point-spread σ [px] of the second, less optimistic bound (the suite's detector has none)."""


def scan_bound(config, scan, psfs_px: tuple[float, ...] = (0.0, PSF_PX)) -> list[dict]:
    """RMS over the scored patterns of the per-pattern bound of each component [1], per detector point-spread."""
    clean = clean_scan_patterns(config, scan, WORK / "cache")
    truth = open_strain_map(WORK / f"{scan.name}.truth.zarr")
    pixels, k_sampling = config.detector.pixels, config.detector.k_sampling
    radius_px = disk_radius(config.optics.energy_eV, config.optics.semiangle_mrad) / k_sampling
    k_max = (pixels // 2 - radius_px - 2) * k_sampling  # disks wholly on the detector
    y0, y1, x0, x1 = scan.reference_roi
    scored = np.ones(tuple(scan.scan_shape), dtype=bool)
    scored[y0:y1, x0:x1] = False
    orientation = rotation_matrix(np.radians(scan.orientation_deg))
    chosen = [PARAMETERS.index(name) for name in BOUNDED]
    variances = []  # (pattern, point-spread, component)
    for iy, ix in zip(*np.nonzero(scored), strict=True):
        strain = [float(truth[name].values[iy, ix]) for name in STRAIN_COMPONENTS]
        deformation = deformation_from_strain(*strain) @ orientation
        spots, _, _ = kinematic_spots(scan.crystal, deformation, k_max, config.optics.energy_eV)
        counts = clean[iy, ix] * scan.dose
        centre = (pixels // 2, pixels // 2)
        variances.append(
            [np.diag(strain_bound(counts, spots / k_sampling, centre, radius_px, psf))[chosen] for psf in psfs_px]
        )
    rms = np.sqrt(np.mean(variances, axis=0))
    return [
        {name: float(value) for name, value in zip(BOUNDED, per_psf, strict=True)} | {"worst": float(per_psf.max())}
        for per_psf in rms
    ]


def method_errors() -> dict:
    """Worst-component RMSE of each method on each scan, from the last accuracy run."""
    path = RESULTS / "accuracy.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(row["scan"], row["method"]): row["worst_strain_rmse"] for row in rows if row.get("status") == "ok"}


def main() -> None:
    config = load_config(SUITE)
    errors = method_errors()
    methods = sorted({method for _, method in errors})
    rows = {}
    header = f"{'scan':22s} {'bound':>7s} {'psf':>5s}  " + "  ".join(f"{m:>14s}" for m in methods)
    print(header + "   [1e-4; method / bound]")
    for scan in config.scans:
        truth = WORK / f"{scan.name}.truth.zarr"
        if not truth.exists():
            sys.exit(f"{truth}: missing; build the suite first (python bench/accuracy.py --simulate-only)")
        bound, blurred = scan_bound(config, scan)
        measured = {m: errors[(scan.name, m)] for m in methods if (scan.name, m) in errors}
        rows[scan.name] = {"dose": scan.dose, "bound": bound, "bound_psf": blurred, "worst_rmse": measured}
        cells = "  ".join(
            f"{measured[m] * 1e4:6.1f} ({measured[m] / bound['worst']:4.1f}x)" if m in measured else f"{'-':>14s}"
            for m in methods
        )
        print(f"{scan.name:22s} {bound['worst'] * 1e4:7.2f} {blurred['worst'] * 1e4:5.2f}  {cells}", flush=True)
    accuracy_date = json.loads((RESULTS / "accuracy.json").read_text())["machine"]["date"] if errors else None
    payload = {"components": list(BOUNDED), "psf_px": PSF_PX, "accuracy_run": accuracy_date, "rows": rows}
    print(json.dumps({"wrote": str(write_result("bound", payload))}))


if __name__ == "__main__":
    main()

"""Which part of a disk carries the strain: slopes from the noise-free patterns of the 2x-box suite.

Every method compresses e_xx on the 2x-box suite's Au [001] scan (slopes 0.90-0.94), so is the truth
wrong, or do the disks' insides move differently from the lattice? For each position of a suite scan
its noise-free multislice pattern (the suite's cache), each disk near the position the truth puts it
is located by the centroid of a soft mask ``clip(I / (t · max), 0, 1)`` over 1.5 radii: a low
threshold t weighs every pixel of the disk alike, down to its outer edge, a high one weighs its bright
inside; and, for comparison, by its plain intensity centroid. A reciprocal lattice is fitted to each
pattern's disks and its strain taken against the reference rows, as in a strain map; the slope of
measured against true strain over the strained positions says how far each weighting follows the
lattice. No noise, no network, no template: only where the scan's disks are.

Usage: ``python bench/disk_edge_slopes.py [--scans au001_t30_d1e5 ...] [--thresholds 0.01 0.05 0.2]``;
needs the 2x-box suite (``python bench/accuracy.py --box-scale 2 --simulate-only``); writes
``bench/results/disk_edge_slopes.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy import SUITE, variant  # noqa: E402
from common import write_result  # noqa: E402

from stemstrain.config import load_config  # noqa: E402
from stemstrain.detect.bragg import disk_radius  # noqa: E402
from stemstrain.evaluate import evaluate_strain  # noqa: E402
from stemstrain.evaluate.suite import slopes  # noqa: E402
from stemstrain.lattice import reciprocal_vectors  # noqa: E402
from stemstrain.simulate.crystals import projected_cell  # noqa: E402
from stemstrain.simulate.scan import clean_scan_patterns  # noqa: E402
from stemstrain.strain import STRAIN_COMPONENTS, deformation_from_strain, rotation_matrix, strain_from_lattice  # noqa: E402

WORK, _ = variant(2.0)
WINDOW = 1.5
"""Radius of the window around each disk's true position [disk radii]."""
FAINTEST = 2e-4
"""Disks whose brightest pixel is below this fraction of the pattern's are left out."""


def disk_centres(pattern: np.ndarray, expected: np.ndarray, radius_px: float, threshold: float | None) -> np.ndarray:
    """Centroids (m, 2) (x, y) [px] of the disks near ``expected`` (m, 2); NaN for a faint disk.

    ``threshold``: the soft mask's level (fraction of the disk's brightest pixel); None: intensity centroid.
    """
    yy, xx = np.mgrid[0 : pattern.shape[0], 0 : pattern.shape[1]]
    centres = np.full(expected.shape, np.nan)
    for index, (x, y) in enumerate(expected):
        intensity = np.where((xx - x) ** 2 + (yy - y) ** 2 < (WINDOW * radius_px) ** 2, pattern, 0.0)
        if intensity.max() < FAINTEST * pattern.max():
            continue
        weight = intensity if threshold is None else np.clip(intensity / (threshold * intensity.max()), 0, 1)
        centres[index] = (weight * xx).sum() / weight.sum(), (weight * yy).sum() / weight.sum()
    return centres


def scan_slopes(name: str, thresholds: list[float | None]) -> dict:
    """Slope and RMSE [1] of each strain component for each weighting, on one suite scan."""
    config = load_config(SUITE)
    config.simulate.box_scale_min = 2.0
    scan = next(s for s in config.scans if s.name == name)
    clean = clean_scan_patterns(config, scan, WORK / "cache")
    n_y, n_x, height, width = clean.shape
    truth = xr.open_zarr(WORK / f"{name}.truth.zarr")
    true = {c: truth[c].values.reshape(-1) for c in STRAIN_COMPONENTS}  # [1], theta [rad]
    k_sampling = config.detector.k_sampling
    radius_px = disk_radius(config.optics.energy_eV, config.optics.semiangle_mrad) / k_sampling
    centre = np.array([width // 2, height // 2], dtype=float)
    reference = rotation_matrix(np.radians(scan.orientation_deg)) @ reciprocal_vectors(projected_cell(scan.crystal))
    hk = np.array([(h, k) for h in range(-8, 9) for k in range(-8, 9) if (h, k) != (0, 0)], dtype=float)
    lattices = {threshold: [] for threshold in thresholds}
    for index, pattern in enumerate(clean.reshape(-1, height, width)):
        deformation = deformation_from_strain(*(true[c][index] for c in STRAIN_COMPONENTS))
        expected = centre + hk @ (np.linalg.inv(deformation).T @ reference).T / k_sampling
        inside = np.all((expected > 2 * radius_px) & (expected < width - 1 - 2 * radius_px), axis=1)
        for threshold in thresholds:
            found = disk_centres(pattern, expected[inside], radius_px, threshold)
            good = np.isfinite(found[:, 0])
            basis, *_ = np.linalg.lstsq(hk[inside][good], (found[good] - centre) * k_sampling, rcond=None)
            lattices[threshold].append(basis.T)
    rows = {}
    for threshold, found in lattices.items():
        found = np.array(found).reshape(n_y, n_x, 2, 2)
        y0, y1, x0, x1 = scan.reference_roi
        strain = strain_from_lattice(found, found[y0:y1, x0:x1].mean(axis=(0, 1)))
        prediction = truth[list(STRAIN_COMPONENTS)].copy(data={c: strain[c] for c in STRAIN_COMPONENTS})
        scores, slope = evaluate_strain(prediction, truth), slopes(prediction, truth)  # as the suite scores a map
        label = "intensity centroid" if threshold is None else f"soft mask {threshold:g}"
        rows[label] = {c: {"slope": slope[c], "rmse": scores[c]["rmse"]} for c in STRAIN_COMPONENTS}
        print(name, label, {c: round(v["slope"], 3) for c, v in rows[label].items()}, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", nargs="*", default=["au001_t30_d1e5", "cu110_t40_d1e5", "si110_t37_d1e6"])
    parser.add_argument("--thresholds", nargs="*", type=float, default=[0.01, 0.05, 0.2])
    args = parser.parse_args()
    thresholds = [*args.thresholds, None]
    results = {name: scan_slopes(name, thresholds) for name in args.scans}
    print(write_result("disk_edge_slopes", {"suite": "bench/suite.yaml, 2x box", "scans": results}))


if __name__ == "__main__":
    main()

"""Is the simulation box large enough? The vacuum disk and a uniform strain read in boxes of 1 to 3x.

abTEM's multislice is periodic in the box. The box of the reference calibration is L = 1/k_sampling
(40 angstrom, so that the detector needs no interpolation); at 200 kV and 1.5 mrad the probe's Airy
disk is 20 angstrom across and its tails, which carry ~16 % of the intensity beyond the first zero,
reach past the box edge and its taper. Cutting them convolves every disk with the transform of the
box: the vacuum disk (5 px across) rings, and so does every diffracted disk. This benchmark measures,
per box side (1, 1.5, 2, 3 x 1/k_sampling):

- the vacuum disk: its centre pixel against the mean of its four neighbours (a hard aperture is
  flat: 0), and its largest difference from the 3x box's disk relative to that disk's maximum;
- for each suite crystal at the suite's orientation and thicknesses, a static lattice strained
  uniformly by e_xx = +2 % and -2 % (one probe position, at a lattice point, no noise: 1e8 e-),
  read by each method with the box's own vacuum probe as its template against the unstrained
  pattern of the same box: the error of e_xx at +2 % and -2 %, the slope and the offset (half their
  sum), and the error of e_yy.

A method's error here is its dynamical bias at that thickness; what matters is how it changes with the
box: in a converged box it would not. Clean patterns are cached in ``bench/work/box_convergence/``.

Usage: ``python bench/box_convergence.py [--crystals Si_110 SrTiO3_001] [--box-scales 1 1.5 2 3]
[--methods bragg unet]``; writes ``bench/results/box_convergence.json`` (rows of other runs kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, cached_array, fitted_lattices, uniform_state_patterns, write_result  # noqa: E402

from stemstrain.config import load_config  # noqa: E402
from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.io import make_4d_dataset  # noqa: E402
from stemstrain.model import resolve_model  # noqa: E402
from stemstrain.simulate.dataset import check_simulation  # noqa: E402
from stemstrain.simulate.multislice import vacuum_probe  # noqa: E402
from stemstrain.strain import strain_from_lattice  # noqa: E402

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite.yaml"
WORK = HERE / "work" / "box_convergence"
STRAIN = 0.02
"""|e_xx| of the two strained states [1]."""
STATES = (0.0, STRAIN, -STRAIN)
"""e_xx of the unstrained and the two strained states [1]."""
DOSE = 1e8
"""Counts per pattern [e-]: the patterns are read without noise, scaled to counts for the template's prior."""
SCALES = (1.0, 1.5, 2.0, 3.0)


def suite_cases(config) -> dict[str, tuple[float, tuple[float, ...]]]:
    """Crystal -> (orientation [deg], thicknesses [nm]) of the suite's scans of it."""
    cases: dict[str, tuple[float, tuple[float, ...]]] = {}
    for scan in config.scans:
        orientation, thicknesses = cases.get(scan.crystal, (scan.orientation_deg, ()))
        cases[scan.crystal] = (orientation, tuple(sorted({*thicknesses, scan.thickness_nm})))
    return cases


def cache_path(optics, crystal: str, thicknesses: tuple[float, ...]) -> Path:
    """Where :func:`clean_patterns` keeps the patterns of this box, crystal and thicknesses."""
    return WORK / (f"{crystal}_box{optics.box_scale:g}_" + "_".join(f"{t:g}" for t in thicknesses) + ".npy")


def clean_patterns(optics, crystal: str, orientation_deg: float, thicknesses: tuple[float, ...]) -> np.ndarray:
    """Clean patterns (3, thickness, H, W) of the unstrained and e_xx = +STRAIN, -STRAIN states; cached."""
    return cached_array(
        cache_path(optics, crystal, thicknesses),
        lambda: np.stack(
            [uniform_state_patterns(crystal, (e, 0.0, 0.0, 0.0), orientation_deg, thicknesses, optics) for e in STATES]
        ),
    )


def disk_flatness(probe: np.ndarray, converged: np.ndarray) -> dict:
    """The vacuum disk's centre against its four neighbours, and its largest difference from ``converged``."""
    cy, cx = probe.shape[0] // 2, probe.shape[1] // 2
    neighbours = np.mean([probe[cy - 1, cx], probe[cy + 1, cx], probe[cy, cx - 1], probe[cy, cx + 1]])
    return {
        "centre_over_neighbours": float(probe[cy, cx] / neighbours - 1.0),
        "max_difference_from_largest_box": float(np.abs(probe - converged).max() / converged.max()),
    }


def strain_row(detector, patterns: np.ndarray) -> dict:
    """Errors of e_xx and e_yy read from (3, H, W) clean patterns against the unstrained one [1]."""
    lattice, valid = fitted_lattices(detector, (patterns * DOSE).astype(np.float32))
    measured = strain_from_lattice(lattice, lattice[0])
    plus, minus = measured["e_xx"][1] - STRAIN, measured["e_xx"][2] + STRAIN
    return {
        "valid": bool(valid.all()),
        "e_xx_error_plus": float(plus),
        "e_xx_error_minus": float(minus),
        "slope_e_xx": float((measured["e_xx"][1] - measured["e_xx"][2]) / (2 * STRAIN)),
        "offset_e_xx": float((plus + minus) / 2),
        "e_yy_error_plus": float(measured["e_yy"][1]),
        "e_yy_error_minus": float(measured["e_yy"][2]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config = load_config(SUITE)
    cases = suite_cases(config)
    parser.add_argument("--crystals", nargs="*", choices=list(cases), default=list(cases))
    parser.add_argument("--box-scales", type=float, nargs="*", default=list(SCALES), help="[1/k_sampling]")
    parser.add_argument("--methods", nargs="*", default=["bragg", "unet"])
    parser.add_argument("--model", help="network model, a path or a shipped model's name (default: the shipped one)")
    args = parser.parse_args()
    if any(s < 1 for s in args.box_scales):
        parser.error(f"--box-scales must be at least 1 each, found {args.box_scales}")
    model = resolve_model(args.model)
    scales = sorted(set(args.box_scales))
    base = check_simulation(config, list(cases))
    probes = {s: vacuum_probe(dataclasses.replace(base, box_scale=s)) for s in scales}
    disks = {f"{s:g}": disk_flatness(probes[s], probes[scales[-1]]) for s in scales}
    rows, seconds = {}, {}
    for crystal in args.crystals:
        orientation, thicknesses = cases[crystal]
        for scale in scales:
            optics = dataclasses.replace(check_simulation(config, [crystal]), box_scale=scale)
            simulated, start = not cache_path(optics, crystal, thicknesses).exists(), time.perf_counter()
            clean = clean_patterns(optics, crystal, orientation, thicknesses)
            if simulated:  # the simulation's time, recorded only when it ran [s]
                seconds[f"{crystal}/{scale:g}"] = time.perf_counter() - start
            for index, thickness in enumerate(thicknesses):
                scan = make_4d_dataset(
                    clean[0, index][None, None] * DOSE,
                    1.0,
                    optics.k_sampling,
                    optics.energy_eV,
                    optics.semiangle_mrad,
                    probe=probes[scale] * DOSE,
                )
                for method in args.methods:
                    detector = make_detector(method, scan, **({"model": model} if method == "unet" else {}))
                    row = strain_row(detector, clean[:, index])
                    rows[f"{crystal}/{thickness:g}nm/box{scale:g}/{method}"] = row
                    print(
                        f"{crystal:11s} {thickness:3.0f} nm box {scale:<4g} {method:6s} e_xx error +2 % "
                        f"{1e4 * row['e_xx_error_plus']:+6.1f} -2 % {1e4 * row['e_xx_error_minus']:+6.1f}e-4  "
                        f"slope {row['slope_e_xx']:.4f}  e_yy {1e4 * row['e_yy_error_plus']:+.1f}/"
                        f"{1e4 * row['e_yy_error_minus']:+.1f}e-4",
                        flush=True,
                    )
    previous = RESULTS / "box_convergence.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        rows, seconds = old["rows"] | rows, old.get("simulation_seconds", {}) | seconds
    write_result(
        "box_convergence",
        {
            "strain_e_xx": STRAIN,
            "dose": DOSE,
            "model": str(model),
            "vacuum_disk": disks,
            "simulation_seconds": seconds,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()

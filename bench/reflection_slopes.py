"""Which reflections follow a strain: per reflection family, the slope of measured against kinematic spot shift.

The uniform series (``bench/uniform_series.py``) gives one slope per strain component, from the
lattice fitted to all spots. This takes one of its crystal x thickness cases apart: each method's
spots in the patterns strained in e_xx or e_yy (±1, ±2 %) are indexed on the kinematic strained
lattice, and each reflection's measured shift from its unstrained position (mean over the
unstrained draws, relative to the fitted origin) is projected on its kinematic shift
(F^-T - I) g. A slope of 1 follows the strain, below 1 compresses it. Families are grouped by
|g|; their weight share is the method's fit weight of that family over all non-central spots.

Usage: ``python bench/reflection_slopes.py [--crystal SrTiO3_001] [--thickness-nm 50]
[--frozen-phonons 16] [--dose 1e7] [--methods unet bragg] [--model NAME]``; writes
``bench/results/reflection_slopes_<crystal>_<t>nm_fp<N>.json``. The clean patterns are the uniform
series' (cached in ``bench/work/uniform_series/``, simulated when missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from uniform_series import CASES, DRAWS, STATES, SUITE, THICKNESSES_NM, calibration_scan, clean_patterns  # noqa: E402

from stemstrain.config import load_config  # noqa: E402
from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.lattice import initial_lattice  # noqa: E402
from stemstrain.model import resolve_model  # noqa: E402
from stemstrain.simulate.noise import PatternNoise, apply_noise  # noqa: E402

INDEX_TOLERANCE = 0.25
"""A spot is indexed when it lies within this fraction of the cell of a strained lattice point [1]."""
FAMILY_BIN = 0.02
"""Reflections whose |g| round to the same multiple of this are one family [1/angstrom]."""


def reflection_slopes(positions: np.ndarray, weights: np.ndarray, states: np.ndarray, space: str) -> list[dict]:
    """Slope of measured against kinematic shift for each reflection family.

    Parameters
    ----------
    positions : ndarray (n, m, 2)
        Spots of each pattern (x, y) [1/angstrom], NaN-padded; the first ``DRAWS`` patterns are unstrained.
    weights : ndarray (n, m)
        Their fit weights.
    states : ndarray (n, 4)
        Applied (e_xx, e_yy, e_xy, θ) of each pattern [1].
    space : str
        The detector's space (``reciprocal``).

    Returns
    -------
    list of dict
        Per family, by increasing |g|: g_inv_angstrom [1/angstrom], reflections, slope_mean,
        slope_min, slope_max [1], weight_share [1].
    """
    lattice0, origin0 = (np.asarray(v) for v in initial_lattice(positions[0], weights[0], space))
    reference: dict[tuple, list] = {}
    for draw in range(DRAWS):
        spots = np.isfinite(positions[draw, :, 0])
        hk = np.rint(np.linalg.solve(lattice0, (positions[draw, spots] - origin0).T).T).astype(int)
        for key, position, weight in zip(map(tuple, hk), positions[draw, spots], weights[draw, spots], strict=True):
            reference.setdefault(key, []).append((position, weight))
    reference = {
        key: (np.mean([p for p, _ in found], axis=0), float(np.mean([w for _, w in found])))
        for key, found in reference.items()
        if len(found) == DRAWS and key != (0, 0)
    }
    projected, squared = {}, {}
    for n in range(DRAWS, len(positions)):
        e_xx, e_yy, e_xy, _ = states[n]
        if e_xy != 0:
            continue
        to_strained = np.linalg.inv(np.diag([1 + e_xx, 1 + e_yy])).T
        spots = np.isfinite(positions[n, :, 0])
        fractional = np.linalg.solve(to_strained @ lattice0, (positions[n, spots] - origin0).T).T
        for position, index in zip(positions[n, spots], fractional, strict=True):
            key = tuple(np.rint(index).astype(int))
            if key not in reference or np.abs(index - np.rint(index)).max() > INDEX_TOLERANCE:
                continue
            g = reference[key][0] - origin0
            expected = to_strained @ g - g
            projected[key] = projected.get(key, 0.0) + float((position - reference[key][0]) @ expected)
            squared[key] = squared.get(key, 0.0) + float(expected @ expected)
    families: dict[float, list] = {}
    for key in projected:
        g = float(np.linalg.norm(reference[key][0] - origin0))
        family = round(g / FAMILY_BIN) * FAMILY_BIN
        families.setdefault(family, []).append((projected[key] / squared[key], reference[key][1]))
    total = sum(reference[key][1] for key in projected)
    return [
        {
            "g_inv_angstrom": round(g, 2),
            "reflections": len(members),
            "slope_mean": float(np.mean([s for s, _ in members])),
            "slope_min": float(np.min([s for s, _ in members])),
            "slope_max": float(np.max([s for s, _ in members])),
            "weight_share": float(sum(w for _, w in members) / total),
        }
        for g, members in sorted(families.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crystal", choices=list(CASES), default="SrTiO3_001")
    parser.add_argument("--thickness-nm", type=float, choices=THICKNESSES_NM, default=50.0)
    parser.add_argument("--frozen-phonons", type=int, default=16, help="thermal configurations (0: static lattice)")
    parser.add_argument("--dose", type=float, default=1e7, help="electrons per pattern [e-]")
    parser.add_argument("--methods", nargs="*", default=["unet", "bragg"])
    parser.add_argument("--model", help="network model, a path or a shipped model's name (default: the shipped one)")
    args = parser.parse_args()
    config = load_config(SUITE)
    orientation = {scan.name: scan.orientation_deg for scan in config.scans}[CASES[args.crystal]]
    clean = clean_patterns(config, args.crystal, orientation, args.frozen_phonons)[
        :, THICKNESSES_NM.index(args.thickness_nm)
    ]
    rng = np.random.default_rng(0)
    noise = PatternNoise(dose=args.dose)
    patterns = np.stack(
        [apply_noise(p, noise, config.detector.k_sampling, rng) for p in clean for _ in range(DRAWS)]
    ).astype(np.float32)
    states = np.repeat(STATES, DRAWS, axis=0)
    scan = calibration_scan(config, args.crystal, clean[0], args.dose)
    model = resolve_model(args.model)
    families = {}
    for method in args.methods:
        detector = make_detector(method, scan, model=model if method == "unet" else None)
        positions, weights = detector(patterns)
        families[method] = reflection_slopes(positions, weights, states, detector.space)
        weighted = sum(row["slope_mean"] * row["weight_share"] for row in families[method])
        print(f"{method:6s} weight-averaged slope over all families {weighted:.2f}")
        for row in families[method]:
            print(
                f"{method:6s} |g| {row['g_inv_angstrom']:.2f} 1/A  {row['reflections']:2d} reflections  slope "
                f"{row['slope_mean']:.2f} ({row['slope_min']:.2f}-{row['slope_max']:.2f})  "
                f"weight {row['weight_share']:.3f}"
            )
    payload = {
        "crystal": args.crystal,
        "thickness_nm": args.thickness_nm,
        "frozen_phonons": args.frozen_phonons,
        "dose": args.dose,
        "model": str(model),
        "families": families,
    }
    name = f"reflection_slopes_{args.crystal}_{args.thickness_nm:g}nm_fp{args.frozen_phonons}"
    print(json.dumps({"wrote": str(write_result(name, payload))}))


if __name__ == "__main__":
    main()

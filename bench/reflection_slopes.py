"""Which reflections follow a strain: per reflection family, the slope of measured against kinematic spot shift.

The uniform series (``bench/uniform_series.py``) gives one slope per strain component, from the
lattice fitted to all spots. This takes one of its crystal x thickness cases apart: each method's
spots in the patterns strained in e_xx or e_yy (±1, ±2 %) are matched to its spots in the unstrained
patterns (mean over the draws) moved by the kinematic strain, and each reflection's measured shift
is projected on its kinematic shift (F^-T - I) g, g taken from the fitted origin. A slope of 1
follows the strain, below 1 compresses it. Families are grouped by |g|; their weight share is the
method's fit weight of that family over all non-central spots.

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
from uniform_series import (  # noqa: E402
    CASES,
    DRAWS,
    SUITE,
    THICKNESSES_NM,
    calibration_scan,
    clean_patterns,
    noisy_draws,
)

from stemstrain.config import load_config  # noqa: E402
from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.lattice import initial_lattice  # noqa: E402
from stemstrain.model import resolve_model  # noqa: E402

MATCH_PX = 1.0
"""A spot is the same reflection as a reference spot when it lies within this distance of where the
kinematic strain moves that spot [px]."""
FAMILY_BIN = 0.02
"""Reflections whose |g| round to the same multiple of this are one family [1/angstrom]."""


def reflection_slopes(positions: np.ndarray, weights: np.ndarray, states: np.ndarray, space: str, tolerance: float):
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
    tolerance : float
        Matching distance [1/angstrom]: reference spots are those of the first unstrained draw found
        within it in every other unstrained draw; a strained spot is matched to the reference spot
        whose kinematically strained position lies within it.

    Returns
    -------
    list of dict
        Per family, by increasing |g|: g_inv_angstrom [1/angstrom], reflections, slope_mean,
        slope_min, slope_max [1], weight_share [1].
    """
    _, origin = initial_lattice(positions[0], weights[0], space)
    origin = np.asarray(origin)

    def spots(n):
        found = np.isfinite(positions[n, :, 0])
        return positions[n, found], weights[n, found]

    first, first_weights = spots(0)
    keep = np.linalg.norm(first - origin, axis=1) > tolerance  # the undiffracted beam is the origin
    reference, reference_weights = [first[keep]], [first_weights[keep]]
    for draw in range(1, DRAWS):
        found, found_weights = spots(draw)
        distance = np.linalg.norm(reference[0][:, None] - found[None], axis=-1)
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(nearest)), nearest] < tolerance
        reference = [r[close] for r in reference] + [found[nearest[close]]]
        reference_weights = [w[close] for w in reference_weights] + [found_weights[nearest[close]]]
    reference, reference_weights = np.mean(reference, axis=0), np.mean(reference_weights, axis=0)
    g = reference - origin
    projected, squared = np.zeros(len(g)), np.zeros(len(g))
    for n in range(DRAWS, len(positions)):
        e_xx, e_yy, e_xy, _ = states[n]
        if e_xy != 0:
            continue
        shift = g @ (np.linalg.inv(np.diag([1 + e_xx, 1 + e_yy])) - np.eye(2))  # (F^-T - I) g, F diagonal
        found, _ = spots(n)
        distance = np.linalg.norm((reference + shift)[:, None] - found[None], axis=-1)
        nearest = distance.argmin(axis=1)
        matched = distance[np.arange(len(g)), nearest] < tolerance
        measured = found[nearest] - reference
        projected += np.where(matched, np.sum(measured * shift, axis=1), 0.0)
        squared += np.where(matched, np.sum(shift * shift, axis=1), 0.0)
    families: dict[float, list] = {}
    for k in np.flatnonzero(squared > 0):
        family = round(float(np.linalg.norm(g[k])) / FAMILY_BIN) * FAMILY_BIN
        families.setdefault(family, []).append((projected[k] / squared[k], reference_weights[k]))
    total = reference_weights[squared > 0].sum()
    return [
        {
            "g_inv_angstrom": round(family, 2),
            "reflections": len(members),
            "slope_mean": float(np.mean([s for s, _ in members])),
            "slope_min": float(np.min([s for s, _ in members])),
            "slope_max": float(np.max([s for s, _ in members])),
            "weight_share": float(sum(w for _, w in members) / total),
        }
        for family, members in sorted(families.items())
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
    patterns, states = noisy_draws(clean, args.dose, config.detector.k_sampling)
    scan = calibration_scan(config, args.crystal, clean[0], args.dose)
    model = resolve_model(args.model)
    families = {}
    for method in args.methods:
        detector = make_detector(method, scan, model=model if method == "unet" else None)
        positions, weights = detector(patterns)
        families[method] = reflection_slopes(
            positions, weights, states, detector.space, MATCH_PX * config.detector.k_sampling
        )
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

"""How far counting noise moves each method's spots, and whether its fit weights follow that scatter.

Two suite scans that differ only in dose share their multislice (``bench/suite.yaml``): the same clean
pattern is drawn at, say, 1e6 and 1e4 e⁻. In the reference region (zero strain) each spot found at the
low dose is matched to the same method's spot at the high dose, in the same pattern; their distance is
the displacement that noise alone causes (the high-dose draw has 100× the counts, so 10× less noise).
The undiffracted disk (within 4 px of k = 0) is left out: it fixes the origin, not the lattice.

Reported per method, for the spots ranked by their low-dose fit weight (bands of the lowest 50 %, the
next 25 %, the next 15 %, the top 10 %): the RMS and median displacement [px] and the band's share of
the summed weight; and the weighted RMS displacement, the noise per spot that the lattice fit sees.
For the network, whose weight is 1/s² with s² = σ² + r²/N (its predicted spot uncertainty σ and the
disk's counting noise, ``stemstrain.model.encoding``), also the calibration ``rms(d/s)/√2`` per band
(1: s matches the noise; below 1: s overstates it and the spot weighs too little against the others).

Usage: ``python bench/spot_noise.py [--methods unet bragg] [--model NAME] [--pair HIGH LOW]``;
writes ``bench/results/spot_noise.json``. Needs the suite's scans (``python bench/accuracy.py --simulate-only``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from shift_response import matched, reference_patterns  # noqa: E402

from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.io import k_calibration  # noqa: E402
from stemstrain.model import resolve_model  # noqa: E402

BANDS = (0.0, 0.5, 0.75, 0.9, 1.0)
"""Quantiles of the low-dose weight that bound the bands."""
UNDIFFRACTED_PX = 4.0
MATCH_PX = 1.0


def displacements(detector, high: np.ndarray, low: np.ndarray, k_sampling: float) -> tuple[np.ndarray, np.ndarray]:
    """Noise displacement [px] and low-dose weight of every diffracted spot found at both doses."""
    (found_high, _), (found_low, weight_low) = detector(high), detector(low)
    moved, weights = [], []
    for spots_high, spots_low, weight in zip(found_high / k_sampling, found_low / k_sampling, weight_low, strict=True):
        diffracted = np.linalg.norm(spots_low, axis=-1) > UNDIFFRACTED_PX
        spots_low, weight = spots_low[diffracted], weight[diffracted]
        partner = matched(spots_high[np.isfinite(spots_high[:, 0])], spots_low, radius=MATCH_PX)
        ok = np.isfinite(partner[:, 0])
        moved.append(np.linalg.norm(spots_low[ok] - partner[ok], axis=-1))
        weights.append(weight[ok])
    return np.concatenate(moved), np.concatenate(weights)


def summary(moved: np.ndarray, weights: np.ndarray, sigma_weights: bool) -> dict:
    """Scatter by weight band, the weight share of each band, and the weighted RMS [px]."""
    edges = np.quantile(weights, BANDS)
    bands = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        chosen = (weights >= low) & (weights <= high)
        band = {
            "spots": int(chosen.sum()),
            "rms_px": float(np.sqrt(np.mean(moved[chosen] ** 2))),
            "median_px": float(np.median(moved[chosen])),
            "weight_share": float(weights[chosen].sum() / weights.sum()),
        }
        if sigma_weights:
            band["sigma_px"] = [float(1 / np.sqrt(high)), float(1 / np.sqrt(low))]
            band["calibration"] = float(np.sqrt(np.mean(moved[chosen] ** 2 * weights[chosen]) / 2))
        bands.append(band)
    weighted = float(np.sqrt(np.sum(weights * moved**2) / weights.sum()))
    return {"spots": len(moved), "weighted_rms_px": weighted, "bands": bands}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=["unet", "bragg"])
    parser.add_argument("--model", help="network model, a path or a shipped model's name (default: the shipped one)")
    parser.add_argument(
        "--pair",
        nargs=2,
        default=["si110_t37_d1e6", "si110_t37_d1e4"],
        metavar=("HIGH", "LOW"),
        help="two suite scans that differ only in dose",
    )
    args = parser.parse_args()
    (high, scan), (low, _) = reference_patterns(args.pair[0]), reference_patterns(args.pair[1])
    k_sampling, _ = k_calibration(scan)
    model = resolve_model(args.model)
    rows = {}
    for method in args.methods:
        detector = make_detector(method, scan, model=model if method == "unet" else None)
        moved, weights = displacements(detector, high, low, k_sampling)
        rows[method] = summary(moved, weights, sigma_weights=method == "unet")
        bands = " ".join(f"{b['rms_px']:.3f}px/{b['weight_share']:.2f}" for b in rows[method]["bands"])
        print(f"{method:6s} weighted rms {rows[method]['weighted_rms_px']:.3f} px; bands (rms/weight share): {bands}")
    payload = {"pair": args.pair, "model": str(model), "rows": rows}
    print(json.dumps({"wrote": str(write_result("spot_noise", payload))}))


if __name__ == "__main__":
    main()

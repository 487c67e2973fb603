"""How a method answers a purely geometric strain: the suite's unstrained patterns, stretched by a known amount.

The reference rows of each scan of the accuracy suite (zero strain) are warped by the training
augmentation's bilinear warp (``stemstrain.train.augment.warp``) to a uniform e_xx or e_yy of ±2 %
(reciprocal vectors scaled by 1/(1 ± 0.02) along x or y) and by the identity (a control for the
interpolation). Each method's spots are fitted as in a strain run, against the median lattice of
the unwarped patterns. A ratio of measured to applied strain below 1 that shows here is in the
method's response to geometry; one that shows only on the real strained scans (``bench/accuracy.py``)
comes with the strained crystal's patterns (dynamical scattering), which no warp imitates.

Usage: ``python bench/warp_response.py [--methods unet bragg] [--model NAME]``; writes
``bench/results/warp_response.json``. Needs the suite's scans (``python bench/accuracy.py --simulate-only``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fitted_lattices, write_result  # noqa: E402

from stemstrain.config import load_config  # noqa: E402
from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.io import open_4d  # noqa: E402
from stemstrain.model import resolve_model  # noqa: E402
from stemstrain.strain import strain_from_lattice  # noqa: E402
from stemstrain.train.augment import warp  # noqa: E402

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite.yaml"
WORK = HERE / "work" / "suite"
APPLIED = 0.02
"""Applied strain [1]."""


def stretched(patterns: np.ndarray, component: str, strain: float) -> np.ndarray:
    """Patterns (n, H, W) whose reciprocal lattice is scaled by 1/(1 + strain) along x or y about k = 0."""
    scale = [1.0, 1.0]
    scale[0 if component == "e_xx" else 1] = 1.0 / (1.0 + strain)
    matrices = torch.diag(torch.tensor(scale)).expand(len(patterns), 2, 2)
    images = torch.as_tensor(patterns, dtype=torch.float32)[:, None]
    centre = float(patterns.shape[-1] // 2)
    return warp(images, matrices, torch.zeros(len(patterns), 2), centre)[:, 0].numpy()


def response(scan_path: Path, roi: tuple, method: str, model: Path | None) -> dict:
    """Median measured strain of the warped reference patterns, per applied component and sign."""
    scan = open_4d(scan_path)
    y0, y1, x0, x1 = roi
    patterns = np.asarray(scan["data"].values[y0:y1, x0:x1], dtype=np.float32).reshape(-1, *scan["data"].shape[2:])
    detector = make_detector(method, scan, model=model)
    mean = patterns.mean(axis=0)  # indexes every fit below
    lattice, valid = fitted_lattices(detector, patterns, mean)
    reference = np.median(lattice[valid], axis=0)
    stretches = [(f"{c} {s:+.2f}", c, s) for c in ("e_xx", "e_yy") for s in (-APPLIED, APPLIED)]
    cases = [("identity", "e_xx", 0.0), *stretches]
    result = {}
    for label, component, strain in cases:
        lattice, valid = fitted_lattices(detector, stretched(patterns, component, strain), mean)
        measured = strain_from_lattice(lattice[valid], reference)
        result[label] = {
            "applied": strain,
            "measured": float(np.median(measured[component])),
            "other_normal": float(np.median(measured["e_yy" if component == "e_xx" else "e_xx"])),
            "valid_fraction": float(valid.mean()),
        }
        if strain:
            result[label]["ratio"] = result[label]["measured"] / strain
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=["unet", "bragg"])
    parser.add_argument("--model", help="network model, a path or a shipped model's name (default: the shipped one)")
    args = parser.parse_args()
    scans = load_config(SUITE).scans
    rows = {}
    for scan in scans:
        path = WORK / f"{scan.name}.zarr"
        if not path.exists():
            sys.exit(f"{path}: missing; build the suite first (python bench/accuracy.py --simulate-only)")
        for method in args.methods:
            model = resolve_model(args.model) if method == "unet" else None
            rows[f"{scan.name}/{method}"] = response(path, tuple(scan.reference_roi), method, model)
            ratios = [v["ratio"] for v in rows[f"{scan.name}/{method}"].values() if "ratio" in v]
            print(f"{scan.name:22s} {method:8s} ratio {min(ratios):.3f}-{max(ratios):.3f}", flush=True)
    path = write_result("warp_response", {"applied": APPLIED, "model": str(args.model or "shipped"), "rows": rows})
    print(json.dumps({"wrote": str(path)}))


if __name__ == "__main__":
    main()

"""How a method answers a purely geometric strain: the suite's unstrained patterns, stretched by a known amount.

The reference rows of each scan of the accuracy suite (zero strain) are warped by the training
augmentation's bilinear warp (``stemstrain.train.augment.warp``) to a uniform e_xx or e_yy of ±2 %
(reciprocal vectors scaled by 1/(1 ± 0.02) along x or y), turned by ±0.02 rad (an in-plane rotation
of the crystal turns its pattern alike; whatever shows in e_xx, e_yy or e_xy then is a leak), and by
the identity (a control for the interpolation). Each method's spots are fitted as in a strain run,
against the median lattice of the unwarped patterns. A ratio of measured to applied strain below 1
that shows here is in the method's response to geometry; one that shows only on the real strained
scans (``bench/accuracy.py``) comes with the strained crystal's patterns (dynamical scattering),
which no warp imitates.

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
from stemstrain.strain import rotation_matrix, strain_from_lattice  # noqa: E402
from stemstrain.train.augment import warp  # noqa: E402

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite.yaml"
WORK = HERE / "work" / "suite"
APPLIED = 0.02
"""Applied strain [1]."""


def reciprocal_map(component: str, value: float) -> np.ndarray:
    """The 2×2 map of the reciprocal lattice (x, y) for a uniform e_xx or e_yy, or a rotation θ [rad]."""
    if component == "theta":
        return rotation_matrix(value)
    scale = [1.0, 1.0]
    scale[0 if component == "e_xx" else 1] = 1.0 / (1.0 + value)
    return np.diag(scale)


def warped(patterns: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Patterns (n, H, W) whose content is mapped by ``matrix`` about k = 0 (the training's bilinear warp)."""
    matrices = torch.as_tensor(matrix, dtype=torch.float32).expand(len(patterns), 2, 2)
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
    applied = [(f"{c} {s:+.2f}", c, s) for c in ("e_xx", "e_yy", "theta") for s in (-APPLIED, APPLIED)]
    cases = [("identity", "e_xx", 0.0), *applied]
    result = {}
    for label, component, value in cases:
        lattice, valid = fitted_lattices(detector, warped(patterns, reciprocal_map(component, value)), mean)
        measured = strain_from_lattice(lattice[valid], reference)
        row = {"applied": value, "measured": float(np.median(measured[component]))}
        row["valid_fraction"] = float(valid.mean())
        if component == "theta":  # a rotation is no strain: what shows in e_xx, e_yy, e_xy leaks
            row["leak"] = {name: float(np.median(measured[name])) for name in ("e_xx", "e_yy", "e_xy")}
        else:
            row["other_normal"] = float(np.median(measured["e_yy" if component == "e_xx" else "e_xx"]))
        if value:
            row["ratio"] = row["measured"] / value
        result[label] = row
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
            cases = rows[f"{scan.name}/{method}"]
            ratios = [v["ratio"] for k, v in cases.items() if "ratio" in v and not k.startswith("theta")]
            leak = max(abs(x) for k, v in cases.items() if k.startswith("theta") for x in v["leak"].values())
            print(
                f"{scan.name:22s} {method:8s} stretch ratio {min(ratios):.3f}-{max(ratios):.3f}, "
                f"rotation ratio {cases['theta -0.02']['ratio']:.3f}/{cases['theta +0.02']['ratio']:.3f}, "
                f"largest leak of a 0.02 rad turn {leak * 1e4:.1f}e-4",
                flush=True,
            )
    path = write_result("warp_response", {"applied": APPLIED, "model": str(args.model or "shipped"), "rows": rows})
    print(json.dumps({"wrote": str(path)}))


if __name__ == "__main__":
    main()

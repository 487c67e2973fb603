"""The network's lattice fit, varied on one network pass: spot weights and per-reflection static offsets.

On each scan of a suite (default: the 2x box, ``bench/work/suite-box2``, made by
``python bench/accuracy.py --box-scale 2 --simulate-only``) the model runs once at the model's
calibration (the scans are at it, so the network's input is the scan's patterns); its spots are
read out by their own offsets (``refine: offsets``) and the lattices fitted as ``stemstrain strain``
fits them, with

- the spot weights ``1 / (σ² + c r² / N)`` for several c (σ: the network's own uncertainty [px],
  r: the disk radius [px], N: the counts in the disk; ``c = 1`` is the detector's weighting, 1/4 the
  centroid variance of a uniformly lit disk per axis, 0 the network's σ alone);
- the detector's weights and the reflection offsets of the reference region taken off every spot
  (``--static-offsets`` of ``stemstrain strain``);
- the detector's weights calibrated per reflection by its scatter in the reference region
  (``--scatter-limit 2``, the default of ``stemstrain strain`` since 2026-12-05).

Worst strain-component RMSE of each variant, scored as ``bench/accuracy.py`` scores (outside the
reference region, against the truth). A variant chosen by this table would be chosen on the held-out
scans themselves: the table says how much the fit can move, not which fit to ship.

    python bench/fit_variants.py [--model fast-v1] [--suite bench/work/suite-box2]

Results: ``bench/results/fit_variants_<model>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.evaluate.score import evaluate_strain  # noqa: E402
from stemstrain.io import open_4d  # noqa: E402
from stemstrain.lattice import FitOptions, fit_patterns, initial_lattice, reflection_calibration  # noqa: E402
from stemstrain.model import resolve_model  # noqa: E402
from stemstrain.model.encoding import decode_spots, disk_counts  # noqa: E402
from stemstrain.strain import STRAIN_COMPONENTS, reference_lattice, strain_from_lattice  # noqa: E402

COUNT_SCALES = (0.0, 0.25, 1.0, 4.0)


def scan_variants(scan_path: Path, truth_path: Path, model: Path) -> dict:
    """Worst-component RMSE [1] of each fit variant on one scan."""
    scan = open_4d(scan_path)
    truth = xr.open_zarr(truth_path).load()
    roi = [int(v) for v in scan.attrs["reference_roi"]]
    data = scan["data"].values.astype(np.float32)
    ny, nx = data.shape[:2]
    patterns = data.reshape(-1, *data.shape[2:])
    detector = make_detector("unet", scan, model=model, refine="offsets")
    k_sampling = float(scan["k_x"].values[1] - scan["k_x"].values[0])
    if detector.pixels != patterns.shape[-1] or not np.isclose(detector.k_sampling, k_sampling):
        raise SystemExit(f"{scan_path}: not at the model's calibration (the bench feeds the scan to the network as is)")
    positions, sigma_weights = decode_spots(detector.predict(patterns), **detector.readout)
    radius = np.asarray(detector.disk_radius_px, dtype=float)
    counts = disk_counts(patterns, positions, radius)
    positions = (positions - detector.pixels // 2) * detector.k_sampling  # [1/angstrom], as the detector returns
    y0, y1, x0, x1 = roi
    mean = data[y0:y1, x0:x1].reshape(-1, *data.shape[2:]).mean(axis=0)
    start, start_weights = detector(mean[None])
    options = FitOptions(scatter_limit=0)  # the weights of each variant as they are
    lattice0, origin0 = initial_lattice(start[0], start_weights[0], detector.space, options)
    in_reference = np.zeros((ny, nx), bool)
    in_reference[y0:y1, x0:x1] = True

    def weights(scale: float) -> np.ndarray:
        with np.errstate(divide="ignore"):
            network = np.where(sigma_weights > 0, 1.0 / sigma_weights, np.inf)
            variance = network + scale * radius**2 / np.maximum(counts, 1.0)
        return np.where(sigma_weights > 0, 1.0 / variance, 0.0)

    def score(spot_weights: np.ndarray, offsets: np.ndarray | None = None) -> float | None:
        fit = fit_patterns(positions, spot_weights, lattice0, origin0, True, options, offsets)
        lattice, valid = fit["lattice"].reshape(ny, nx, 2, 2), fit["valid"].reshape(ny, nx)
        try:
            reference = reference_lattice(lattice, tuple(roi), valid=valid)
        except Exception:  # no valid reference fit: the variant fails on this scan
            return None
        components = strain_from_lattice(np.where(valid[..., None, None], lattice, np.nan), reference)
        dims = ("scan_y", "scan_x")
        prediction = xr.Dataset({c: (dims, components[c]) for c in STRAIN_COMPONENTS} | {"mask": (dims, valid)})
        prediction.attrs["reference_roi"] = roi
        scores = evaluate_strain(prediction, truth)
        return max(scores[c]["rmse"] for c in ("e_xx", "e_yy", "e_xy"))

    default = weights(1.0)
    reference_rows = in_reference.reshape(-1)

    def calibration(fit_options: FitOptions) -> np.ndarray:
        return reflection_calibration(
            positions[reference_rows], default[reference_rows], lattice0, origin0, True, fit_options
        )

    result = {f"c={scale:g}": score(weights(scale)) for scale in COUNT_SCALES}
    result["static_offsets"] = score(default, calibration(FitOptions(static_offsets=True, scatter_limit=0)))
    result["scatter_limit=2"] = score(default, calibration(FitOptions(scatter_limit=2.0)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="fast-v1", help="a path or a shipped model's name")
    parser.add_argument("--suite", type=Path, default=Path(__file__).resolve().parent / "work" / "suite-box2")
    args = parser.parse_args()
    model = resolve_model(args.model)
    rows = {}
    started = time.time()
    for scan_path in sorted(args.suite.glob("*.zarr")):
        if scan_path.name.endswith(".truth.zarr"):
            continue
        truth_path = scan_path.with_name(scan_path.name.replace(".zarr", ".truth.zarr"))
        if not truth_path.exists():
            continue
        rows[scan_path.stem] = scan_variants(scan_path, truth_path, model)
        figures = (
            f"{name} {1e4 * rmse:.1f}" if rmse else f"{name} fail" for name, rmse in rows[scan_path.stem].items()
        )
        print(scan_path.stem, " ".join(figures))
    path = write_result(
        f"fit_variants_{Path(model).stem}",
        {
            "model": Path(model).name,
            "suite": str(args.suite.relative_to(Path.cwd()) if args.suite.is_relative_to(Path.cwd()) else args.suite),
            "units": "worst strain-component RMSE [1]",
            "count_scales": list(COUNT_SCALES),
            "wall_s": round(time.time() - started, 1),
            "rows": rows,
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()

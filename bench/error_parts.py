"""How much of a method's error on the 2x-box suite is compression, how much is scatter.

For each strain map of the suite (every noise draw found) and each strain component, the map is
scaled about zero strain (the reference's) by the factor ``a`` that fits it best to the truth (least
squares through the origin, ``a = sum(p t) / sum(t^2)``); the RMSE of ``p - a t``, the error that a
perfect rescaling would leave, is given beside the plain RMSE. Where it stays near the RMSE the
method scatters (noise, misplaced spots); where it drops, the method compresses (a < 1) or stretches
(a > 1) the strain. (The suite's slope allows an intercept, so it can differ from ``a``.) Scored
positions are the suite's (:func:`stemstrain.evaluate.evaluate_strain`: valid, outside the reference
rows); draws pooled as the suite pools them (root of the mean square).

Usage: ``python bench/error_parts.py [--scans au001_t30_d1e5 ...] [--methods unet bragg ...]
[--suite bench/validation.yaml]``; reads the maps ``bench/accuracy.py --box-scale 2`` wrote under
``bench/work/suite-box2/maps`` (no method runs); writes ``bench/results/error_parts_box2.json``
(``error_parts_validation_box2.json`` for the validation scans), keeping the rows of scans and
methods not run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy import SUITE, merged, variant  # noqa: E402
from common import RESULTS, write_result  # noqa: E402

from stemstrain.config import load_config  # noqa: E402
from stemstrain.evaluate.score import scored_positions  # noqa: E402
from stemstrain.evaluate.suite import STRAIN_ONLY  # noqa: E402


def error_parts(prediction: xr.Dataset, truth: xr.Dataset) -> dict[str, dict[str, float]]:
    """Mean squared error, best scale about zero strain and mean squared error after it, per strain component.

    Positions are those :func:`~stemstrain.evaluate.evaluate_strain` scores (:func:`scored_positions`). Returns
    ``{component: {"mse": [1], "scale": a [1], "mse_scaled": [1]}}``.
    """
    scored, _ = scored_positions(prediction, truth)
    parts = {}
    for name in STRAIN_ONLY:
        true, predicted = truth[name].values[scored], prediction[name].values[scored]
        spread = np.sum(true**2)
        scale = float(np.sum(predicted * true) / spread) if spread > 0 else np.nan  # NaN: no strain to scale
        parts[name] = {
            "mse": float(np.mean((predicted - true) ** 2)),
            "scale": scale,
            "mse_scaled": float(np.mean((predicted - np.nan_to_num(scale, nan=1.0) * true) ** 2)),
        }
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=SUITE, help="the scans' file (default bench/suite.yaml)")
    parser.add_argument("--scans", nargs="*", help="scan names (default: every scan of the suite file with maps)")
    parser.add_argument("--methods", nargs="*", default=["unet", "bragg", "cepstrum-multi", "py4dstem"])
    args = parser.parse_args()
    config = load_config(args.suite)
    work, result = variant(2.0, config.name)
    rows = []
    for scan in args.scans or [s.name for s in config.scans]:
        truth = work / f"{scan}.truth.zarr"
        if not truth.exists():
            continue
        expected = xr.open_zarr(truth)
        for method in args.methods:
            maps = sorted((work / "maps").glob(f"{scan}.{method}.zarr")) + sorted(
                (work / "maps").glob(f"{scan}.draw*.{method}.zarr")
            )
            if not maps:
                continue
            draws = [error_parts(xr.open_zarr(path), expected) for path in maps]
            pooled = {
                c: {
                    "rmse": float(np.sqrt(np.mean([d[c]["mse"] for d in draws]))),
                    "scale": float(np.mean([d[c]["scale"] for d in draws])),
                    "rmse_scaled": float(np.sqrt(np.mean([d[c]["mse_scaled"] for d in draws]))),
                }
                for c in STRAIN_ONLY
            }
            rows.append({"scan": scan, "method": method, "draws": len(maps), "components": pooled})
            cells = " | ".join(
                f"{c} {v['rmse'] * 1e4:.1f} -> {v['rmse_scaled'] * 1e4:.1f} (a {v['scale']:.3f})"
                for c, v in pooled.items()
            )
            print(f"{scan:18s} {method:15s} {len(maps)} draws | {cells}", flush=True)
    name = result.replace("accuracy", "error_parts") if result.startswith("accuracy") else f"error_parts_{result}"
    rows = merged(rows, [s.name for s in config.scans], args.methods, RESULTS / f"{name}.json")  # keep others
    print(write_result(name, {"suite": str(args.suite), "box_scale_min": 2.0, "rows": rows}))


if __name__ == "__main__":
    main()

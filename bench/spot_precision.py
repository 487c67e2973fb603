"""How close a network's spots come to the true disk centres, on the patterns of a training-set store.

For each model, the bright patterns of a store (dose ≥ ``--min-dose``; every ``--every``-th, at most
``--limit``) go through the network once, raw as ``stemstrain strain`` feeds them at the model's
calibration; the spots are read out by the network's own offsets
(:func:`stemstrain.model.encoding.decode_spots`) and matched within 1.5 px to the store's true spots of
kinematic amplitude ≥ ``--min-amplitude``. Reported per thickness band: the median and RMS distance
[px] and the matched fraction. A store the model was not trained on is an independent check (fast-v1
and general-v2 never saw a 2x-box pattern); on the model's own training set it is an in-sample figure.
Strain needs the *change* of these errors with strain, not their size, so read this as the network's
spot precision, not as a strain error.

    python bench/spot_precision.py --data /path/box2c.zarr --models fast-v1 general-v2 [--tag NAME]

Results: ``bench/results/spot_precision[_TAG].json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.model import load_model, resolve_model  # noqa: E402
from stemstrain.model.encoding import decode_spots  # noqa: E402
from stemstrain.train.metrics import match_spots  # noqa: E402

BANDS_NM = ((0.0, 30.0), (30.0, 60.0), (60.0, 200.0))
"""Thickness bands [nm]."""


def network_spots(model_path: Path, patterns: np.ndarray, batch: int = 32) -> np.ndarray:
    """Spot positions (n, m, 2) [px] of one model on raw patterns (n, H, W) [counts], NaN-padded."""
    model, _ = load_model(model_path)
    with torch.no_grad():
        outputs = [
            model(torch.from_numpy(patterns[s : s + batch])[:, None]).numpy() for s in range(0, len(patterns), batch)
        ]
    return decode_spots(np.concatenate(outputs))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="training-set store with spot lists")
    parser.add_argument("--models", nargs="+", default=["fast-v1"], help="paths or shipped models' names")
    parser.add_argument("--min-dose", type=float, default=3e5, help="brightest patterns only [e-]")
    parser.add_argument("--every", type=int, default=3, help="take every n-th bright pattern")
    parser.add_argument("--limit", type=int, default=600, help="patterns at most")
    parser.add_argument("--min-amplitude", type=float, default=0.2, help="true spots of this kinematic amplitude up")
    parser.add_argument("--tag", help="appended to the result's name")
    args = parser.parse_args()

    group = zarr.open_group(str(args.data), mode="r")
    for name in ("spots", "spot_amplitudes", "dose", "thickness_nm"):
        if name not in group:
            raise SystemExit(
                f"{args.data}: variable '{name}' is missing; expected a set written by `stemstrain simulate`"
            )
    chosen = np.nonzero(np.asarray(group["dose"][:]) >= args.min_dose)[0][:: args.every][: args.limit]
    if len(chosen) == 0:
        raise SystemExit(f"{args.data}: no pattern with dose >= {args.min_dose:g} e-")
    patterns = np.stack([np.asarray(group["inputs"][int(i)], dtype=np.float32) for i in chosen])
    truth = np.stack([np.asarray(group["spots"][int(i)]) for i in chosen])
    amplitudes = np.stack([np.asarray(group["spot_amplitudes"][int(i)]) for i in chosen])
    thickness = np.asarray(group["thickness_nm"][:])[chosen]

    rows = {}
    for model in args.models:
        found = network_spots(resolve_model(model), patterns)
        row = {}
        for low, high in BANDS_NM:
            distances, n_true = [], 0
            for i in np.nonzero((thickness >= low) & (thickness < high))[0]:
                true = truth[i][(amplitudes[i] >= args.min_amplitude) & np.isfinite(truth[i, :, 0])]
                n_true += len(true)
                distances.append(match_spots(true, found[i][np.isfinite(found[i, :, 0])], radius=1.5))
            distances = np.concatenate(distances) if distances else np.zeros(0)
            row[f"{low:g}-{high:g} nm"] = {
                "median_px": float(np.median(distances)) if len(distances) else None,
                "rms_px": float(np.sqrt(np.mean(distances**2))) if len(distances) else None,
                "matched_fraction": len(distances) / max(n_true, 1),
            }
        rows[Path(model).stem] = row
        print(Path(model).stem, {band: round(v["median_px"] or np.nan, 3) for band, v in row.items()}, flush=True)
    path = write_result(
        "spot_precision" + (f"_{args.tag}" if args.tag else ""),
        {
            "data": str(args.data),
            "patterns": len(chosen),
            "min_dose": args.min_dose,
            "min_amplitude": args.min_amplitude,
            "units": "distance of the network's spot to the true disk centre [px]",
            "rows": rows,
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()

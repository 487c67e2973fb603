"""Each method's systematic error on the 2x-box scans, measured by simulation at the map's states, and taken off.

For each scan (``bench/accuracy.py --box-scale 2`` must have written its maps): the crystal's
in-plane orientation is fitted to the network map's reference lattice and its thickness to the
reference region's mean pattern (:mod:`stemstrain.response`: the crystal is the scan's ``material``,
as a user names it; orientation and thickness are not read from the scan's attrs, which a user does
not have); the network map's measured states are clustered into ``--states`` centres; uniform
crystals at those states (and unstrained) are simulated at the scan's optics and dose
(``--positions`` probe positions x noise draws each, enough for 2e7 electrons per state, cached in
``bench/work/<suite>-box2/response``); every method reads them as it reads the scan; its systematic
error Δ per state is interpolated and taken off its map. The table gives each method's RMSE before and
after, scored as the suite scores. The simulation shares the scans' physics (abTEM, the same potentials
and optics): on measured data the correction holds only as far as that physics does.

Usage: ``python bench/response.py [--suite bench/validation.yaml] [--scans NAME ...] [--methods unet bragg
cepstrum-multi] [--states 8] [--positions 8] [--draws N] [--frozen-phonons N]``; writes
``bench/results/response_box2.json`` (``response_validation_box2.json`` for the validation scans; rows of
other scans and methods kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy import SUITE, merged, variant  # noqa: E402
from common import RESULTS, write_result  # noqa: E402

from stemstrain.evaluate import evaluate_strain  # noqa: E402
from stemstrain.evaluate.score import scored_positions  # noqa: E402
from stemstrain.evaluate.suite import STRAIN_ONLY  # noqa: E402
from stemstrain.io import atomic_output  # noqa: E402
from stemstrain.response import ResponseOptions, corrected_strain, simulate_states, state_errors  # noqa: E402
from stemstrain.strain import STRAIN_COMPONENTS  # noqa: E402
from stemstrain.strainmap import strain_map  # noqa: E402


def worst(scores: dict) -> float:
    """Largest RMSE of e_xx, e_yy, e_xy [1]."""
    return max(scores[c]["rmse"] for c in STRAIN_ONLY)


def calibration(scan_path: Path, network_map: xr.Dataset, truth: xr.Dataset, folder: Path, args) -> Path:
    """The cached state scan of one scan: states clustered from the network map's scored positions."""
    phonons = "" if args.frozen_phonons is None else f"fp{args.frozen_phonons}"
    path = folder / f"{scan_path.stem}.k{args.states}p{args.positions}d{args.draws or 'auto'}{phonons}.zarr"
    if not path.exists():
        start = time.perf_counter()
        scored, _ = scored_positions(network_map, truth)
        measured = np.stack([network_map[c].values for c in STRAIN_COMPONENTS], axis=-1)[scored]
        reference = np.stack([network_map.attrs["g1"], network_map.attrs["g2"]], axis=-1)
        states = simulate_states(
            xr.open_zarr(scan_path),
            reference,
            measured,
            network_map.attrs["reference_roi"],
            ResponseOptions(
                states=args.states, positions=args.positions, draws=args.draws, frozen_phonons=args.frozen_phonons
            ),
            progress=True,
        )
        states.attrs["seconds_simulation"] = time.perf_counter() - start
        with atomic_output(path) as tmp:
            states.to_zarr(tmp, mode="w")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=SUITE, help="the scans' file (default bench/suite.yaml)")
    parser.add_argument("--scans", nargs="*", help="scan names (default: every scan of the suite file with maps)")
    parser.add_argument("--methods", nargs="*", default=["unet", "bragg", "cepstrum-multi"])
    parser.add_argument("--states", type=int, default=8, help="simulated states (k-means centres of the map's)")
    parser.add_argument("--positions", type=int, default=8, help="probe positions per state")
    parser.add_argument(
        "--draws", type=int, help="noise draws per position (default: stemstrain.response.ELECTRONS_PER_STATE)"
    )
    parser.add_argument(
        "--frozen-phonons",
        type=int,
        help="frozen-phonon configurations of the simulated states (default: the scan's own); rows labelled METHOD+fpN",
    )
    args = parser.parse_args()
    from stemstrain.config import load_config

    config = load_config(args.suite)
    work, result = variant(2.0, config.name)
    # rows of states simulated with a given frozen-phonon count are labelled METHOD+fpN
    label = {m: m if args.frozen_phonons is None else f"{m}+fp{args.frozen_phonons}" for m in args.methods}
    folder = work / "response"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for scan in args.scans or [s.name for s in config.scans]:
        truth_path, network_path = work / f"{scan}.truth.zarr", work / "maps" / f"{scan}.unet.zarr"
        if not (truth_path.exists() and network_path.exists()):
            continue
        truth = xr.open_zarr(truth_path).load()
        store = calibration(work / f"{scan}.zarr", xr.open_zarr(network_path).load(), truth, folder, args)
        simulated = xr.open_zarr(store)
        states = simulated["states"].values
        keys = ("material", "orientation_deg", "orientation_residual", "thickness_nm", "thickness_correlation")
        keys = (*keys, "frozen_phonons")  # the count the states were simulated with
        info = {key: simulated.attrs.get(key) for key in (*keys, "seconds_simulation")}
        for method in args.methods:
            map_path = work / "maps" / f"{scan}.{method}.zarr"
            if not map_path.exists():
                continue
            measured_path = store.with_suffix(f".{method}.zarr")
            if not measured_path.exists():
                strain_map(store, measured_path, method, progress=False)
            errors = state_errors(states, xr.open_zarr(measured_path).load())
            prediction = xr.open_zarr(map_path).load()
            before = evaluate_strain(prediction, truth)
            after = evaluate_strain(corrected_strain(prediction, states, errors), truth)
            rows.append(
                {
                    "scan": scan,
                    "method": label[method],
                    "rmse_before": {c: before[c]["rmse"] for c in STRAIN_ONLY},
                    "rmse_after": {c: after[c]["rmse"] for c in STRAIN_ONLY},
                    "worst_before": worst(before),
                    "worst_after": worst(after),
                    "largest_error": float(np.abs(errors[1:, :3]).max()),
                }
            )
            print(
                f"{scan:18s} {method:15s} worst {worst(before) * 1e4:5.1f} -> {worst(after) * 1e4:5.1f} [1e-4] "
                f"(orientation {info['orientation_deg']:.1f} deg, thickness {info['thickness_nm']:.1f} nm, "
                f"largest |Δ| {rows[-1]['largest_error'] * 1e4:.1f})",
                flush=True,
            )
        for row in rows:
            if row["scan"] == scan:
                row.update(info)
    name = result.replace("accuracy", "response") if result.startswith("accuracy") else f"response_{result}"
    rows = merged(rows, [s.name for s in config.scans], list(label.values()), RESULTS / f"{name}.json")  # keep others
    settings = {"states": args.states, "positions": args.positions, "draws": args.draws}
    print(write_result(name, {"suite": str(args.suite), "box_scale_min": 2.0, **settings, "rows": rows}))


if __name__ == "__main__":
    main()

"""Frozen-phonon sampling floor: one uniform strain state simulated again with other thermal seeds.

A frozen-phonon pattern averages N thermal configurations; a real exposure averages very many. With
small N each probe position of a scan sees its own few configurations, and the disks move with them.
This benchmark measures what that costs a strain read-out that makes no other error: for one crystal
(the suite's orientation and optics), the unstrained state and e_xx = ±2 % are each simulated with
``--seeds`` thermal seeds and N configurations, read by each method at each dose and measured against
the median lattice of the unstrained seeds. The spread over the seeds of the unstrained state is the
floor that N configurations put under any method; the difference of the means of the two strained
states, divided by 0.04, is the method's slope of e_xx with the thermal noise averaged out, and half
their sum its offset at 2 % (a bias that does not grow linearly with the strain).

Usage: ``python bench/phonon_floor.py [--crystal SrTiO3_001] [--frozen-phonons 4 16] [--seeds 8]
[--thicknesses 37 50] [--doses 1e5 1e8] [--methods bragg unet] [--tilt-prior T] [--disk-correction NAME]``;
writes ``bench/results/phonon_floor.json`` (another crystal adds its name, another number of seeds
``_sN``). A run's rows replace those of the same configurations, thickness, dose and method label and
keep the others (labels as in ``bench/accuracy.py``: ``unet+tilt0``, ``bragg+tilt0.14``,
``unet+disks-v1``). Clean patterns are cached in ``bench/work/phonon_floor/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, cached_array, fitted_lattices, readout_variant, uniform_state_patterns, write_result  # noqa: E402
from uniform_series import CASES, COMPONENTS, calibration_scan  # noqa: E402

from stemstrain.config import load_config  # noqa: E402
from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.model import resolve_model  # noqa: E402
from stemstrain.simulate.dataset import check_simulation  # noqa: E402
from stemstrain.simulate.noise import PatternNoise, apply_noise  # noqa: E402
from stemstrain.strain import strain_from_lattice  # noqa: E402

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite.yaml"
WORK = HERE / "work" / "phonon_floor"
STRAIN = 0.02
"""|e_xx| of the two strained states [1]."""
FIRST_SEED = 100
"""Thermal seeds FIRST_SEED, FIRST_SEED + 1, ... (the uniform series uses 5 + state)."""


def cache_path(crystal: str, configurations: int, seeds: int, thicknesses: tuple[float, ...]) -> Path:
    """Where :func:`clean_patterns` keeps the patterns of these settings."""
    return WORK / (f"{crystal}_fp{configurations}_s{seeds}_pm_" + "_".join(f"{t:g}" for t in thicknesses) + ".npy")


def clean_patterns(config, crystal: str, configurations: int, seeds: int, thicknesses: tuple[float, ...]) -> np.ndarray:
    """Clean patterns (3, seeds, thickness, H, W): unstrained, e_xx = +STRAIN, e_xx = -STRAIN; cached."""
    orientation = {scan.name: scan.orientation_deg for scan in config.scans}[CASES[crystal]]
    optics = check_simulation(config, [crystal])

    def build() -> np.ndarray:
        patterns = [
            uniform_state_patterns(crystal, (e, 0.0, 0.0, 0.0), orientation, thicknesses, optics, configurations, seed)
            for e in (0.0, STRAIN, -STRAIN)
            for seed in range(FIRST_SEED, FIRST_SEED + seeds)
        ]
        return np.stack(patterns).reshape(3, seeds, *patterns[0].shape)

    return cached_array(cache_path(crystal, configurations, seeds, thicknesses), build)


def floor_row(detector, clean: np.ndarray, dose: float, k_sampling: float) -> dict:
    """Spread of the unstrained seeds, slope and offset of e_xx from the strained ones.

    ``clean`` is (3, seeds, H, W) as :func:`clean_patterns` gives it. Each pattern gets one Poisson draw
    (seed 0).
    """
    seeds = clean.shape[1]
    rng = np.random.default_rng(0)
    flat = clean.reshape(-1, *clean.shape[2:])
    noisy = np.stack([apply_noise(p, PatternNoise(dose=dose), k_sampling, rng) for p in flat]).astype(np.float32)
    lattice, valid = fitted_lattices(detector, noisy)
    measured = strain_from_lattice(lattice, np.median(lattice[:seeds][valid[:seeds]], axis=0))
    row = {"valid_fraction": float(valid.mean())}
    for name in COMPONENTS:
        row[f"sd_{name}"] = float(np.nanstd(measured[name][:seeds], ddof=1))
    plus, minus = (measured["e_xx"][i * seeds : (i + 1) * seeds] for i in (1, 2))
    se = [np.nanstd(e, ddof=1) / np.sqrt(np.isfinite(e).sum()) for e in (plus, minus)]
    row["slope_e_xx"] = float((np.nanmean(plus) - np.nanmean(minus)) / (2 * STRAIN))
    row["slope_e_xx_se"] = float(np.hypot(*se) / (2 * STRAIN))
    row["offset_e_xx"] = float((np.nanmean(plus) + np.nanmean(minus)) / 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crystal", choices=list(CASES), default="SrTiO3_001")
    parser.add_argument("--frozen-phonons", type=int, nargs="*", default=[4, 16], help="configurations per pattern")
    parser.add_argument("--seeds", type=int, default=8, help="thermal seeds per state (default 8)")
    parser.add_argument("--thicknesses", type=float, nargs="*", default=[37.0, 50.0], help="[nm]")
    parser.add_argument("--doses", type=float, nargs="*", default=[1e5, 1e8], help="electrons per pattern [e-]")
    parser.add_argument("--methods", nargs="*", default=["bragg", "unet"])
    parser.add_argument("--model", help="network model, a path or a shipped model's name (default: the shipped one)")
    parser.add_argument(
        "--tilt-prior", type=float, help="the template read-out's tilt prior, for unet and bragg (label +tiltVALUE)"
    )
    parser.add_argument("--disk-correction", help="a disk-centre correction for unet (label +NAME)")
    args = parser.parse_args()
    if args.seeds < 3:
        parser.error(f"--seeds must be at least 3 (a spread needs them), found {args.seeds}")
    if any(n < 1 for n in args.frozen_phonons):
        parser.error(f"--frozen-phonons must be at least 1 each, found {args.frozen_phonons}")
    config = load_config(SUITE)
    model = resolve_model(args.model)
    thicknesses = tuple(args.thicknesses)
    options, labels = readout_variant(tilt_prior=args.tilt_prior, disk_correction=args.disk_correction)
    options["unet"]["model"] = model
    rows, seconds = {}, {}
    for configurations in args.frozen_phonons:
        simulated = not cache_path(args.crystal, configurations, args.seeds, thicknesses).exists()
        start = time.perf_counter()
        clean = clean_patterns(config, args.crystal, configurations, args.seeds, thicknesses)
        if simulated:  # the simulation's time, recorded only when it ran [s]
            seconds[str(configurations)] = time.perf_counter() - start
        for index, thickness in enumerate(thicknesses):
            for dose in args.doses:
                scan = calibration_scan(config, args.crystal, clean[0, 0, index], dose)
                for method in args.methods:
                    detector = make_detector(method, scan, **options.get(method, {}))
                    row = floor_row(detector, clean[:, :, index], dose, config.detector.k_sampling)
                    label = labels.get(method, method)
                    rows[f"fp{configurations}/{thickness:g}nm/{dose:.0e}/{label}"] = row
                    sds = "/".join(f"{1e4 * row[f'sd_{c}']:.1f}" for c in COMPONENTS)
                    print(
                        f"fp{configurations:<3d} {thickness:4.0f} nm {dose:.0e} {label:14s} unstrained sd {sds}e-4  "
                        f"slope e_xx {row['slope_e_xx']:.3f} ±{row['slope_e_xx_se']:.3f} "
                        f"offset {1e4 * row['offset_e_xx']:+.1f}e-4",
                        flush=True,
                    )
    name = "phonon_floor" + ("" if args.crystal == "SrTiO3_001" else f"_{args.crystal}")
    name += "" if args.seeds == 8 else f"_s{args.seeds}"
    previous = RESULTS / f"{name}.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        rows = old["rows"] | rows
        seconds = old.get("simulation_seconds", {}) | seconds
    write_result(
        name,
        {
            "crystal": args.crystal,
            "suite_scan": CASES[args.crystal],
            "seeds": args.seeds,
            "strain_e_xx": STRAIN,
            "model": str(model),
            "simulation_seconds": seconds,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()

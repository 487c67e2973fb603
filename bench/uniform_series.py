"""Dynamical bias by thickness: uniform strains at the suite's optics, per crystal and thickness.

For each crystal of the accuracy suite (SrTiO3 [001] turned 61°, Si [110] 23.5°, Au [001] 12°, its
orientations), real multislice patterns of a uniformly strained crystal (one probe position, the
suite's 200 kV and 1.5 mrad; a static lattice, or with ``--frozen-phonons N`` thermal diffuse
scattering from N configurations drawn anew for each state) are simulated at 10, 25, 37, 50 and
75 nm for the states: no strain, e_xx, e_yy and e_xy each at ±1 and ±2 % (``--states mixed``: no
strain, rotations alone, and components together with a rotation, ``MIXED``). Every pattern gets 4
Poisson draws at ``--dose``. Each method's strain is measured against the median lattice of the
unstrained patterns, as in a strain run. Per crystal and thickness the result gives the slope of
measured against applied strain for each component and the RMSE over all strained patterns. A
scan's field mixes these errors; here each thickness shows its own, so a method's bias from
dynamical scattering is seen where it arises. The clean patterns are cached in
``bench/work/uniform_series/``. With frozen phonons each state is one thermal draw: with 4
configurations a pattern's lattice moves by 3-10e-4 from one draw to the next (``bench/phonon_floor.py``),
so compare such runs of one method paired, on the same cache, and read their slopes as ±3 %.

Usage: ``python bench/uniform_series.py [--methods unet bragg] [--model NAME] [--dose 1e6]
[--frozen-phonons 4] [--crystals SrTiO3_001] [--refine template] [--tilt-prior 0] [--disk-correction FILE]
[--states mixed] [--tag NAME]``; writes ``bench/results/uniform_series.json``
(``uniform_series_d1e+05.json`` for another dose, ``uniform_series_fp4.json`` with frozen phonons,
``uniform_series_mixed.json`` with the mixed states; a
subset of crystals adds their names, ``--tag`` its text). Each method is calibrated as for the suite's scan of the
crystal (``CASES``): its optics, and the vacuum probe at the dose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cached_array, fitted_lattices, uniform_state_patterns, write_result  # noqa: E402

from stemstrain.config import REFINEMENTS, load_config  # noqa: E402
from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.io import make_4d_dataset  # noqa: E402
from stemstrain.model import load_model, resolve_model  # noqa: E402
from stemstrain.simulate.dataset import check_simulation  # noqa: E402
from stemstrain.simulate.multislice import (  # noqa: E402
    vacuum_probe,
)
from stemstrain.simulate.noise import PatternNoise, apply_noise  # noqa: E402
from stemstrain.strain import strain_from_lattice  # noqa: E402

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite.yaml"
WORK = HERE / "work"
CASES = {"SrTiO3_001": "sto001_t50_fp4_d1e5", "Si_110": "si110_t37_d1e6", "Au_001": "au001_t30_d1e5"}
"""Crystal -> the suite scan whose orientation and calibration it takes."""
THICKNESSES_NM = (10.0, 25.0, 37.0, 50.0, 75.0)
AMPLITUDES = (-0.02, -0.01, 0.01, 0.02)
COMPONENTS = ("e_xx", "e_yy", "e_xy")
STATES = np.array(
    [(0.0, 0.0, 0.0, 0.0)] + [tuple(a if i == c else 0.0 for i in range(4)) for c in range(3) for a in AMPLITUDES]
)
"""Strain states (e_xx, e_yy, e_xy, θ): unstrained, then each component at each amplitude."""
MIXED = np.array(
    [
        (0.0, 0.0, 0.0, 0.0),
        *[(0.0, 0.0, 0.0, angle) for angle in (0.01, -0.01, 0.02, -0.02)],
        (0.015, -0.01, 0.005, 0.01),
        (-0.015, 0.01, -0.005, -0.01),
        (0.02, -0.015, 0.0, 0.012),
        (0.01, 0.01, 0.01, 0.005),
    ]
)
"""``--states mixed``: unstrained, rotations alone [rad], then components together with a rotation, as in
a scan's field (the suite's mixes a ramp, a bump, a shear and a rotation); a read-out that is right for
each component alone can be wrong for them together."""
STATE_SETS = {"single": STATES, "mixed": MIXED}
DRAWS = 4
"""Poisson draws per clean pattern."""
TRAINING_KEYS = ("data_path", "data_hash", "steps", "train_patterns", "init_model")
"""What the result records of how its model was trained."""


def clean_patterns(
    config, crystal: str, orientation_deg: float, frozen_phonons: int = 0, states: str = "single"
) -> np.ndarray:
    """Clean patterns (state, thickness, H, W) of ``STATE_SETS[states]``, cached per crystal, orientation,
    phonons and state set.

    With frozen phonons each state draws its own thermal displacements (seed 5 + state), as the
    positions of a scan do.
    """
    suffix = (f"_fp{frozen_phonons}" if frozen_phonons else "") + ("" if states == "single" else f"_{states}")
    optics = check_simulation(config, [crystal])

    def build() -> np.ndarray:
        seeds = [5 + index if frozen_phonons else 5 for index in range(len(STATE_SETS[states]))]
        return np.stack(
            [
                uniform_state_patterns(crystal, state, orientation_deg, THICKNESSES_NM, optics, frozen_phonons, seed)
                for state, seed in zip(STATE_SETS[states], seeds, strict=True)
            ]
        )

    return cached_array(WORK / "uniform_series" / f"{crystal}_{orientation_deg:g}{suffix}.npy", build)


def calibration_scan(config, crystal: str, pattern: np.ndarray, dose: float):
    """A one-position scan that calibrates a detector as the suite's scans do.

    It carries the suite's optics, the reference k-sampling and the vacuum probe at ``dose``, which is
    all a detector reads of a scan (``make_detector``); the suite's simulated scans are not needed.
    """
    optics = check_simulation(config, [crystal])
    return make_4d_dataset(
        pattern[None, None] * dose,
        1.0,
        config.detector.k_sampling,
        optics.energy_eV,
        optics.semiangle_mrad,
        probe=vacuum_probe(optics) * dose,
    )


def noisy_draws(
    clean: np.ndarray, dose: float, k_sampling: float, states: np.ndarray = STATES
) -> tuple[np.ndarray, np.ndarray]:
    """``DRAWS`` Poisson draws of each clean pattern of one thickness, and the strain state of each.

    Parameters
    ----------
    clean : ndarray (len(states), H, W)
        Clean patterns of the states, intensity as a fraction of the incident beam.
    dose : float
        Electrons per pattern [e-].
    k_sampling : float
        Detector sampling [1/angstrom per pixel].
    states : ndarray (s, 4)
        The states (e_xx, e_yy, e_xy, θ) of the clean patterns, the unstrained first.

    Returns
    -------
    patterns : ndarray (len(states) * DRAWS, H, W)
        Noisy patterns [counts], state by state; the same draws on every call (seed 0).
    states : ndarray (len(states) * DRAWS, 4)
        Applied (e_xx, e_yy, e_xy, θ) of each [1].
    """
    rng = np.random.default_rng(0)
    patterns = np.stack(
        [apply_noise(p, PatternNoise(dose=dose), k_sampling, rng) for p in clean for _ in range(DRAWS)]
    ).astype(np.float32)
    return patterns, np.repeat(states, DRAWS, axis=0)


def thickness_row(detector, clean: np.ndarray, dose: float, k_sampling: float, states: np.ndarray = STATES) -> dict:
    """Slopes and RMSE of one method's strain on the noisy draws of one thickness's patterns."""
    noisy, truth = noisy_draws(clean, dose, k_sampling, states)
    lattice, valid = fitted_lattices(detector, noisy)
    measured = strain_from_lattice(lattice, np.median(lattice[:DRAWS][valid[:DRAWS]], axis=0))
    strained = np.arange(len(truth)) >= DRAWS
    error = np.stack([measured[c] - truth[:, i] for i, c in enumerate(COMPONENTS)], axis=-1)[strained]
    row = {"valid_fraction": float(valid.mean()), "rmse": float(np.sqrt(np.nanmean(error**2)))}
    for i, name in enumerate(COMPONENTS):
        chosen = strained & (truth[:, i] != 0) & valid
        row[f"slope_{name}"] = float(np.polyfit(truth[chosen, i], measured[name][chosen], 1)[0])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=["unet", "bragg"])
    parser.add_argument("--model", help="network model, a path or a shipped model's name (default: the shipped one)")
    parser.add_argument("--dose", type=float, default=1e6, help="electrons per pattern [e-]")
    parser.add_argument(
        "--frozen-phonons", type=int, default=0, help="thermal configurations per pattern (default 0: static lattice)"
    )
    parser.add_argument(
        "--crystals", nargs="*", choices=list(CASES), default=list(CASES), help="crystals to run (default: all three)"
    )
    parser.add_argument("--tag", help="appended to the result's name, e.g. the name of a trial --model")
    parser.add_argument(
        "--refine", choices=REFINEMENTS, help="the network's subpixel read-out (default: the detector's own default)"
    )
    parser.add_argument(
        "--tilt-prior",
        type=float,
        help="the template read-out's tilt prior (0: the plain correlation; default: the detector's own)",
    )
    parser.add_argument("--disk-correction", help="a disk-centre correction file (bench/disk_corrector.py) for unet")
    parser.add_argument(
        "--states",
        choices=list(STATE_SETS),
        default="single",
        help="single: each component alone at ±1, ±2 %% (default); mixed: rotations, and components together",
    )
    args = parser.parse_args()
    states = STATE_SETS[args.states]
    config = load_config(SUITE)
    orientation = {scan.name: scan.orientation_deg for scan in config.scans}
    model = resolve_model(args.model)
    _, metadata = load_model(model)
    rows, readout, tilt_prior = {}, None, None
    for crystal in args.crystals:
        scan_name = CASES[crystal]
        clean = clean_patterns(config, crystal, orientation[scan_name], args.frozen_phonons, args.states)
        scan = calibration_scan(config, crystal, clean[0, 0], args.dose)
        for method in args.methods:
            options = {}
            if method == "unet":
                options = {"model": model} | ({"refine": args.refine} if args.refine else {})
                options |= {} if args.tilt_prior is None else {"tilt_prior": args.tilt_prior}
                options |= {"disk_correction": args.disk_correction} if args.disk_correction else {}
            detector = make_detector(method, scan, **options)
            readout = getattr(detector, "refine", readout)
            tilt_prior = getattr(detector, "tilt_prior", tilt_prior)
            for index, thickness in enumerate(THICKNESSES_NM):
                row = thickness_row(detector, clean[:, index], args.dose, config.detector.k_sampling, states)
                rows[f"{crystal}/{thickness:g}nm/{method}"] = row
                slopes = "/".join(f"{row[f'slope_{c}']:.2f}" for c in COMPONENTS)
                print(f"{crystal:11s} {thickness:4.0f} nm {method:6s} rmse {row['rmse'] * 1e4:5.1f}e-4 slopes {slopes}")
    payload = {
        "dose": args.dose,
        "frozen_phonons": args.frozen_phonons,
        "model": str(model),
        "model_training": {key: metadata.get(key) for key in TRAINING_KEYS},
        "readout": readout,
        "tilt_prior": tilt_prior,
        "disk_correction": args.disk_correction,
        "crystals": list(args.crystals),
        "thicknesses_nm": THICKNESSES_NM,
        "states": args.states,
        "strain_states": states.tolist(),
        "rows": rows,
    }
    name = "uniform_series" + (f"_fp{args.frozen_phonons}" if args.frozen_phonons else "")
    name += "" if args.states == "single" else f"_{args.states}"
    if list(args.crystals) != list(CASES):
        name += "_" + "_".join(args.crystals)
    if args.tag:
        name += f"_{args.tag}"
    path = write_result(name if args.dose == 1e6 else f"{name}_d{args.dose:.0e}", payload)
    print(json.dumps({"wrote": str(path)}))


if __name__ == "__main__":
    main()

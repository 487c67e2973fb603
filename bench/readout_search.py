"""The template read-out's final search step: how near the score's maximum it lands, and its speed.

:class:`stemstrain.detect.bragg.TemplateRefiner` finds each disk's shift as the maximum of a score
(the tilted template's fit) by a coarse grid, a fine grid around the coarse best and a quadratic
through the fine grid's best. On the uniform series' clean patterns (``bench/uniform_series.py``
must have cached them: static lattice, its three crystals and five thicknesses), with Poisson noise
at each dose, the default network's spots start the read-out as in ``strain``; each search variant
(fine grid 1/32 or 1/16 px; axis parabolas or the quadratic with its xy term) is compared with a
search on a 1/128 px grid, which stands for the score's maximum. Then the default read-out (1/32 px,
parabolas) and the 1/16 px grid with the xy quadratic are timed on the same inputs, alternated
round by round.

    python bench/readout_search.py [--rounds 5]

Results: ``bench/results/readout_search.json`` (deviations [px]: RMS, median and largest, per crystal
and dose, over every disk of every thickness; patterns per second of the refiner alone, per crystal).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from uniform_series import CASES, SUITE, WORK, calibration_scan, noisy_draws  # noqa: E402

from stemstrain.config import load_config  # noqa: E402
from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.detect.bragg import TemplateRefiner, disk_radius, probe_template  # noqa: E402
from stemstrain.model import resolve_model  # noqa: E402

VARIANTS = {"1/32 px, parabolas (default)": (32, False), "1/32 px, xy quadratic": (32, True)}
VARIANTS |= {"1/16 px, parabolas": (16, False), "1/16 px, xy quadratic": (16, True)}
REFERENCE = (128, True)
"""Fine grid steps per px and ``cross`` of each variant, and of the search standing for the maximum."""


def read_out_inputs(detector, clean: np.ndarray, dose: float, k_sampling: float) -> list:
    """(patterns, starting positions) of each batch, as ``strain`` hands them to the detector's template
    refiner, for the noisy draws of every thickness."""
    captured, refiner = [], detector._refiner
    detector._refiner = lambda patterns, starts: captured.append((patterns, starts)) or refiner(patterns, starts)
    detector(np.concatenate([noisy_draws(clean[:, t], dose, k_sampling)[0] for t in range(clean.shape[1])]))
    detector._refiner = refiner
    return captured


def positions(refiner: TemplateRefiner, inputs: list) -> np.ndarray:
    return np.concatenate([refiner(patterns, starts)[0].reshape(-1, 2) for patterns, starts in inputs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternated timing rounds")
    args = parser.parse_args()
    config = load_config(SUITE)
    orientation = {scan.name: scan.orientation_deg for scan in config.scans}
    model = resolve_model(None)
    rows, timing = {}, {}
    for crystal, scan_name in CASES.items():
        cache = WORK / "uniform_series" / f"{crystal}_{orientation[scan_name]:g}.npy"
        if not cache.exists():
            raise SystemExit(f"{cache} is missing: run python bench/uniform_series.py first (it caches the patterns)")
        clean = np.load(cache)
        for dose in (1e6, 1e4):
            scan = calibration_scan(config, crystal, clean[0, 0], dose)
            detector = make_detector("unet", scan, model=model)
            inputs = read_out_inputs(detector, clean, dose, config.detector.k_sampling)
            image, _ = probe_template(scan, "auto")
            radius = disk_radius(scan.attrs["energy_eV"], scan.attrs["semiangle_mrad"]) / detector._scan_k_sampling

            def refiner(fine, cross, image=image, radius=radius, prior=detector.tilt_prior):
                return TemplateRefiner(image, radius, fine=fine, tilt_prior=prior, cross=cross)

            truth = positions(refiner(*REFERENCE), inputs)
            found = np.isfinite(truth).all(axis=-1)
            row = {"disks": int(found.sum())}
            for name, variant in VARIANTS.items():
                deviation = np.linalg.norm(positions(refiner(*variant), inputs)[found] - truth[found], axis=-1)
                row[name] = {
                    "rms_px": float(np.sqrt(np.mean(deviation**2))),
                    "median_px": float(np.median(deviation)),
                    "max_px": float(deviation.max()),
                }
            rows[f"{crystal}/{dose:.0e}"] = row
            summary = {
                k: v if k == "disks" else f"{v['rms_px'] * 1e3:.2f}/{v['median_px'] * 1e3:.2f} mpx"
                for k, v in row.items()
            }
            print(crystal, f"{dose:.0e}", summary, flush=True)
            if dose == 1e6:
                pair = {"default": refiner(32, False), "1/16 px, xy quadratic": refiner(16, True)}
                n_patterns = sum(len(patterns) for patterns, _ in inputs)
                rates = timing[crystal] = {name: [] for name in pair}
                for _ in range(args.rounds):
                    for name, candidate in pair.items():
                        start = time.perf_counter()
                        positions(candidate, inputs)
                        rates[name].append(round(n_patterns / (time.perf_counter() - start), 1))
    payload = {
        "reference": f"fine grid 1/{REFERENCE[0]} px, xy quadratic",
        "rows": rows,
        "refiner_patterns_per_s": {
            crystal: {k: {"median": statistics.median(v), "rounds": v} for k, v in rates.items()}
            for crystal, rates in timing.items()
        },
    }
    print(payload["refiner_patterns_per_s"])
    write_result("readout_search", payload)


if __name__ == "__main__":
    main()

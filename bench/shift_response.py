"""How exactly a method's spots follow a shift of the whole pattern (a descan shift), in pixels.

A method that measures strain to 1e-4 must place a spot 40 px from the centre to 0.004 px. Here the
mean of the reference region of one suite scan (64 patterns, zero strain) is moved by whole pixels
(``numpy.roll``: exact) and by tenths of a pixel (Fourier shift), given Poisson noise at ``--dose``
(``DRAWS`` draws per shift), and each method's spots are matched to those of the unshifted pattern.
The error of a spot is its measured displacement minus the applied one. Reported per method and
shift: the RMS and the largest mean error over spots (mean over the draws: the deterministic part),
and the RMS scatter over draws (the noise). A convolutional network that down-samples is
equivariant only to shifts by its pooling period; this bench shows how far from that it is.

Usage: ``python bench/shift_response.py [--methods unet bragg] [--model NAME] [--scan si110_t37_d1e6]``;
writes ``bench/results/shift_response.json``. Needs the suite's scans (``python bench/accuracy.py --simulate-only``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.ndimage import fourier_shift

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.detect import make_detector  # noqa: E402
from stemstrain.io import check_reference_roi, k_calibration, open_4d  # noqa: E402
from stemstrain.model import resolve_model  # noqa: E402
from stemstrain.simulate.noise import PatternNoise, apply_noise  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "suite"
WHOLE = (1, 2, 3, 4, 5, 6, 7, 8)
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DRAWS = 8


def shifted(pattern: np.ndarray, shift: float) -> np.ndarray:
    """The pattern moved along k_x by ``shift`` px: a roll for whole pixels, else a Fourier shift."""
    if float(shift).is_integer():
        return np.roll(pattern, int(shift), axis=-1)
    moved = np.real(np.fft.ifft2(fourier_shift(np.fft.fft2(pattern), (0.0, shift))))
    return moved.clip(0.0)


def matched(found: np.ndarray, expected: np.ndarray, radius: float = 0.5) -> np.ndarray:
    """The found spot nearest each expected one, NaN where none lies within ``radius`` [px]."""
    distance = np.linalg.norm(found[:, None] - expected[None], axis=-1)
    nearest = np.nanargmin(np.where(np.isfinite(distance), distance, np.inf), axis=0)
    spots = found[nearest]
    return np.where(np.linalg.norm(spots - expected, axis=-1, keepdims=True) < radius, spots, np.nan)


def reference_patterns(name: str) -> tuple[np.ndarray, xr.Dataset]:
    """Patterns (n, H, W) [counts] of a suite scan's reference region (attribute ``reference_roi``), and the scan."""
    path = WORK / f"{name}.zarr"
    if not path.exists():
        sys.exit(f"{path}: missing; build the suite first (python bench/accuracy.py --simulate-only)")
    scan = open_4d(path)
    y0, y1, x0, x1 = check_reference_roi(scan.attrs.get("reference_roi"), (scan.sizes["scan_y"], scan.sizes["scan_x"]))
    data = scan["data"].isel(scan_y=slice(y0, y1), scan_x=slice(x0, x1)).values.astype(np.float32)
    return data.reshape(-1, *data.shape[2:]), scan


def spot_errors(detector, base: np.ndarray, shifts, dose: float, k_sampling: float) -> dict:
    """Per shift: RMS and largest deterministic spot error, and the scatter over draws [px]."""
    rng = np.random.default_rng(0)
    clean = [base] + [shifted(base, s) for s in shifts]
    noisy = np.stack(
        [apply_noise(p / p.sum(), PatternNoise(dose=dose), k_sampling, rng) for p in clean for _ in range(DRAWS)]
    )
    positions, _ = detector(noisy.astype(np.float32))
    positions = positions.reshape(len(clean), DRAWS, -1, 2) / k_sampling  # [px]
    # Each draw lists its spots in its own order: match them to one draw's, average the unshifted draws.
    with warnings.catch_warnings():  # a spot missing from every draw stays NaN and is left out below
        warnings.simplefilter("ignore", RuntimeWarning)
        reference = np.nanmean([matched(draw, positions[0, 0]) for draw in positions[0]], axis=0)
    rows = {}
    for index, shift in enumerate(shifts, start=1):
        expected = reference + [shift, 0.0]
        errors = np.stack([matched(draw, expected) - expected for draw in positions[index]])  # (draws, spots, 2)
        found = np.all(np.isfinite(errors), axis=(0, 2))  # spots matched in every draw
        mean = errors.mean(axis=0)
        rows[f"{shift:g}"] = {
            "rms_px": float(np.sqrt(np.mean(mean[found] ** 2) * 2)),
            "max_px": float(np.abs(mean[found]).max()),
            "scatter_px": float(np.sqrt(np.mean(np.var(errors[:, found], axis=0)) * 2)),
            "spots": int(found.sum()),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=["unet", "bragg"])
    parser.add_argument("--model", help="network model, a path or a shipped model's name (default: the shipped one)")
    parser.add_argument("--scan", default="si110_t37_d1e6", help="suite scan whose reference region is moved")
    parser.add_argument("--dose", type=float, default=1e7, help="electrons per pattern [e-]")
    args = parser.parse_args()
    patterns, scan = reference_patterns(args.scan)
    k_sampling, _ = k_calibration(scan)
    base = patterns.astype(np.float64).mean(axis=0)
    model = resolve_model(args.model)
    rows = {}
    for method in args.methods:
        detector = make_detector(method, scan, model=model if method == "unet" else None)
        rows[method] = spot_errors(detector, base, WHOLE + FRACTIONS, args.dose, k_sampling)
        for label, shifts in (("whole", WHOLE), ("fraction", FRACTIONS)):
            rms = np.sqrt(np.mean([rows[method][f"{s:g}"]["rms_px"] ** 2 for s in shifts]))
            worst = max(rows[method][f"{s:g}"]["max_px"] for s in shifts)
            print(f"{method:6s} {label:8s} shifts: spot error rms {rms:.4f} px, largest {worst:.3f} px")
    payload = {"scan": args.scan, "dose": args.dose, "model": str(model), "draws": DRAWS, "rows": rows}
    print(json.dumps({"wrote": str(write_result("shift_response", payload))}))


if __name__ == "__main__":
    main()

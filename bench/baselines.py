"""Throughput of the spot detectors (Bragg, cepstrum, cepstrum-multi, and unet with --model) on one chunk.

The chunk is a real abTEM simulation (Si [110], 20 nm, a 4 × 4 scan from the simulate-scan
machinery) tiled to ``--patterns`` patterns with fresh Poisson noise at ``--dose``. Each method
runs its detector and the shared lattice fit of stemstrain.lattice on the same chunk; the best of
``--repeats`` runs is reported. Writes ``bench/results/baselines.json``.

    python bench/baselines.py [--patterns 256] [--model results/train/demo/model.pt] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


def simulated_chunk(n_patterns: int, dose: float, work: Path):
    """A 4 × 4 simulated scan, and ``n_patterns`` noisy copies of its patterns."""
    from stemstrain.config import ScanConfig, parse_config
    from stemstrain.io import open_4d
    from stemstrain.simulate import simulate_scan

    config = parse_config({"simulate": {"cluster": {"kind": "none"}}})
    scan = ScanConfig(name="bench", thickness_nm=20.0, dose=1e9, field="gradient", scan_shape=(4, 4))
    scan_path, _ = simulate_scan(config, scan, work / "scan.zarr", work / "truth.zarr")
    dataset = open_4d(scan_path).load()
    clean = np.asarray(dataset["data"].values, dtype=np.float64).reshape(-1, *dataset["data"].shape[2:])
    clean = clean / clean.sum(axis=(-2, -1), keepdims=True)
    rng = np.random.default_rng(0)
    chunk = rng.poisson(dose * clean[np.arange(n_patterns) % len(clean)]).astype(np.float32)
    return dataset, chunk


def time_method(method: str, dataset, chunk: np.ndarray, repeats: int, model=None, device: str = "auto") -> dict:
    from stemstrain.detect import make_detector
    from stemstrain.lattice import fit_patterns, initial_lattice

    options = {"device": device}
    if method == "unet":
        options.update(precision="bf16", batch_size=128)
    detector = make_detector(method, dataset, model=model, **options)
    positions, weights = detector(chunk[:1])
    lattice0, origin0 = initial_lattice(positions[0], weights[0], detector.space)
    detector(chunk[:8])  # warm-up (torch kernels, FFT plans)
    best_detect, best_total, valid = np.inf, np.inf, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        positions, weights = detector(chunk)
        detected = time.perf_counter()
        fit = fit_patterns(positions, weights, lattice0, origin0, fit_origin=detector.space == "reciprocal")
        done = time.perf_counter()
        best_detect, best_total = min(best_detect, detected - start), min(best_total, done - start)
        valid = float(fit["valid"].mean())
    return {
        "space": detector.space,
        "detector_patterns_per_s": len(chunk) / best_detect,
        "detector_and_fit_patterns_per_s": len(chunk) / best_total,
        "valid_fraction": valid,
        "peaks_per_pattern": float(np.isfinite(positions[..., 0]).sum(axis=-1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=256, help="Patterns in the chunk.")
    parser.add_argument("--dose", type=float, default=1e6, help="Electrons per pattern of the noisy copies.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per method (the best is kept).")
    parser.add_argument("--model", type=Path, default=None, help="Exported network: adds the unet method.")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto.")
    args = parser.parse_args()

    import torch

    methods = ["bragg", "cepstrum", "cepstrum-multi"] + (["unet"] if args.model is not None else [])
    with tempfile.TemporaryDirectory() as work:
        dataset, chunk = simulated_chunk(args.patterns, args.dose, Path(work))
        results = {}
        for method in methods:
            results[method] = time_method(method, dataset, chunk, args.repeats, args.model, args.device)
            print(f"{method:15s} {results[method]['detector_and_fit_patterns_per_s']:9.1f} patterns/s", flush=True)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    path = write_result(
        "baselines",
        {
            "chunk": {
                "patterns": args.patterns,
                "shape": list(chunk.shape[1:]),
                "dose": args.dose,
                "source": "abTEM Si_110 20 nm 4x4 gradient scan",
            },
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "methods": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Throughput of the strain step per stage (read, network, peaks, fit, write) and end to end.

Builds a uint16 scan of target-image patterns (SIM's kinematic spots, Poisson noise) and runs
``stemstrain.infer.strain_map`` with the unet method in fp32 and bf16 (and torch.compile with
``--compile``). The network is the default U-Net of config.yaml (untrained weights run at the
same speed) unless ``--model`` names a trained one; with an untrained network the fit stages see
no spots, so ``--model`` is needed for meaningful peak and fit figures. Results:
``bench/results/infer.json``.

    python bench/infer.py --patterns 1024 --model results/train/demo/model.pt
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

from stemstrain.config import ModelConfig  # noqa: E402
from stemstrain.infer import strain_map  # noqa: E402
from stemstrain.io import make_4d_dataset  # noqa: E402
from stemstrain.model import UNet, export_model  # noqa: E402
from stemstrain.simulate.targets import kinematic_spots, pixels_from_k, spot_weights, target_image  # noqa: E402

PIXELS, K_SAMPLING, ENERGY = 128, 0.025, 200e3


def make_scan(path: Path, n_patterns: int, dose: float = 1e5, chunk: tuple[int, int] = (8, 32)) -> Path:
    """uint16 scan of Si [110] target patterns with Poisson noise, 32 positions wide."""
    g_xy, intensity, _ = kinematic_spots("Si_110", np.eye(2), 1.55, ENERGY)
    pattern = target_image(pixels_from_k(g_xy, PIXELS, K_SAMPLING), spot_weights(intensity, g_xy), PIXELS)
    pattern = pattern / pattern.sum() * dose
    n_x = 32
    n_y = max(1, n_patterns // n_x)
    rng = np.random.default_rng(0)
    data = rng.poisson(np.broadcast_to(pattern, (n_y, n_x, PIXELS, PIXELS))).astype(np.uint16)
    ds = make_4d_dataset(data, 0.5, K_SAMPLING, ENERGY, 1.5, reference_roi=[0, n_y, 0, 4])
    ds.chunk({"scan_y": chunk[0], "scan_x": chunk[1]}).to_zarr(path, mode="w")
    return path


def default_model(path: Path) -> Path:
    metadata = {"pixels": PIXELS, "k_sampling": K_SAMPLING, "energy_eV": ENERGY, "semiangle_mrad": 1.5}
    return export_model(UNet(ModelConfig()), path, {**metadata, "config": {}, "data_hash": "untrained"})


def rates(timings: dict) -> dict:
    n = timings["patterns"]
    return {stage: round(n / seconds, 1) for stage, seconds in timings.items() if stage != "patterns" and seconds > 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=1024)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (bf16)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as work:
        work = Path(work)
        scan = make_scan(work / "scan.zarr", args.patterns)
        model = args.model or default_model(work / "model.pt")
        results = {"patterns": args.patterns, "batch_size": args.batch, "model": str(args.model or "untrained default")}
        variants = [("fp32", False), ("bf16", False)] + ([("bf16", True)] if args.compile else [])
        for precision, compiled in variants:
            name = precision + ("+compile" if compiled else "")
            timings: dict = {}
            start = time.perf_counter()
            try:
                strain_map(
                    scan,
                    work / f"{name}.zarr",
                    model=model,
                    device="cpu",
                    precision=precision,
                    compile=compiled,
                    batch_size=args.batch,
                    progress=False,
                    timings=timings,
                )
                results[name] = {"patterns_per_s": rates(timings), "wall_s": round(time.perf_counter() - start, 2)}
            except Exception as err:  # an untrained network finds no lattice: report the stages it reached
                results[name] = {"error": f"{type(err).__name__}: {err}"}
            print(name, results[name], flush=True)
        print(write_result("infer", results))


if __name__ == "__main__":
    main()

"""Training throughput of `stemstrain train` with 1 and 2 processes (DDP, gloo on CPU).

Runs the real command on a real simulated training set and reads the samples/s that training
logs per epoch (time of the training steps only; validation and start-up excluded). The first
epoch warms up allocators and caches, so the last epoch is reported. Writes
``bench/results/train.json``.

    python bench/train.py [--data TRAIN.zarr] [--epochs 2] [--base-channels B] [--depth D] (default: the default U-Net)
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.config import ModelConfig  # noqa: E402

WORK = Path(__file__).resolve().parent / "work" / "train"


def simulated_set(out: Path) -> Path:
    """A small real abTEM training set (Si [110], 2 thicknesses, 96 patterns), made once."""
    from stemstrain.config import parse_config
    from stemstrain.simulate import simulate_training_set

    if out.exists():
        return out
    config = parse_config(
        {
            "simulate": {
                "crystals": ["Si_110"],
                "thicknesses_nm": [10.0, 20.0],
                "n_samples": 48,
                "chunk_size": 16,
                "cluster": {"kind": "none"},
            }
        }
    )
    return simulate_training_set(config, out)


def run(config: dict, data: Path, nproc: int) -> dict:
    """Train with ``nproc`` processes; return the last epoch's metrics and the wall time."""
    out = WORK / f"nproc{nproc}"
    config_path = WORK / f"config-nproc{nproc}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "stemstrain.cli", "train", str(config_path), str(data), str(out), "--nproc", str(nproc)],
        check=True,
        env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
    )
    wall = time.perf_counter() - started
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    return {
        "processes": nproc,
        "samples_per_s": float(last["samples_per_s"]),
        "samples_per_s_per_epoch": [round(float(r["samples_per_s"]), 2) for r in rows],
        "wall_s": round(wall, 1),
        "val_recall": float(last["val_recall"]),
        "val_median_error_px": float(last["val_median_error_px"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="Training-set store; default: simulate a small one.")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--base-channels", type=int, default=ModelConfig().base_channels)
    parser.add_argument("--depth", type=int, default=ModelConfig().depth)
    parser.add_argument("--batch-size", type=int, default=16, help="Patterns per step and per process.")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    data = args.data or simulated_set(WORK / "train_set.zarr")
    config = {
        "model": {"base_channels": args.base_channels, "depth": args.depth, "norm": "batch"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "precision": args.precision},
    }
    load_before = os.getloadavg()
    results = [run(config, data, nproc) for nproc in (1, 2)]
    one, two = results
    path = write_result(
        "train",
        {
            "what": "training samples/s of `stemstrain train` (DDP, gloo on CPU), last epoch, steps only",
            "config": config,
            "data": str(data),
            "runs": results,
            "speedup_2_vs_1": round(two["samples_per_s"] / one["samples_per_s"], 2),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
    )
    for r in results:
        print(f"{r['processes']} process(es): {r['samples_per_s']:.1f} samples/s, wall {r['wall_s']} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

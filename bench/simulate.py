"""Simulation throughput: strain states/s and patterns/s of the training set, positions/s of test scans.

Measures, on this machine, in one process (one core; a LocalCluster runs one such process per core):
the per-state cost of the training-set simulation for each crystal at the configured thickness
series, with 1 and 4 probe positions per state; the calibrated scan path (Si [110], 30 and 75 nm);
and, with ``--demo``, the wall time of the demo configuration's training set and first test scan on a
LocalCluster of all cores. The load average is recorded: other work on the machine slows every figure.
Results: ``bench/results/simulate.json``.

    python bench/simulate.py [--demo] [--config config.yaml]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.config import load_config  # noqa: E402
from stemstrain.simulate import simulate_scan, simulate_training_set  # noqa: E402
from stemstrain.simulate.dataset import optics_from_config, training_layout  # noqa: E402
from stemstrain.simulate.multislice import probe_positions_in_cell, simulate_patterns  # noqa: E402
from stemstrain.strain import deformation_from_strain  # noqa: E402


def time_states(crystal: str, thicknesses, optics, positions: int, repeats: int = 3) -> tuple[float, float]:
    """Wall and CPU seconds per strain state (one potential, ``positions`` probes, the whole thickness series).

    The CPU time of this process is what the state costs on an idle core; the wall time grows with the load.
    """
    rng = np.random.default_rng(0)
    times, cpu = [], []
    for i in range(repeats + 1):
        deformation = deformation_from_strain(*rng.uniform(-0.02, 0.02, 4))
        probes = probe_positions_in_cell(crystal, deformation, rng.uniform(0, 1, (positions, 2)), optics.box)
        start, start_cpu = time.perf_counter(), time.process_time()
        simulate_patterns(crystal, deformation, thicknesses, probes, optics)
        if i > 0:  # the first call compiles abTEM's numba kernels
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return float(np.median(times)), float(np.median(cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml", help="Configuration whose optics and thicknesses to use.")
    parser.add_argument("--demo", action="store_true", help="Also time the config's training set and first scan.")
    args = parser.parse_args()
    config = load_config(args.config)
    optics = optics_from_config(config)
    thicknesses = config.simulate.thicknesses_nm
    load_before = os.getloadavg()[0]
    per_crystal = {}
    for crystal in config.simulate.crystals:
        entry = {}
        for positions in (1, 4):
            seconds, cpu = time_states(crystal, thicknesses, optics, positions)
            entry[f"positions_{positions}"] = {
                "wall_s_per_state": round(seconds, 3),
                "cpu_s_per_state": round(cpu, 3),
                "states_per_cpu_s": round(1 / cpu, 3),
                "patterns_per_cpu_s": round(positions * len(thicknesses) / cpu, 2),
            }
        per_crystal[crystal] = entry
        print(crystal, entry, flush=True)
    cases = {"30_nm": [30.0], "75_nm": [75.0], "37_and_75_nm_together": [37.0, 75.0]}
    scan_path = {
        name: dict(zip(("wall_s", "cpu_s"), np.round(time_states("Si_110", t, optics, 1), 3).tolist(), strict=True))
        for name, t in cases.items()
    }
    print("scan seconds per position (Si_110):", scan_path, flush=True)
    result = {
        "what": "one process; seconds per strain state include every thickness of the series; "
        "cpu_s is the cost on an idle core, wall_s grows with the load average",
        "thicknesses_nm": thicknesses,
        "sampling_angstrom": optics.sampling,
        "gpts": optics.gpts,
        "training_states": per_crystal,
        "scan_seconds_per_position_si110": scan_path,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    if args.demo:
        with tempfile.TemporaryDirectory() as tmp:
            per_state, _, _ = training_layout(config)
            start = time.perf_counter()
            simulate_training_set(config, Path(tmp) / "train.zarr")
            seconds = time.perf_counter() - start
            n_patterns = config.simulate.n_samples * per_state
            result["demo_training_set"] = {
                "cluster": config.simulate.cluster.kind,
                "strain_states": config.simulate.n_samples,
                "patterns": n_patterns,
                "wall_s": round(seconds, 1),
                "patterns_per_s": round(n_patterns / seconds, 2),
            }
            print(result["demo_training_set"], flush=True)
            if config.scans:
                scan = config.scans[0]
                start = time.perf_counter()
                simulate_scan(config, scan, Path(tmp) / "scan.zarr", Path(tmp) / "truth.zarr")
                seconds = time.perf_counter() - start
                positions = scan.scan_shape[0] * scan.scan_shape[1]
                result["demo_scan"] = {
                    "name": scan.name,
                    "positions": positions,
                    "wall_s": round(seconds, 1),
                    "positions_per_s": round(positions / seconds, 2),
                }
                print(result["demo_scan"], flush=True)
        result["load_average_after"] = os.getloadavg()[0]
    print("wrote", write_result("simulate", result))


if __name__ == "__main__":
    main()

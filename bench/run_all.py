"""`make bench`: run every benchmark, then write bench/results/summary.md from their JSON results.

Each benchmark is its own script (run alone for details); this runs them one after the other so
that they do not compete for the cores, and gathers every throughput figure (keys ending in
``per_s``) and every speed ratio into one markdown table. ``BENCH_SCALE=1`` adds the scale
benchmark (stores of 0.5-8 GB; tens of minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def scripts() -> list[list[str]]:
    """The benchmarks in order: the accuracy suite (every method and tuned py4DSTEM), the response to a
    known stretch, uniform strains by thickness (static lattice and with frozen phonons), the floor of
    few frozen-phonon configurations, spot precision under a shift, spot noise at low dose, the
    Cramér–Rao bound of each suite scan, and the real MgO scan."""
    runs = [["simulate.py"], ["train.py"], ["infer.py"], ["baselines.py"], ["accuracy.py"], ["warp_response.py"]]
    runs.append(["uniform_series.py"])
    runs.append(["uniform_series.py", "--frozen-phonons", "4"])
    runs.append(["phonon_floor.py"])
    runs.append(["box_convergence.py"])
    runs.append(["shift_response.py"])
    runs.append(["spot_noise.py"])
    runs.append(["bound.py"])
    runs.append(["mgo.py"])
    if os.environ.get("BENCH_SCALE") == "1":
        runs.append(["scale.py"])
    return runs


def figures(node, path: str = ""):
    """Yield (path, value) for every throughput and ratio in a JSON result."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("machine") or key.startswith("earlier_run"):
                continue
            yield from figures(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from figures(value, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        if "per_s" in path or "ratio" in path or "speedup" in path:
            yield path, node


def _get(data: dict, *keys):
    """``data[k0][k1]...`` through dicts and lists, None where a key or index is missing."""
    for key in keys:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else (f"{value:.{digits}g}" if isinstance(value, float) else str(value))


def headline(results: dict) -> list[str]:
    """The figures a reader looks for first: end-to-end rates and training speed."""
    infer = results.get("infer", {})
    rows = [
        ("strain end to end, unet, fp32 [patterns/s]", _get(infer, "fp32", "patterns_per_s", "total")),
        (
            "network alone, default U-Net [patterns/s]",
            _get(infer, "network_alone_patterns_per_s", "fp32 channels_last + folded BN (default)"),
        ),
        (
            "network FLOP limit of this CPU [patterns/s]",
            _get(infer, "network_alone_patterns_per_s", "flop_limit_patterns_per_s"),
        ),
    ]
    rows.append(("training, 2 processes [samples/s]", _get(results, "train", "runs", 1, "samples_per_s")))
    lines = ["| headline | value |", "|---|---|"]
    lines += [f"| {label} | {_fmt(value)} |" for label, value in rows]
    return lines


def write_summary() -> Path:
    results = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    lines = ["# Benchmark summary", "", *headline(results), ""]
    accuracy = RESULTS / "accuracy.md"
    if accuracy.exists():
        lines += [
            "## Accuracy suite (bench/accuracy.py, bench/suite.yaml)",
            "",
            "Worst strain-component RMSE outside the reference region [1e-4], valid fraction when under",
            "99.5 %, slopes of predicted against true e_xx/e_yy; patterns/s end to end on the same scans.",
            "A cell with ± pools several draws of the scans' counting noise (`--draws`): the RMSE over",
            "the draws ± the standard error of their mean.",
            "",
            accuracy.read_text().strip(),
            "",
        ]
    lines += ["## Every figure", ""]
    lines += ["| benchmark | figure | value |", "|---|---|---|"]
    machine = None
    for name, data in results.items():
        machine = machine or data.get("machine")
        for path, value in figures(data):
            lines.append(f"| {name} | {path} | {value:.4g} |")
    if machine:
        lines += [
            "",
            f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, flags "
            f"{' '.join(machine.get('cpu_flags', []))}, GPU {machine.get('gpu')}.",
        ]
    out = RESULTS / "summary.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    failed = []
    for args in scripts():
        print(f"== bench/{' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]]).returncode != 0:
            failed.append(args[0])
    print(f"wrote {write_summary()}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

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
MODEL = Path("results/train/demo/model.pt")


def scripts() -> list[list[str]]:
    runs = [["simulate.py"], ["train.py"], ["infer.py"], ["baselines.py"], ["py4dstem_compare.py"]]
    if MODEL.exists():
        runs[-1] += ["--model", str(MODEL)]
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


def write_summary() -> Path:
    lines = ["# Benchmark summary", "", "| benchmark | figure | value |", "|---|---|---|"]
    machine = None
    for result in sorted(RESULTS.glob("*.json")):
        data = json.loads(result.read_text())
        machine = machine or data.get("machine")
        for path, value in figures(data):
            lines.append(f"| {result.stem} | {path} | {value:.4g} |")
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

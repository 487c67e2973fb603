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
    """The figures a reader looks for first: end-to-end rates, the peer ratio, errors."""
    infer, peer = results.get("infer", {}), results.get("py4dstem", {})
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
        ("py4DSTEM disk detection + strain [patterns/s]", _get(peer, "py4dstem", "patterns_per_s_end_to_end")),
        ("stemstrain unet / py4DSTEM, speed", _get(peer, "speed_ratio_unet_vs_py4dstem")),
        ("stemstrain bragg / py4DSTEM, speed", _get(peer, "speed_ratio_bragg_vs_py4dstem")),
    ]
    for label in ("py4dstem", "stemstrain_unet", "stemstrain_bragg"):
        scores = _get(peer, label, "scores")
        if isinstance(scores, dict):
            worst = max(scores[c]["rmse"] for c in ("e_xx", "e_yy", "e_xy"))
            rows.append((f"{label} strain RMSE, worst component [1]", worst))
    rows.append(("training, 2 processes [samples/s]", _get(results, "train", "runs", 1, "samples_per_s")))
    scan = _get(peer, "scan") or {}
    lines = ["| headline | value |", "|---|---|"]
    lines += [f"| {label} | {_fmt(value)} |" for label, value in rows]
    if scan:
        lines += [
            "",
            f"py4DSTEM comparison scan: {scan.get('crystal')} {scan.get('thickness_nm')} nm, "
            f"{scan.get('dose'):.0e} e-/pattern, {scan.get('patterns')} patterns.",
        ]
    return lines


def write_summary() -> Path:
    results = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    lines = ["# Benchmark summary", "", *headline(results), "", "## Every figure", ""]
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

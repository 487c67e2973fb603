"""Strain on data larger than memory: wall time and peak memory of ``stemstrain strain`` vs scan size.

Creates uint16 4D stores of 128² patterns of growing size (default 0.5, 2 and 8 GB), written
chunk by chunk so that creating them needs no memory either, runs ``stemstrain strain`` on each
in a subprocess and samples the resident memory of the whole process tree every 0.2 s. Memory
must stay flat as the size grows; time should grow linearly. Results:
``bench/results/scale.json`` and ``bench/results/scale.png``.

    python bench/scale.py --sizes-gb 0.5 2 8 --method peaks --unet-sizes-gb 0.0625 0.25

The network runs are the default U-Net of config.yaml (``--model`` for a trained one; by default
the pass-through network of ``bench/infer.py``: random weights at full cost, spots passed through
so that the fits succeed). Rows are written to the JSON as they finish.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_tree, write_result  # noqa: E402

PIXELS, K_SAMPLING, ENERGY = 128, 0.025, 200e3
PATTERN_BYTES = PIXELS * PIXELS * 2


def make_store(path: Path, size_gb: float, chunk: tuple[int, int] = (16, 64)) -> tuple[int, int]:
    """A uint16 scan of ``size_gb`` GB, 256 positions wide, written one chunk row at a time."""
    import dask.array as da

    from stemstrain.io import make_4d_dataset
    from stemstrain.simulate.targets import kinematic_spots, pixels_from_k, spot_weights, target_image

    g_xy, intensity, _ = kinematic_spots("Si_110", np.eye(2), 1.55, ENERGY)
    pattern = target_image(pixels_from_k(g_xy, PIXELS, K_SAMPLING), spot_weights(intensity, g_xy), PIXELS)
    pattern = pattern / pattern.sum() * 1e5
    n_x = 256
    n_y = max(chunk[0], int(round(size_gb * 1e9 / PATTERN_BYTES / n_x / chunk[0])) * chunk[0])
    # A few noisy realisations drawn once and picked per position: Poisson noise per pattern would
    # cost minutes per GB, and the strain step's cost does not depend on which noise it sees.
    templates = np.random.default_rng(0).poisson(np.broadcast_to(pattern, (64, PIXELS, PIXELS))).astype(np.uint16)

    def block(block_info=None):
        location = block_info[None]["chunk-location"]
        shape = block_info[None]["chunk-shape"]
        rng = np.random.default_rng(location[0] * 1000 + location[1])
        return templates[rng.integers(0, len(templates), size=shape[:2])]

    chunks = (chunk[0], chunk[1], PIXELS, PIXELS)
    data = da.map_blocks(block, dtype=np.uint16, chunks=da.core.normalize_chunks(chunks, (n_y, n_x, PIXELS, PIXELS)))
    ds = make_4d_dataset(data, 0.5, K_SAMPLING, ENERGY, 1.5, reference_roi=[0, n_y, 0, 8])
    ds.to_zarr(path, mode="w")
    return n_y, n_x


def run_strain(scan: Path, out: Path, method: str, model: Path | None, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "stemstrain.cli", "strain", str(scan), str(out), "--method", method]
    command += (["--model", str(model)] if model else []) + ["--no-progress", "--fresh", *extra]
    start = time.perf_counter()
    log = out.with_suffix(".log")
    with open(log, "w") as handle:  # a file, not a pipe: a full pipe would stall the child
        process = psutil.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True)
        peak = 0
        while process.poll() is None:
            peak = max(peak, peak_rss_tree(process))
            time.sleep(0.2)
    wall = time.perf_counter() - start
    output = log.read_text()
    if process.returncode != 0:
        raise RuntimeError(f"strain failed ({process.returncode}): {output[-2000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for method in sorted({row["method"] for row in rows}):
        sub = [row for row in rows if row["method"] == method]
        sizes = [row.get("data_gb", row["size_gb"]) for row in sub]
        left.plot(sizes, [row["peak_rss_mb"] for row in sub], "o-", label=method)
        right.plot(sizes, [row["wall_s"] for row in sub], "o-", label=method)
    left.set(xlabel="scan size [GB]", ylabel="peak RSS of process tree [MB]", ylim=(0, None), xscale="log")
    right.set(xlabel="scan size [GB]", ylabel="wall time [s]", xscale="log", yscale="log")
    sizes = sorted({row.get("data_gb", row["size_gb"]) for row in rows})
    for axis in (left, right):
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xticks(sizes, [f"{size:.2g}" for size in sizes])
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gb", type=float, nargs="*", default=[0.5, 2.0, 8.0], help="sizes run with --method")
    parser.add_argument("--method", default="peaks", help="method for --sizes-gb")
    parser.add_argument(
        "--unet-sizes-gb", type=float, nargs="*", default=[0.0625, 0.25], help="sizes also run with the network"
    )
    parser.add_argument("--model", type=Path, default=None, help="network for unet (default: pass-through)")
    parser.add_argument("--work", type=Path, default=None, help="directory for the stores (default: a temp dir)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further `stemstrain strain` options")
    args = parser.parse_args()

    from infer import default_model

    work = args.work or Path(tempfile.mkdtemp(prefix="scale-", dir=Path(__file__).parent))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model(work / "model.pt")
    plan = [(size, args.method) for size in args.sizes_gb] + [(size, "unet") for size in args.unet_sizes_gb]
    rows = []
    payload = {
        "sizes_gb": args.sizes_gb,
        "unet_sizes_gb": args.unet_sizes_gb,
        "model": str(args.model or "passthrough"),
    }
    try:
        for size, method in plan:
            scan = work / f"scan_{size:g}GB.zarr"
            start = time.perf_counter()
            n_y, n_x = make_store(scan, size)
            create_s = time.perf_counter() - start
            load = os.getloadavg()
            result = run_strain(
                scan, work / f"strain_{size:g}GB_{method}.zarr", method, model if method == "unet" else None, args.extra
            )
            row = {"size_gb": size, "patterns": n_y * n_x, "data_gb": round(n_y * n_x * PATTERN_BYTES / 1e9, 3)}
            row |= {"method": method, "create_s": round(create_s, 1)}
            row |= result | {"patterns_per_s": round(n_y * n_x / result["wall_s"], 1)}
            row["load_avg_1min_before_after"] = [round(load[0], 1), round(os.getloadavg()[0], 1)]
            rows.append(row)
            print(row, flush=True)
            shutil.rmtree(scan, ignore_errors=True)
            shutil.rmtree(work / f"strain_{size:g}GB_{method}.zarr", ignore_errors=True)
            write_result("scale", {**payload, "rows": rows})
            plot(rows, RESULTS / "scale.png")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(RESULTS / "scale.json")


if __name__ == "__main__":
    main()

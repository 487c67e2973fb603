"""Side by side with py4DSTEM: the same simulated scan through tuned py4DSTEM 0.14.18 and through stemstrain.

The speed comparison of one run: every method on one scan, one after the other, on the same cores.
py4DSTEM runs as /work/shared/reference/py4dstem-tuned.md prescribes (flat probe kernel,
multicorr x32, explicit primitive basis, median reference), in its own venv ``.venv-py4dstem``,
one process per core, through ``bench/peers.py:run_py4dstem``; its strain map is mapped into our
convention and scored by the same ``evaluate_strain`` as ours. Ours run as ``stemstrain strain``
runs them with their defaults: the network with the shipped default model unless ``--model`` names
one, bragg and cepstrum-multi (our classical baselines). The default scan is the one the tuned
workflow was validated on: Si [110], 37 nm, 1e6 e-/pattern, strain up to 2 %, simulated in the 2x
box (``--box-scale``, as the accuracy suite). A simulated ``--size``² scan is tiled ``--tile``
times along each axis (truth tiled alike) so that start-up costs do not dominate the rates; the
scan's orientation and field are the training ones' kind, so its errors are no accuracy claim
(``bench/accuracy.py`` makes those). Writes ``bench/results/NAME.json`` (``--result``).

Usage: ``python bench/py4dstem_compare.py [--model FILE] [--thickness 37] [--size 16 --tile 4] [--result NAME]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from peers import run_py4dstem  # noqa: E402

from stemstrain.config import Config, ScanConfig  # noqa: E402
from stemstrain.evaluate import evaluate_strain  # noqa: E402
from stemstrain.io import make_4d_dataset, strain_map_dataset  # noqa: E402
from stemstrain.simulate import simulate_scan  # noqa: E402
from stemstrain.strainmap import strain_map  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "py4dstem"


def timed_strain(scan_path: Path, out: Path, **options) -> tuple[xr.Dataset, float]:
    start = time.perf_counter()
    strain_map(scan_path, out, fresh=True, progress=False, **options)
    return xr.open_zarr(out).load(), time.perf_counter() - start


def tiled(scan_path: Path, truth_path: Path, tile: int, out_dir: Path) -> tuple[Path, Path]:
    """The scan and its truth repeated ``tile`` x ``tile`` times (same reference region)."""
    if tile == 1:
        return scan_path, truth_path
    scan_out, truth_out = out_dir / f"tiled{tile}_{scan_path.name}", out_dir / f"tiled{tile}_{truth_path.name}"
    if not truth_out.exists():
        ds = xr.open_zarr(scan_path).load()
        step = float(ds.scan_x[1] - ds.scan_x[0])
        k_sampling = float(ds.k_x[1] - ds.k_x[0])
        attrs = dict(ds.attrs)
        energy, semiangle = attrs.pop("energy_eV"), attrs.pop("semiangle_mrad")
        data = np.tile(ds["data"].values, (tile, tile, 1, 1))
        big = make_4d_dataset(data, step, k_sampling, energy, semiangle, ds["probe"].values, **attrs)
        big.chunk({"scan_y": 8, "scan_x": 8}).to_zarr(scan_out, mode="w")
        truth = xr.open_zarr(truth_path).load()
        components = {name: np.tile(truth[name].values, (tile, tile)) for name in ("e_xx", "e_yy", "e_xy", "theta")}
        n_y, n_x = data.shape[:2]
        strain_map_dataset(
            components,
            np.arange(n_y) * step,
            np.arange(n_x) * step,
            mask=np.ones((n_y, n_x), bool),
            method="truth",
            reference_roi=truth.attrs.get("reference_roi"),
        ).to_zarr(truth_out, mode="w")
    return scan_out, truth_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="trained model (default: the shipped default)")
    parser.add_argument("--thickness", type=float, default=37.0, help="[nm]")
    parser.add_argument("--dose", type=float, default=1e6, help="[e- per pattern]")
    parser.add_argument("--amplitude", type=float, default=0.02, help="largest strain of the gradient field [1]")
    parser.add_argument("--size", type=int, default=16, help="simulated scan positions per side")
    parser.add_argument("--tile", type=int, default=4, help="repeats of the simulated scan per side")
    parser.add_argument("--box-scale", type=float, default=2.0, help="simulate.box_scale_min [1/k_sampling]")
    parser.add_argument("--processes", type=int, default=2, help="py4DSTEM disk-detection processes")
    parser.add_argument("--result", default="py4dstem", help="name of the result: bench/results/NAME.json")
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    name = f"si110_t{args.thickness:g}_d{args.dose:.0e}_a{args.amplitude:g}_{args.size}_box{args.box_scale:g}"
    name = name.replace("+", "").replace(".", "p")
    scan_path, truth_path = WORK / f"{name}.zarr", WORK / f"{name}.truth.zarr"
    roi = (0, args.size, 0, max(2, args.size // 4))
    if not truth_path.exists():
        scan = ScanConfig(
            name=name,
            crystal="Si_110",
            thickness_nm=args.thickness,
            dose=args.dose,
            field="gradient",
            amplitude=args.amplitude,
            scan_shape=(args.size, args.size),
            reference_roi=roi,
        )
        config = Config()
        config.simulate.box_scale_min = args.box_scale
        simulate_scan(config, scan, scan_path, truth_path)
    scan_path, truth_path = tiled(scan_path, truth_path, args.tile, WORK)
    scan = xr.open_zarr(scan_path)
    truth = xr.open_zarr(truth_path).load()
    n = scan.sizes["scan_y"] * scan.sizes["scan_x"]

    peer_timing = run_py4dstem(scan_path, WORK / f"py4dstem_{scan_path.name}", processes=args.processes)
    peer = xr.open_zarr(WORK / f"py4dstem_{scan_path.name}").load()

    results = {
        "scan": {
            "crystal": "Si_110",
            "thickness_nm": args.thickness,
            "dose": args.dose,
            "strain_amplitude": args.amplitude,
            "patterns": n,
        },
        "tile": args.tile,
        "box_scale_min": args.box_scale,
        "load_avg_start": [round(v, 1) for v in os.getloadavg()],
    }
    results["py4dstem"] = {**peer_timing, "scores": evaluate_strain(peer, truth)}
    results["py4dstem"]["load_avg_end"] = [round(v, 1) for v in os.getloadavg()]
    ours = {"unet": {"model": args.model}, "bragg": {}, "cepstrum-multi": {}}
    for label, options in ours.items():
        predicted, seconds = timed_strain(scan_path, WORK / f"{label}.zarr", method=label, **options)
        results[f"stemstrain_{label}"] = {
            "seconds_total": seconds,
            "patterns_per_s_end_to_end": n / seconds,
            "model": str(args.model or "shipped default") if label == "unet" else None,
            "scores": evaluate_strain(predicted, truth),
            "load_avg_end": [round(v, 1) for v in os.getloadavg()],
        }
        print(label, f"{n / seconds:.1f} patterns/s", flush=True)
    for label in ours:
        ratio = results[f"stemstrain_{label}"]["patterns_per_s_end_to_end"] / peer_timing["patterns_per_s_end_to_end"]
        results[f"speed_ratio_{label}_vs_py4dstem"] = ratio
    path = write_result(args.result, results)
    print(json.dumps({k: v for k, v in results.items() if k.startswith("speed")}, indent=2))
    for label in ["py4dstem", *[f"stemstrain_{k}" for k in ours]]:
        scores = results[label]["scores"]
        print(
            f"{label:<20} rmse e_xx {scores['e_xx']['rmse']:.2e} e_yy {scores['e_yy']['rmse']:.2e} "
            f"e_xy {scores['e_xy']['rmse']:.2e} theta {scores['theta']['rmse']:.2e}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

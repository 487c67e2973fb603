"""Side by side with py4DSTEM: the same simulated chunk through py4DSTEM 0.14 and through stemstrain.

py4DSTEM needs numpy < 2, so it runs in its own venv (``bench/work/py4dstem-venv``, created here
with pip on first use) through ``bench/py4dstem_runner.py``. Both tools get the same patterns, the
same vacuum probe and the same reference region. A simulated ``--size``² scan is tiled
``--tile`` times along each axis (truth tiled alike) so that start-up costs do not dominate the
rates. The unet row needs a trained ``--model`` (``make demo`` makes one); without it the row is
skipped (a network of random weights finds no lattice on real patterns). py4DSTEM's fitted
lattice vectors (its (qx, qy) axes are our (y, x)) are turned into strain with our convention so
that all errors are measured the same way against the simulated truth. Writes ``bench/results/py4dstem.json``.

Usage: ``python bench/py4dstem_compare.py [--model results/train/demo/model.pt] [--thickness 30] [--size 16 --tile 2]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.config import Config, ScanConfig  # noqa: E402
from stemstrain.evaluate import evaluate_strain  # noqa: E402
from stemstrain.io import make_4d_dataset, strain_map_dataset  # noqa: E402
from stemstrain.simulate import simulate_scan  # noqa: E402
from stemstrain.strain import reference_lattice, strain_from_lattice  # noqa: E402
from stemstrain.strainmap import strain_map  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "py4dstem"
VENV = HERE / "work" / "py4dstem-venv"


def py4dstem_python() -> Path:
    """The py4DSTEM venv's interpreter, created on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "py4DSTEM==0.14.18"], check=True)
    return python


def py4dstem_strain(g1g2: dict, reference_roi, scan_y, scan_x) -> xr.Dataset:
    """Strain map from py4DSTEM's per-position lattice vectors, in our convention."""
    # py4DSTEM's qx runs along detector rows (our y), qy along columns (our x)
    lattice = np.stack(
        [np.stack([g1g2["g1y"], g1g2["g2y"]], axis=-1), np.stack([g1g2["g1x"], g1g2["g2x"]], axis=-1)], axis=-2
    )
    valid = g1g2["mask"].astype(bool) & np.all(np.isfinite(lattice), axis=(-2, -1))
    lattice = np.where(valid[..., None, None], lattice, np.nan)
    components = strain_from_lattice(lattice, reference_lattice(lattice, reference_roi, valid))
    return strain_map_dataset(components, scan_y, scan_x, mask=valid, method="py4dstem", reference_roi=reference_roi)


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
    parser.add_argument("--model", type=Path, default=Path("results/train/demo/model.pt"))
    parser.add_argument("--thickness", type=float, default=30.0, help="[nm]")
    parser.add_argument("--dose", type=float, default=1e6, help="[e- per pattern]")
    parser.add_argument("--size", type=int, default=16, help="simulated scan positions per side")
    parser.add_argument("--tile", type=int, default=2, help="repeats of the simulated scan per side")
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    name = f"si110_t{args.thickness:g}_d{args.dose:.0e}_{args.size}".replace("+", "")
    scan_path, truth_path = WORK / f"{name}.zarr", WORK / f"{name}.truth.zarr"
    roi = (0, args.size, 0, max(2, args.size // 4))
    if not truth_path.exists():
        scan = ScanConfig(
            name=name,
            crystal="Si_110",
            thickness_nm=args.thickness,
            dose=args.dose,
            field="gradient",
            amplitude=0.01,
            scan_shape=(args.size, args.size),
            reference_roi=roi,
        )
        simulate_scan(Config(), scan, scan_path, truth_path)
    scan_path, truth_path = tiled(scan_path, truth_path, args.tile, WORK)
    roi = tuple(xr.open_zarr(scan_path).attrs["reference_roi"])
    scan = xr.open_zarr(scan_path)
    truth = xr.open_zarr(truth_path).load()
    n = scan.sizes["scan_y"] * scan.sizes["scan_x"]

    np.save(WORK / "patterns.npy", scan["data"].values.astype(np.float32))
    np.save(WORK / "probe.npy", scan["probe"].values.astype(np.float32))
    pixels = scan.sizes["k_x"]
    k_sampling = float(scan.k_x[1] - scan.k_x[0])
    # upsample 64: py4DSTEM's default 16 quantises each disk position to 1/16 px, ~4e-3 in strain
    # for Si 111 at 15 px; 64 is what a careful user sets for strain mapping.
    params = {"centre_px": pixels // 2, "k_sampling": k_sampling, "reference_roi": list(roi), "upsample_factor": 64}
    (WORK / "params.json").write_text(json.dumps(params))
    runner = subprocess.run(
        [str(py4dstem_python()), str(HERE / "py4dstem_runner.py"), str(WORK)], capture_output=True, text=True
    )
    if runner.returncode != 0:
        sys.exit(f"py4DSTEM run failed:\n{runner.stderr[-4000:]}")
    peer_timing = json.loads((WORK / "py4dstem_timing.json").read_text())
    peer = py4dstem_strain(dict(np.load(WORK / "py4dstem_out.npz")), roi, scan.scan_y.values, scan.scan_x.values)

    results = {
        "scan": {"crystal": "Si_110", "thickness_nm": args.thickness, "dose": args.dose, "patterns": n},
        "tile": args.tile,
    }
    results["py4dstem"] = {**peer_timing, "params": params, "scores": evaluate_strain(peer, truth)}
    ours = {"bragg": {"method": "bragg"}}
    if args.model.exists():
        ours["unet"] = {"method": "unet", "model": args.model, "precision": "auto"}
    else:
        print(f"no trained model at {args.model} (run `make demo` first): the unet row is skipped", flush=True)
    for label, options in ours.items():
        predicted, seconds = timed_strain(scan_path, WORK / f"{label}.zarr", **options)
        results[f"stemstrain_{label}"] = {
            "seconds_total": seconds,
            "patterns_per_s_end_to_end": n / seconds,
            "model": str(args.model) if label == "unet" else None,
            "scores": evaluate_strain(predicted, truth),
        }
    for label in ours:
        ratio = results[f"stemstrain_{label}"]["patterns_per_s_end_to_end"] / peer_timing["patterns_per_s_end_to_end"]
        results[f"speed_ratio_{label}_vs_py4dstem"] = ratio
    path = write_result("py4dstem", results)
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

"""The network on training-distribution patterns it never saw: slope and error of its strain per crystal.

Held-out strain states of a training set (by default the states a model's own training set does
not hold: from ``--start`` on) give patterns of the training distribution (uniform strain per
pattern, random optics, orientation, thickness and dose) with exact spot positions. For each
crystal, the network's spots and the true spots are fitted as in a strain run; the strain of the
network's lattice against the unstrained crystal (the true lattice taken back through the pattern's
known deformation) is compared with the pattern's strain. Set against the accuracy suite, it tells a
compression that the network has on a crystal at all from one that comes with a suite scan's
conditions.

Usage: ``python bench/in_distribution.py DATA [--model NAME] [--start 5712] [--crystals SrTiO3_001 ...]
[--frozen-phonons N]``; writes ``bench/results/in_distribution.json`` (``in_distribution_fp<N>.json``
with ``--frozen-phonons``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.lattice import fit_patterns, reduced_basis  # noqa: E402
from stemstrain.model import load_model, resolve_model  # noqa: E402
from stemstrain.model.encoding import decode_spots  # noqa: E402
from stemstrain.runtime import autocast, resolve_precision  # noqa: E402
from stemstrain.strain import deformation_from_strain, strain_from_lattice  # noqa: E402

COMPONENTS = ("e_xx", "e_yy", "e_xy")


def crystal_row(data: xr.Dataset, index: np.ndarray, network, precision: str) -> dict:
    """Slopes and RMSE of the network's strain against the true strain of the patterns ``index``."""
    k_sampling, centre = float(data.attrs["k_sampling"]), int(data.attrs["pixels"]) // 2
    inputs = torch.as_tensor(data["inputs"].values[index])[:, None]
    with torch.inference_mode(), autocast("cpu", precision):
        output = np.concatenate([network(inputs[i : i + 64]).float().numpy() for i in range(0, len(inputs), 64)])
    found, weights = decode_spots(output)
    found = (found - centre) * k_sampling
    true = (data["spots"].values[index] - centre) * k_sampling
    amplitudes = data["spot_amplitudes"].values[index]
    lattice0 = np.stack([reduced_basis(t[a > 0], a[a > 0]) for t, a in zip(true, amplitudes, strict=True)])
    origin0 = np.stack([t[np.argmax(a)] for t, a in zip(true, amplitudes, strict=True)])
    exact = fit_patterns(true, amplitudes, lattice0, origin0)
    measured = fit_patterns(found, weights, exact["lattice"], exact["origin"])
    strain = data["strain"].values[index]  # e_xx, e_yy, e_xy, theta
    deformation = np.stack([deformation_from_strain(*s) for s in strain])
    unstrained = np.swapaxes(deformation, -1, -2) @ exact["lattice"]  # g = F^-T g0
    network_strain = strain_from_lattice(measured["lattice"], unstrained)
    valid = exact["valid"] & measured["valid"]
    row = {"patterns": int(len(index)), "valid_fraction": float(valid.mean())}
    for i, name in enumerate(COMPONENTS):
        truth, found_strain = strain[valid, i], network_strain[name][valid]
        row[name] = {
            "slope": float(np.polyfit(truth, found_strain, 1)[0]),
            "rmse": float(np.sqrt(np.mean((found_strain - truth) ** 2))),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="training-set Zarr store")
    parser.add_argument("--model", help="network model, a path or a shipped model's name (default: the shipped one)")
    parser.add_argument("--start", type=int, default=5712, help="first held-out sample (the model's set ends before)")
    parser.add_argument("--crystals", nargs="*", default=["SrTiO3_001", "Si_110", "Au_001"])
    parser.add_argument("--thickness", nargs=2, type=float, default=(20.0, 80.0), help="range [nm]")
    parser.add_argument("--min-dose", type=float, default=1e5, help="lowest dose [e-]")
    parser.add_argument("--frozen-phonons", type=int, help="only patterns with this many (0: static)")
    args = parser.parse_args()
    model = resolve_model(args.model)
    network, _ = load_model(model, device="cpu")  # in eval mode
    precision = resolve_precision("auto", "cpu")
    data = xr.open_zarr(args.data, consolidated=False).isel(sample=slice(args.start, None))
    material, thickness, dose, phonons = (
        data[v].values for v in ("material", "thickness_nm", "dose", "frozen_phonons")
    )
    rows = {}
    for crystal in args.crystals:
        chosen = (material == crystal) & (thickness >= args.thickness[0]) & (thickness <= args.thickness[1])
        chosen &= (dose >= args.min_dose) & (
            (phonons == args.frozen_phonons) if args.frozen_phonons is not None else True
        )
        index = np.flatnonzero(chosen)
        if not len(index):
            sys.exit(f"{args.data}: no held-out pattern of {crystal} in the chosen thickness and dose")
        rows[crystal] = crystal_row(data, index, network, precision)
        slopes = " / ".join(f"{rows[crystal][c]['slope']:.3f}" for c in ("e_xx", "e_yy"))
        print(f"{crystal:12s} {len(index)} patterns, slopes e_xx/e_yy {slopes}", flush=True)
    selection = {"start": args.start, "thickness_nm": list(args.thickness), "min_dose": args.min_dose}
    selection["frozen_phonons"] = args.frozen_phonons
    name = "in_distribution" if args.frozen_phonons is None else f"in_distribution_fp{args.frozen_phonons}"
    path = write_result(name, {"data": str(args.data), "model": str(model), "selection": selection, "rows": rows})
    print(json.dumps({"wrote": str(path)}))


if __name__ == "__main__":
    main()

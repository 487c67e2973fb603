"""bench/error_parts.py splits a map's error into its scale about zero strain and the scatter left."""

import sys
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from error_parts import error_parts  # noqa: E402

COMPONENTS = ("e_xx", "e_yy", "e_xy", "theta")


def _map(values: dict[str, np.ndarray]) -> xr.Dataset:
    data = {name: (("scan_y", "scan_x"), value) for name, value in values.items()}
    return xr.Dataset(data, attrs={"reference_roi": [0, 4, 0, 16]})


def test_a_compressed_map_gives_its_scale_and_its_scatter():
    rng = np.random.default_rng(0)
    ramp = np.broadcast_to(np.linspace(0, 0.02, 16), (16, 16)).copy()
    ramp[:4] = 0.0  # zero strain in the reference rows, as a suite scan's truth
    truth = _map({"e_xx": ramp, "e_yy": ramp.T.copy(), "e_xy": np.zeros((16, 16)), "theta": np.zeros((16, 16))})
    scatter = 3e-4 * rng.standard_normal((3, 16, 16))
    predicted = {"e_xx": 0.9 * ramp + scatter[0], "e_yy": ramp.T + scatter[1], "e_xy": scatter[2]}
    parts = error_parts(_map({**predicted, "theta": np.zeros((16, 16))}), truth)
    assert abs(parts["e_xx"]["scale"] - 0.9) < 0.01
    assert abs(parts["e_yy"]["scale"] - 1.0) < 0.01
    assert np.isnan(parts["e_xy"]["scale"])  # no strain there to scale
    for name in ("e_xx", "e_yy", "e_xy"):  # what is left is the scatter (3e-4), within its sampling error
        assert abs(np.sqrt(parts[name]["mse_scaled"]) - 3e-4) < 0.5e-4
    assert np.sqrt(parts["e_xx"]["mse"]) > 3 * np.sqrt(parts["e_xx"]["mse_scaled"])  # compression dominated

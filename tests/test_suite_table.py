"""The accuracy suite's table: scores, slopes and failures, each in its cell."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from stemstrain.errors import StemstrainInputError
from stemstrain.evaluate.suite import failed_row, pooled_row, slopes, suite_table, timed_row


def _ok_row(scan: str, method: str, rmse: float) -> dict:
    return {
        "scan": scan,
        "method": method,
        "status": "ok",
        "worst_strain_rmse": rmse,
        "valid_fraction": 0.9,
        "slope": {"e_xx": 0.97, "e_yy": 1.02},
        "patterns_per_s": 100.0,
    }


def test_table_marks_a_failed_method_with_its_reason():
    rows = [
        _ok_row("si110", "bragg", 3.2e-4),
        failed_row("si110", "unet", "reference region [y0, y1, x0, x1] = [0, 4, 0, 16]\n holds no valid lattice fit"),
    ]
    table = suite_table(rows, ["unet", "bragg", "cepstrum"])
    line = next(row for row in table.splitlines() if row.startswith("| si110"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[1] == "fails: reference region [y0, y1, x0, x1] = [0, 4, 0, 16] holds no valid lattice fit"
    assert cells[2] == "3.2 (90 % valid) · s 0.97/1.02"
    assert cells[3] == "not run"
    assert "| patterns/s (median) | – | 100 | – |" in table


def test_noise_draws_of_a_scan_are_pooled_with_their_standard_error():
    rows = []
    for draw, (e_xx, e_yy) in enumerate([(3e-4, 1e-4), (5e-4, 1e-4)]):
        row = _ok_row("si110", "unet", max(e_xx, e_yy)) | {"draw": draw}
        rows.append(row | {"rmse": {"e_xx": e_xx, "e_yy": e_yy, "e_xy": 0.0, "theta": 0.0}})
    pooled = pooled_row(rows)
    assert pooled["worst_strain_rmse"] == pytest.approx(np.sqrt((3e-4**2 + 5e-4**2) / 2))
    assert pooled["worst_strain_rmse_se"] == pytest.approx(1e-4)  # std 1.41e-4 over 2 draws / sqrt(2)
    assert pooled["draws"] == 2
    line = next(r for r in suite_table(rows, ["unet"]).splitlines() if r.startswith("| si110"))
    assert line == "| si110 | 4.1 ±1.0 (90 % valid) · s 0.97/1.02 |"
    # a failed draw fails the cell; one draw is the row itself
    assert pooled_row([*rows, failed_row("si110", "unet", "no lattice")])["status"] == "failed"
    assert pooled_row(rows[:1]) is rows[0]


def test_a_bad_input_error_becomes_a_failed_row(tmp_path):
    def run():
        raise StemstrainInputError("scan.zarr: variable 'data' must be 4-D")

    row = timed_row("s", "bragg", tmp_path / "truth.zarr", tmp_path / "out.zarr", run)
    reason = "scan.zarr: variable 'data' must be 4-D"
    assert row == {"scan": "s", "method": "bragg", "status": "failed", "reason": reason}


def test_slopes_measure_compression_outside_the_reference():
    rng = np.random.default_rng(0)
    true = rng.uniform(-0.02, 0.02, (3, 8, 8))
    true[:, :2] = 0.0  # the reference rows carry no strain
    dims = ("scan_y", "scan_x")
    truth = xr.Dataset({c: (dims, true[i]) for i, c in enumerate(("e_xx", "e_yy", "e_xy"))})
    truth["theta"] = (dims, np.zeros((8, 8)))
    predicted = xr.Dataset({c: (dims, 0.85 * truth[c].values + 1e-3) for c in ("e_xx", "e_yy", "e_xy", "theta")})
    predicted["mask"] = (dims, np.ones((8, 8), bool))
    result = slopes(predicted, truth)
    assert result["e_xx"] == pytest.approx(0.85) and result["e_yy"] == pytest.approx(0.85)
    assert np.isnan(result["theta"])

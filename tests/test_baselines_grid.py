"""`stemstrain evaluate-grid`: a 1 × 2 grid of tiny abTEM scans, two baselines, real strain runs."""

from __future__ import annotations

import pandas as pd
import yaml
from typer.testing import CliRunner

from stemstrain.cli import app
from stemstrain.config import parse_config
from stemstrain.evaluate.grid import grid_scans

GRID = {
    "name": "gridtest",
    "simulate": {"cluster": {"kind": "none"}},
    "evaluate": {
        "thicknesses_nm": [10],
        "doses": [1e5, 1e7],
        "field": "uniform",
        "amplitude": 0.01,
        "scan_shape": [2, 3],
        "methods": ["unet", "bragg", "cepstrum"],
    },
}


def test_grid_scans_cover_thickness_and_dose():
    config = parse_config({"evaluate": {"thicknesses_nm": [10, 30], "doses": [1e4, 1e6, 1e8]}})
    scans = grid_scans(config)
    assert len(scans) == 6
    assert len({scan.name for scan in scans}) == 6
    assert {(scan.thickness_nm, scan.dose) for scan in scans} == {(t, d) for t in (10, 30) for d in (1e4, 1e6, 1e8)}
    assert all(scan.reference_roi == (0, 12, 0, 3) for scan in scans)  # left quarter of a 12 x 12 scan
    assert grid_scans(parse_config({})) == []


def test_evaluate_grid_cli(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(GRID))
    out, work = tmp_path / "evaluation", tmp_path / "work"
    command = ["evaluate-grid", str(config), "--out-dir", str(out), "--work-dir", str(work)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output

    table = pd.read_csv(out / "table.csv")
    # unet is skipped without --model; each baseline scores each of the two scans.
    assert sorted(table["method"].unique()) == ["bragg", "cepstrum"]
    assert len(table) == 4 and set(table["dose"]) == {1e5, 1e7}
    assert (table["n_scored"] == 4).all()  # 2 x 3 positions minus the reference column
    assert (table["rmse_strain"] < 2e-3).all(), table.to_string()
    assert (table["patterns_per_s"] > 0).all()
    markdown = (out / "table.md").read_text()
    assert "| thickness [nm] | dose [e-/pattern] | bragg | cepstrum |" in markdown
    assert (out / "rmse_vs_thickness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second run reuses the scans and scores: nothing is simulated or fitted again.
    stamps = {path: path.stat().st_mtime_ns for path in (work / "scans").iterdir()}
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert {path: path.stat().st_mtime_ns for path in (work / "scans").iterdir()} == stamps
    pd.testing.assert_frame_equal(pd.read_csv(out / "table.csv"), table)


def test_evaluate_grid_empty_grid_is_an_input_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "empty"}))
    result = CliRunner().invoke(app, ["evaluate-grid", str(config), "--out-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "evaluation grid is empty" in result.output

"""The command line: help, evaluate, plot, and one clear error for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from stemstrain.io import strain_map_dataset, write_strain_map

COMMANDS = ["simulate", "simulate-scan", "train", "strain", "ingest", "evaluate", "evaluate-grid", "plot"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "stemstrain.cli", *map(str, args)], capture_output=True, text=True)


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_evaluate_scores_a_known_error(strain_map_factory, tmp_path):
    truth = strain_map_factory(reference_roi=[0, 6, 0, 2])
    shifted = xr.open_zarr(truth).load()
    shifted["e_xx"] = shifted["e_xx"] + 2e-4
    shifted["theta"] = shifted["theta"] - 1e-3
    prediction = write_strain_map(shifted, tmp_path / "pred.zarr")
    result = run("evaluate", prediction, truth, "--json", tmp_path / "scores.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "rmse_strain=2.000e-04 rmse_theta=1.000e-03"
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["e_xx"]["rmse"] == pytest.approx(2e-4)
    assert scores["e_yy"]["rmse"] == pytest.approx(0.0)
    assert scores["n_scored"] == 6 * 6  # reference columns 0-1 left out


def test_plot_writes_png(strain_map_factory, tmp_path):
    path = strain_map_factory()
    result = run("plot", path, tmp_path / "map.png", "--truth", path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write(ds, path):
    ds.to_zarr(path)
    return path


@pytest.mark.parametrize("command", ["evaluate", "plot"])
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda ds: ds.drop_vars("e_xy"), "variable 'e_xy' is missing"),
        (lambda ds: ds.transpose("scan_x", "scan_y"), "has dims"),
        (lambda ds: ds.assign(e_xx=ds.e_xx * np.nan), "no scan position holds a finite"),
        (None, "not found"),
    ],
)
def test_bad_input_gives_one_clear_line(strain_map_factory, tmp_path, command, damage, message):
    good = strain_map_factory()
    bad = tmp_path / "bad.zarr"
    if damage is not None:
        write(damage(xr.open_zarr(good).load()), bad)
    args = [bad, good] if command == "evaluate" else [bad, tmp_path / "out.png"]
    result = run(command, *args)
    assert result.returncode == 2
    assert message in result.stderr and "bad.zarr" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_evaluate_rejects_different_grids(strain_map_factory):
    result = run("evaluate", strain_map_factory(shape=(4, 4)), strain_map_factory(shape=(6, 8)))
    assert result.returncode == 2 and "scan shape" in result.stderr


def test_unbuilt_or_missing_config_exits_non_zero(tmp_path):
    result = run("simulate", tmp_path / "missing.yaml", tmp_path / "out.zarr")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_strain_map_dataset_mask_defaults_to_finite():
    values = {name: np.zeros((2, 2)) for name in ("e_xx", "e_yy", "e_xy", "theta")}
    values["e_xx"][0, 0] = np.nan
    ds = strain_map_dataset(values, [0.0, 0.5], [0.0, 0.5])
    assert ds["mask"].values.tolist() == [[False, True], [True, True]]

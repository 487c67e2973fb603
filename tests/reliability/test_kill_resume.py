"""kill -9 in the middle of `simulate`, `simulate-scan`, `train` and `strain`, then the same command again.

Each run is a real subprocess, killed (SIGKILL to its process group) as soon as its first chunk
marker or checkpoint is on disk; the re-run must finish from there and give exactly what an
uninterrupted run gives, leaving no temporary or partial siblings behind.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from reltools import arrays_equal, kill_when, leftovers, run_cli, start_cli

from stemstrain.io import k_calibration, make_4d_dataset


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_killed_simulate_resumes_to_the_uninterrupted_store(artifacts, tmp_path):
    out = tmp_path / "train.zarr"
    markers = tmp_path / "train.zarr.partial.done"
    log = tmp_path / "simulate.log"
    process = start_cli("simulate", artifacts.config, out, log=log)
    kill_when(process, lambda: markers.is_dir() and any(markers.iterdir()), log)
    assert 1 <= len(_names(markers)) < 3 and not out.exists()  # 3 chunks of 2 strain states

    result = run_cli("simulate", artifacts.config, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(2 to do)" in result.stderr or "(1 to do)" in result.stderr  # resumed, not restarted
    assert _names(tmp_path) == ["simulate.log", "train.zarr"]
    arrays_equal(artifacts.training_set, out)


def test_killed_simulate_scan_resumes_to_the_uninterrupted_scan(artifacts, tmp_path):
    out, truth = tmp_path / "scan.zarr", tmp_path / "truth.zarr"
    tasks = tmp_path / "scan.zarr.partial.tasks"  # 2 multislice tasks: reference region and the rest
    log = tmp_path / "simulate-scan.log"
    process = start_cli("simulate-scan", artifacts.config, out, truth, log=log)
    kill_when(process, lambda: tasks.is_dir() and any(tasks.glob("*.npy")), log)
    assert not out.exists() and not truth.exists()

    result = run_cli("simulate-scan", artifacts.config, out, truth)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 tasks (1 to do)" in result.stderr  # resumed, not restarted
    assert _names(tmp_path) == ["scan.zarr", "simulate-scan.log", "truth.zarr"]
    arrays_equal(artifacts.scan, out)
    arrays_equal(artifacts.truth, truth)


def _state(path):
    from stemstrain.model import load_model

    module, _ = load_model(path)
    return module.state_dict()


def test_killed_train_resumes_to_the_uninterrupted_model(artifacts, tmp_path):
    ckpt = tmp_path / "ckpt"
    log = tmp_path / "train.log"
    process = start_cli("train", artifacts.config, artifacts.training_set, ckpt, log=log)
    kill_when(process, lambda: (ckpt / "checkpoint.pt").exists(), log)
    assert not (ckpt / "model.pt").exists()
    reference_steps = torch.load(artifacts.ckpt_dir / "checkpoint.pt", weights_only=False)["step"]
    killed_at = torch.load(ckpt / "checkpoint.pt", weights_only=False)["step"]
    assert 1 <= killed_at < reference_steps

    result = run_cli("train", artifacts.config, artifacts.training_set, ckpt, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming at step {killed_at}" in result.stdout
    assert not [name for name in _names(ckpt) if ".tmp-" in name], _names(ckpt)
    resumed, uninterrupted = _state(ckpt / "model.pt"), _state(artifacts.ckpt_dir / "model.pt")
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
    # the step log holds each step once, as in the uninterrupted run
    steps = (ckpt / "steps.csv").read_text().splitlines()
    assert len(steps) == len((artifacts.ckpt_dir / "steps.csv").read_text().splitlines()) == reference_steps + 1


@pytest.fixture(scope="module")
def tiled_scan(artifacts, tmp_path_factory):
    """The simulated 4 x 4 scan tiled to 12 x 12 positions in 2 x 2 chunks: 36 work units of 4 patterns."""
    ds = xr.open_zarr(artifacts.scan).load()
    k_sampling, _ = k_calibration(ds)
    step = float(ds["scan_x"][1] - ds["scan_x"][0])
    attrs = {**ds.attrs, "reference_roi": [0, 12, 0, 1]}
    energy, semiangle = attrs.pop("energy_eV"), attrs.pop("semiangle_mrad")
    tiled = make_4d_dataset(
        np.tile(ds["data"].values, (3, 3, 1, 1)), step, k_sampling, energy, semiangle, ds["probe"].values, **attrs
    )
    path = tmp_path_factory.mktemp("tiled") / "scan.zarr"
    tiled.chunk({"scan_y": 2, "scan_x": 2}).to_zarr(path, mode="w")
    return path


STRAIN_OPTIONS = ("--method", "peaks", "--unit-patterns", "4", "--no-progress")


@pytest.fixture(scope="module")
def tiled_reference(tiled_scan):
    out = tiled_scan.with_name("reference.zarr")
    result = run_cli("strain", tiled_scan, out, *STRAIN_OPTIONS)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_killed_strain_resumes_to_the_uninterrupted_map(tiled_scan, tiled_reference, tmp_path):
    out = tmp_path / "strain.zarr"
    markers = tmp_path / "strain.zarr.partial.done"
    log = tmp_path / "strain.log"
    process = start_cli("strain", tiled_scan, out, *STRAIN_OPTIONS, log=log)
    kill_when(process, lambda: markers.is_dir() and len(_names(markers)) >= 2, log)
    assert 2 <= len(_names(markers)) < 36 and not out.exists()

    result = run_cli("strain", tiled_scan, out, *STRAIN_OPTIONS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert leftovers(out) == ["strain.zarr"]
    arrays_equal(tiled_reference, out)
    assert xr.open_zarr(out)["mask"].values.all()


def test_concurrent_strain_runs_do_not_interfere(tiled_scan, tiled_reference, tmp_path):
    """Two processes write strain.zarr and strain.zarr2 (sharing a name prefix) in one folder at once."""
    outputs = [tmp_path / "strain.zarr", tmp_path / "strain.zarr2"]
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    processes = [
        start_cli("strain", tiled_scan, out, *STRAIN_OPTIONS, log=log) for out, log in zip(outputs, logs, strict=True)
    ]
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert _names(tmp_path) == ["run0.log", "run1.log", "strain.zarr", "strain.zarr2"]
    for out in outputs:
        arrays_equal(tiled_reference, out)

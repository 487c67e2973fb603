"""Chunked strain maps: contract, accuracy on target-image scans, resume after a kill, dask, bad input."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from stemstrain.config import StrainConfig
from stemstrain.errors import StemstrainInputError
from stemstrain.io import make_4d_dataset
from stemstrain.simulate.targets import kinematic_spots, pixels_from_k, spot_weights, target_image
from stemstrain.strain import deformation_from_strain
from stemstrain.strainmap import fit_units, plan_strain_map, strain_map

PIXELS, K_SAMPLING, ENERGY = 128, 0.025, 200e3
SHAPE, REFERENCE = (8, 10), [0, 8, 0, 3]


def gradient_e_xx(shape=SHAPE):
    """Zero strain in the first three columns, then e_xx rising by 2e-3 per column [1]."""
    column = np.clip(np.arange(shape[1]) - 2, 0, None) * 2e-3
    return np.broadcast_to(column, shape)


def target_scan(path, shape=SHAPE, chunks=(4, 5), dtype=np.float32, scale=1000.0):
    """4D scan of target images (SIM's kinematic spots) with the strain of :func:`gradient_e_xx`."""
    e_xx = gradient_e_xx(shape)
    patterns = {}
    for value in np.unique(e_xx):
        g_xy, intensity, _ = kinematic_spots("Si_110", deformation_from_strain(value, 0, 0, 0), 1.55, ENERGY)
        image = target_image(pixels_from_k(g_xy, PIXELS, K_SAMPLING), spot_weights(intensity, g_xy), PIXELS)
        patterns[value] = (scale * image).astype(dtype)
    data = np.stack([np.stack([patterns[v] for v in row]) for row in e_xx])
    ds = make_4d_dataset(data, 0.5, K_SAMPLING, ENERGY, 1.5, material="Si_110", reference_roi=REFERENCE)
    ds.chunk({"scan_y": chunks[0], "scan_x": chunks[1]}).to_zarr(path, mode="w")
    return path


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    return target_scan(tmp_path_factory.mktemp("scan") / "scan.zarr")


def test_strain_map_of_target_scan_is_exact_and_follows_the_contract(scan, tmp_path):
    timings = {}
    out = strain_map(scan, tmp_path / "strain.zarr", method="peaks", unit_patterns=20, progress=False, timings=timings)
    ds = xr.open_zarr(out)
    for name in ("e_xx", "e_yy", "e_xy", "theta", "fit_error", "n_peaks", "mask"):
        assert ds[name].dims == ("scan_y", "scan_x") and "long_name" in ds[name].attrs
    assert ds["scan_x"].attrs["units"] == "nm"
    assert ds.attrs["method"] == "peaks" and ds.attrs["reference_roi"] == REFERENCE
    assert len(ds.attrs["g1"]) == 2 and len(ds.attrs["g2"]) == 2
    assert ds["mask"].values.all()
    np.testing.assert_allclose(ds["e_xx"].values, gradient_e_xx(), atol=1e-6)
    for name in ("e_yy", "e_xy", "theta"):
        np.testing.assert_allclose(ds[name].values, 0.0, atol=1e-6)
    assert timings["patterns"] == 80 and timings["total"] > 0
    assert not (tmp_path / "strain.zarr.partial").exists()


def _chunk_times(store, keys, unit_shape):
    """Modification times of the ``lattice`` chunk files written by the units ``fit-<y0>-<x0>``."""
    times = {}
    for key in keys:
        y0, x0 = (int(v) for v in key.split("-")[1:])
        path = store / "lattice" / "c" / str(y0 // unit_shape[0]) / str(x0 // unit_shape[1]) / "0" / "0"
        times[key] = path.stat().st_mtime_ns
    return times


def test_interrupted_run_keeps_finished_chunks_and_redoes_the_rest(scan, tmp_path):
    out = tmp_path / "strain.zarr"
    run = plan_strain_map(scan, out, method="peaks", config=StrainConfig(unit_patterns=1))
    fit_units(run, run.todo[:3], progress=False)  # then the run stops, as if killed
    markers = sorted(p.name for p in (tmp_path / "strain.zarr.partial.done").iterdir())
    assert markers == ["fit-0-0", "fit-0-5", "fit-4-0"] and not out.exists()
    kept = _chunk_times(tmp_path / "strain.zarr.partial", markers, (4, 5))
    strain_map(scan, out, method="peaks", unit_patterns=1, progress=False)
    assert not (tmp_path / "strain.zarr.partial").exists()
    assert _chunk_times(out, markers, (4, 5)) == kept  # finished chunks were not recomputed
    expected = strain_map(scan, tmp_path / "fresh.zarr", method="peaks", progress=False)
    first, second = xr.open_zarr(out), xr.open_zarr(expected)
    for name in ("e_xx", "e_yy", "lattice", "n_peaks", "mask"):
        np.testing.assert_array_equal(first[name].values, second[name].values)


def test_killed_cli_run_resumes(tmp_path):
    scan = target_scan(tmp_path / "big.zarr", shape=(16, 16), chunks=(2, 2))
    out = tmp_path / "strain.zarr"
    markers = tmp_path / "strain.zarr.partial.done"
    command = [sys.executable, "-m", "stemstrain.cli", "strain", str(scan), str(out), "--method", "peaks"]
    command += ["--unit-patterns", "1", "--no-progress"]
    process = subprocess.Popen(command, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if markers.exists() and len(list(markers.iterdir())) >= 3:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted(p.name for p in markers.iterdir())
    assert 3 <= len(done) < 64 and not out.exists()
    kept = _chunk_times(tmp_path / "strain.zarr.partial", done, (2, 2))
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert _chunk_times(out, done, (2, 2)) == kept
    ds = xr.open_zarr(out)
    assert ds["mask"].values.all()
    np.testing.assert_allclose(ds["e_xx"].values, gradient_e_xx((16, 16)), atol=1e-6)


def test_two_worker_local_cluster_equals_single_process(scan, tmp_path):
    from dask.distributed import Client, LocalCluster

    single = strain_map(scan, tmp_path / "single.zarr", method="peaks", unit_patterns=20, progress=False)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        distributed = strain_map(
            scan, tmp_path / "dask.zarr", method="peaks", unit_patterns=20, client=client, progress=False
        )
        assert len(client.scheduler_info()["workers"]) == 2
    a, b = xr.open_zarr(single).load(), xr.open_zarr(distributed).load()
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert a.attrs["g1"] == b.attrs["g1"]


def _write(ds, path):
    ds.to_zarr(path, mode="w")
    return path


def test_bad_inputs_give_clear_errors(scan, tmp_path, monkeypatch):
    good = xr.open_zarr(scan).load()
    with pytest.raises(StemstrainInputError, match="dims"):
        strain_map(_write(good.isel(scan_y=0), tmp_path / "dims.zarr"), tmp_path / "o1.zarr", method="peaks")
    with pytest.raises(StemstrainInputError, match="k_x"):
        strain_map(_write(good.drop_vars("k_x"), tmp_path / "nok.zarr"), tmp_path / "o2.zarr", method="peaks")
    zero = good.copy(data={**{k: v.values for k, v in good.data_vars.items()}, "data": 0 * good["data"].values})
    with pytest.raises(StemstrainInputError, match="all zero"):
        strain_map(_write(zero, tmp_path / "zero.zarr"), tmp_path / "o3.zarr", method="peaks")
    with pytest.raises(StemstrainInputError, match="--ref-roi"):
        strain_map(scan, tmp_path / "o4.zarr", method="peaks", reference_roi=(0, 9, 0, 3))
    monkeypatch.setenv("STEMSTRAIN_MODEL", str(tmp_path / "missing.pt"))  # no model given, none by default
    with pytest.raises(StemstrainInputError, match="--model"):
        strain_map(scan, tmp_path / "o5.zarr", method="unet")
    with pytest.raises(StemstrainInputError, match="--method"):
        strain_map(scan, tmp_path / "o6.zarr", method="magic")
    for path in ("o1", "o2", "o3", "o4", "o5", "o6"):
        assert not (tmp_path / f"{path}.zarr").exists()
    result = subprocess.run(
        [sys.executable, "-m", "stemstrain.cli", "strain", str(scan), str(tmp_path / "o.zarr"), "--method", "peaks"]
        + ["--ref-roi", "0", "9", "0", "3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "stemstrain: error: --ref-roi: [y0, y1, x0, x1] = [0, 9, 0, 3] must lie inside the scan of 8 x 10 "
        "positions with y0 < y1 and x0 < x1"
    ]

"""Strain over a dask-jobqueue SLURMCluster (`stemstrain strain --scheduler slurm`): two Slurm worker
jobs fill one output store by region, and the map equals the single-process one."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from slurmtools import run

from stemstrain.io import make_4d_dataset
from stemstrain.simulate.targets import kinematic_spots, pixels_from_k, spot_weights, target_image
from stemstrain.strain import deformation_from_strain

pytestmark = pytest.mark.slurm


def gradient_scan(path, shape=(6, 8)):
    """Kinematic Si [110] spot images, e_xx rising by 2e-3 per column after three reference columns."""
    e_xx = np.broadcast_to(np.clip(np.arange(shape[1]) - 2, 0, None) * 2e-3, shape)
    images = {}
    for value in np.unique(e_xx):
        g_xy, intensity, _ = kinematic_spots("Si_110", deformation_from_strain(value, 0, 0, 0), 1.55, 200e3)
        images[value] = 1000 * target_image(pixels_from_k(g_xy, 128, 0.025), spot_weights(intensity, g_xy), 128)
    data = np.stack([np.stack([images[v] for v in row]) for row in e_xx]).astype(np.float32)
    ds = make_4d_dataset(data, 0.5, 0.025, 200e3, 1.5, material="Si_110", reference_roi=[0, shape[0], 0, 3])
    ds.chunk({"scan_y": 2, "scan_x": 8}).to_zarr(path, mode="w")
    return e_xx


def test_strain_on_a_slurm_cluster_equals_single_process(tmp_path):
    e_xx = gradient_scan(tmp_path / "scan.zarr")
    common = ["--method", "peaks", "--unit-patterns", "16", "--no-progress"]
    run(["stemstrain", "strain", "scan.zarr", "single.zarr", *common], tmp_path, timeout_s=120)
    slurm = [
        "--scheduler", "slurm", "--workers", "2",
        "--cluster-option", "cores=1", "--cluster-option", "memory=2GB",
        "--cluster-option", "walltime=00:10:00",
    ]  # fmt: skip
    result = run(["stemstrain", "strain", "scan.zarr", "slurm.zarr", *common, *slurm], tmp_path, timeout_s=300)
    print(f"strain on a SLURMCluster (2 worker jobs): {result.elapsed_s:.0f} s")
    assert list(tmp_path.glob("slurm-*.out")), "the dask workers ran as Slurm jobs and wrote their logs here"

    single, distributed = xr.open_zarr(tmp_path / "single.zarr").load(), xr.open_zarr(tmp_path / "slurm.zarr").load()
    for name in ("e_xx", "e_yy", "e_xy", "theta", "mask", "n_peaks", "fit_error"):
        np.testing.assert_array_equal(single[name].values, distributed[name].values)
    np.testing.assert_allclose(distributed["e_xx"].values, e_xx, atol=1e-6)

"""The tuned py4DSTEM peer (bench/peers.py): its strain convention mapped exactly onto ours.

Synthetic Bragg vectors G = F⁻ᵀ G0 go through py4DSTEM's own path (joined BraggVectors, origin
fit, StrainMap basis choice, lattice fit, strain against the median reference), run in its venv
by bench/py4dstem_runner.py exactly as for real scans; F comes back to ~1e-12 both from its fitted
g1/g2 maps and from the four numbers it reports. These tests need ``.venv-py4dstem``; the
region statistics at the end do not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import peers  # noqa: E402

from stemstrain.io import make_4d_dataset, strain_map_dataset  # noqa: E402
from stemstrain.strain import (  # noqa: E402
    deformation_from_strain,
    deformation_gradient,
    reference_lattice,
    strain_from_deformation,
)

needs_py4dstem = pytest.mark.skipif(
    not (peers.PY4DSTEM_VENV / "bin" / "python").exists(),
    reason=f"py4DSTEM venv not found at {peers.PY4DSTEM_VENV} (create it with: {peers.PY4DSTEM_INSTALL})",
)

K_SAMPLING = 0.025  # [1/angstrom per pixel]
PIXELS = 128
SCAN = (6, 9)
ROI = (0, 6, 0, 3)
# Si [110]-like reciprocal basis (columns, our x, y) [1/angstrom], turned off the detector axes
G0 = deformation_from_strain(0, 0, 0, 0.3) @ np.array([[0.2604, 0.2604], [0.1841, -0.1841]])


def _deformation_field() -> np.ndarray:
    """F per scan position: identity in the reference columns, strain up to 2 % and a rotation beyond."""
    ramp = np.clip(np.arange(SCAN[1]) - (ROI[3] - 1), 0, None) / (SCAN[1] - ROI[3])
    ramp = np.broadcast_to(ramp, SCAN) * (1 + 0.1 * np.arange(SCAN[0]))[:, None]
    return deformation_from_strain(0.02 * ramp, -0.01 * ramp, 0.006 * ramp, 0.008 * ramp)


def _write_synthetic_peaks(work: Path, deformation: np.ndarray) -> list[Path]:
    """Peaks at origin + h g1 + k g2 of G = F⁻ᵀ G0 in py4DSTEM's pixel axes (qx = row), two slabs."""
    lattice = np.swapaxes(np.linalg.inv(deformation), -1, -2) @ G0 / K_SAMPLING  # [px], our (x, y)
    h, k = (v.ravel() for v in np.meshgrid(np.arange(-3, 4), np.arange(-3, 4)))
    weights = np.where((h == 0) & (k == 0), 1.0, 0.2 + 0.05 * np.abs(h - k))
    rows = {"qx": [], "qy": [], "intensity": [], "counts": []}
    for ry in range(SCAN[0]):
        for rx in range(SCAN[1]):
            origin = (64.3 + 0.05 * ry, 63.8 - 0.03 * rx)  # (row, column), a plane as the fit assumes
            x = origin[1] + h * lattice[ry, rx, 0, 0] + k * lattice[ry, rx, 0, 1]
            y = origin[0] + h * lattice[ry, rx, 1, 0] + k * lattice[ry, rx, 1, 1]
            inside = (x > 5) & (x < PIXELS - 5) & (y > 5) & (y < PIXELS - 5)
            rows["qx"].append(y[inside])
            rows["qy"].append(x[inside])
            rows["intensity"].append(weights[inside])
            rows["counts"].append(int(inside.sum()))
    counts = np.array(rows["counts"]).reshape(SCAN)
    files, start = [], 0
    for i, (y0, y1) in enumerate([(0, 2), (2, SCAN[0])]):
        n = int(counts[y0:y1].sum())
        path = work / f"peaks_{i}.npz"
        np.savez(
            path,
            rows=np.array([y0, y1]),
            counts=counts[y0:y1],
            **{name: np.concatenate(rows[name])[start : start + n] for name in ("qx", "qy", "intensity")},
        )
        files.append(path)
        start += n
    return files


def _disk(centre: tuple[float, float], radius: float, shape=(PIXELS, PIXELS)) -> np.ndarray:
    """A uniform disk with antialiased edge (1 px), centred at (row, column) [px]."""
    r = np.hypot(*np.meshgrid(np.arange(shape[0]) - centre[0], np.arange(shape[1]) - centre[1], indexing="ij"))
    return np.clip(radius + 0.5 - r, 0.0, 1.0)


@needs_py4dstem
def test_synthetic_bragg_vectors_give_back_the_deformation(tmp_path):
    truth = _deformation_field()
    peak_files = _write_synthetic_peaks(tmp_path, truth)
    params = {
        "k_sampling": K_SAMPLING,
        "scan_step_nm": 0.5,
        "reference_roi": list(ROI),
        "scan_shape": list(SCAN),
        "detector_shape": [PIXELS, PIXELS],
    }
    (tmp_path / "params.json").write_text(json.dumps(params))
    np.save(tmp_path / "probe.npy", _disk((64.0, 64.0), 3.0))
    out = tmp_path / "result.npz"
    run = subprocess.run(
        [
            str(peers.py4dstem_python()),
            str(peers.RUNNER),
            "strain",
            str(tmp_path),
            "--peaks",
            *map(str, peak_files),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    fitted = dict(np.load(out))
    assert fitted["mask"].all()

    # from its fitted g1/g2 maps against their median over the reference region
    lattice = peers.lattice_from_py4dstem(fitted["g1x"], fitted["g1y"], fitted["g2x"], fitted["g2y"])
    from_lattice = deformation_gradient(lattice, reference_lattice(lattice, ROI))
    np.testing.assert_allclose(from_lattice, truth, rtol=0, atol=1e-12)

    # from the four numbers it reports: β rebuilt, T = P β P, F = T⁻ᵀ
    beta = peers.py4dstem_transformation(*(fitted[f"strain_{c}"] for c in ("e_xx", "e_yy", "e_xy", "theta")))
    np.testing.assert_allclose(peers.deformation_from_py4dstem(beta), truth, rtol=0, atol=1e-12)

    # without the axis swap, e_xx and e_yy come out wrong by the strain itself
    unswapped = np.swapaxes(np.linalg.inv(beta), -1, -2)
    assert np.abs(unswapped[..., 0, 0] - truth[..., 0, 0]).max() > 0.01


def test_pure_strain_along_x_is_py4dstem_e_yy():
    """A hand-made case: 1 % stretch along our x is py4DSTEM's e_yy (its y is our x)."""
    beta = peers.py4dstem_transformation(0.0, 1 - 1 / 1.01, 0.0, 0.0)
    np.testing.assert_allclose(peers.deformation_from_py4dstem(beta), [[1.01, 0.0], [0.0, 1.0]], atol=1e-15)
    # a counter-clockwise rotation by 0.01 rad in our (x, y) is R(-0.01) in py4DSTEM's swapped axes
    c, s = np.cos(0.01), np.sin(0.01)
    rotation = peers.deformation_from_py4dstem(peers.py4dstem_transformation(1 - c, 1 - c, 0.0, s))
    components = strain_from_deformation(rotation)
    assert components["theta"] == pytest.approx(0.01, abs=1e-15)
    assert max(abs(components[name]) for name in ("e_xx", "e_yy", "e_xy")) < 1e-15


@needs_py4dstem
def test_run_py4dstem_on_a_scan_of_disks_one_and_two_processes(tmp_path):
    """Plumbing end to end: our store in, our contract out, same result for 1 and 2 processes."""
    truth = _deformation_field()
    lattice = np.swapaxes(np.linalg.inv(truth), -1, -2) @ G0 / K_SAMPLING
    h, k = (v.ravel() for v in np.meshgrid(np.arange(-4, 5), np.arange(-4, 5)))
    data = np.zeros((*SCAN, PIXELS, PIXELS), np.float32)
    for ry in range(SCAN[0]):
        for rx in range(SCAN[1]):
            for hi, ki in zip(h, k, strict=True):
                x = 64 + hi * lattice[ry, rx, 0, 0] + ki * lattice[ry, rx, 0, 1]
                y = 64 + hi * lattice[ry, rx, 1, 0] + ki * lattice[ry, rx, 1, 1]
                if 4 < x < PIXELS - 4 and 4 < y < PIXELS - 4:
                    data[ry, rx] += (1.0 if hi == ki == 0 else 0.3) * _disk((y, x), 2.5)
    scan = make_4d_dataset(data, 0.5, K_SAMPLING, 200e3, 1.5, _disk((64.0, 64.0), 2.5), reference_roi=list(ROI))
    scan.chunk({"scan_y": 3, "scan_x": 9}).to_zarr(tmp_path / "scan.zarr")
    one = peers.run_py4dstem(tmp_path / "scan.zarr", tmp_path / "one.zarr", processes=1)
    two = peers.run_py4dstem(tmp_path / "scan.zarr", tmp_path / "two.zarr", processes=2)
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["valid_fraction"] == 1.0 and one["convention_max_abs_diff"] < 1e-12
    a, b = xr.open_zarr(tmp_path / "one.zarr").load(), xr.open_zarr(tmp_path / "two.zarr").load()
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert a.attrs["method"] == "py4dstem" and a["mask"].dtype == bool
    expected = {"e_xx": 0.02, "e_yy": -0.01, "e_xy": 0.006, "theta": 0.008}
    ramp = np.clip(np.arange(SCAN[1]) - (ROI[3] - 1), 0, None) / (SCAN[1] - ROI[3])
    for name, amplitude in expected.items():
        want = np.broadcast_to(ramp, SCAN) * (1 + 0.1 * np.arange(SCAN[0]))[:, None] * amplitude
        # pixel-rendered disks: sub-pixel bias of ~0.03 px on 15 px vectors; a swap of e_xx/e_yy errs by 0.03
        np.testing.assert_allclose(a[name].values, want, atol=2.5e-3, err_msg=name)


def test_region_spread_counts_valid_positions_and_spread(tmp_path):
    rng = np.random.default_rng(0)
    shape = (10, 12)
    components = {c: rng.normal(0.001, 0.002, shape) for c in ("e_xx", "e_yy", "e_xy", "theta")}
    mask = np.ones(shape, bool)
    mask[2, :6] = False
    components["e_xx"][3, 3] = np.nan
    ds = strain_map_dataset(components, np.arange(10) * 1.0, np.arange(12) * 1.0, mask=mask, method="test")
    ds.to_zarr(tmp_path / "s.zarr")
    stats = peers.region_spread(tmp_path / "s.zarr", (2, 8), (0, 6))
    valid = mask[2:8, :6] & np.isfinite(components["e_xx"][2:8, :6])
    assert stats["positions"] == 36 and stats["valid"] == int(valid.sum()) == 29
    assert stats["valid_fraction"] == pytest.approx(29 / 36)
    values = components["e_yy"][2:8, :6][valid]
    assert stats["e_yy"]["std"] == pytest.approx(np.std(values))
    p16, p84 = np.percentile(values, [16, 84])
    assert stats["e_yy"]["half_width_16_84"] == pytest.approx((p84 - p16) / 2)


def test_degenerate_and_failed_fits_are_masked_not_fatal():
    """py4DSTEM calls a fit valid with g2 = 0 when all indexed peaks lie on one row: masked, counted."""
    shape = (3, 4)
    ramp = np.broadcast_to(np.arange(4) * 0.003, shape)  # zero in the reference column 0
    truth = deformation_from_strain(ramp, -ramp / 2, ramp / 3, ramp / 4)
    g_ours = np.swapaxes(np.linalg.inv(truth), -1, -2) @ G0 / K_SAMPLING  # [px], columns g1 g2, rows x y
    fitted = {
        "g1x": g_ours[..., 1, 0].copy(),  # py4DSTEM's qx is our y
        "g1y": g_ours[..., 0, 0].copy(),
        "g2x": g_ours[..., 1, 1].copy(),
        "g2y": g_ours[..., 0, 1].copy(),
        "mask": np.ones(shape),
        "error": np.full(shape, 0.1),
        "n_indexed": np.full(shape, 20),
        "basis_g0g1g2": np.zeros((3, 2)),
        "origin_fit": np.zeros((2, *shape)),
        "probe_radius_px": 2.0,
    }
    fitted["g2x"][1, 2] = fitted["g2y"][1, 2] = 0.0  # degenerate, yet valid for py4DSTEM
    for name in ("g1x", "g1y", "g2x", "g2y"):
        fitted[name][2, 3] = 0.0  # a failed fit: py4DSTEM leaves zeros and mask 0
    fitted["mask"][2, 3] = 0
    g = np.stack([np.stack([fitted["g1x"], fitted["g2x"]], -1), np.stack([fitted["g1y"], fitted["g2y"]], -1)], -2)
    beta = g @ np.linalg.inv(np.median(g[:, :1], axis=(0, 1)))  # py4DSTEM's β against reference column 0
    fitted |= {
        "strain_e_xx": 1 - beta[..., 0, 0],
        "strain_e_yy": 1 - beta[..., 1, 1],
        "strain_e_xy": -(beta[..., 0, 1] + beta[..., 1, 0]) / 2,
        "strain_theta": (beta[..., 0, 1] - beta[..., 1, 0]) / 2,
    }
    scan = xr.Dataset(coords={"scan_y": np.arange(3.0), "scan_x": np.arange(4.0)})
    summary, strain = peers.py4dstem_strain(fitted, scan, (0, 3, 0, 1), K_SAMPLING)
    expected_mask = np.ones(shape, bool)
    expected_mask[1, 2] = expected_mask[2, 3] = False
    np.testing.assert_array_equal(strain["mask"].values, expected_mask)
    assert summary["degenerate_fits"] == 1 and summary["convention_max_abs_diff"] < 1e-12
    np.testing.assert_allclose(strain["e_xx"].values[expected_mask], ramp[expected_mask], atol=1e-12)
    np.testing.assert_allclose(strain["theta"].values[expected_mask], ramp[expected_mask] / 4, atol=1e-12)

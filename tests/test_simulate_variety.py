"""What the training distribution covers beyond one orientation: any in-plane rotation, other optics, larger
boxes for wide probes, thickness jitter, frozen-phonon fraction, stored spots; and held-out scan fields with
an orientation of their own.

Real multislice, tiny sizes (a few nm, a handful of patterns).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from stemstrain.config import parse_config
from stemstrain.lattice import reciprocal_vectors
from stemstrain.simulate import simulate_scan, simulate_training_set
from stemstrain.simulate.crystals import projected_cell
from stemstrain.simulate.dataset import check_simulation, draw_state
from stemstrain.simulate.multislice import SimulationOptics, vacuum_probe
from stemstrain.simulate.scan import strain_field
from stemstrain.strain import deformation_from_strain, rotation_matrix

YY, XX = np.mgrid[0:128, 0:128]


@pytest.mark.parametrize("energy, semiangle, box_scale", [(200e3, 1.5, 1.0), (300e3, 0.7, 1.5), (80e3, 1.2, 2.0)])
def test_wide_probes_get_a_larger_box_and_the_same_calibration(energy, semiangle, box_scale):
    """The smallest box that holds the probe; the pattern stays 128² at 0.025 1/Å, centred and normalised."""
    optics = SimulationOptics(energy_eV=energy, semiangle_mrad=semiangle).fitted()
    assert optics.box_scale == box_scale and optics.holds_probe()
    probe = vacuum_probe(optics)
    assert probe.shape == (128, 128)
    assert 0.97 < probe.sum() <= 1.0 + 1e-5
    centre = [(probe * XX).sum() / probe.sum(), (probe * YY).sum() / probe.sum()]
    np.testing.assert_allclose(centre, [64, 64], atol=1e-3)
    # The disk radius α/λ in pixels of 0.025 1/Å, whatever the box.
    radius = 1e-3 * semiangle / optics.wavelength / 0.025
    inside = probe[(XX - 64) ** 2 + (YY - 64) ** 2 <= (radius + 1.0) ** 2].sum()
    assert inside > 0.95 * probe.sum()


def test_a_larger_box_keeps_the_probe_tails_and_flattens_the_disk():
    """A vacuum disk is flat (a hard aperture); the 1x box cuts the probe's Airy tails and the disk rings.

    At 200 kV and 1.5 mrad (disk radius 2.4 px) the 1x box's centre pixel is ~24 % dimmer than its
    neighbours; simulate.box_scale_min = 2 brings the disk's five central pixels within 3 % of each other.
    """
    config = parse_config({"simulate": {"box_scale_min": 2}})
    optics = check_simulation(config, ["Si_110"])
    assert optics.box_scale == 2.0 and optics.oversampling == 5
    row = {scale: vacuum_probe(dataclasses.replace(optics, box_scale=scale))[64, 62:67] for scale in (1.0, 2.0)}
    flat = row[2.0][1:4]
    assert np.ptp(flat) < 0.03 * flat.mean()
    assert row[1.0][2] < 0.85 * row[1.0][[1, 3]].mean()


VARIED = {
    "crystals": ["Si_110", "Mg_0001", "TiO2_001", "Al_111"],
    "thicknesses_nm": [2.0, 4.0],
    "thickness_jitter": 0.2,
    "orientation": "random",
    "energies_eV": [80e3, 300e3],
    "semiangle_range_mrad": [0.6, 3.0],
    "frozen_phonons": 1,
    "frozen_phonon_fraction": 0.5,
    "n_samples": 4,
    "chunk_size": 4,
    "positions_per_state": 1,
    "seed": 5,
    "cluster": {"kind": "none"},
}


def test_draws_cover_orientation_optics_thickness_and_phonons():
    config = parse_config({"simulate": {**VARIED, "n_samples": 400}})
    rng = np.random.default_rng(0)
    states = [draw_state(rng, config, i) for i in range(400)]
    orientation = np.array([s.orientation for s in states])
    assert orientation.min() < 0.2 and orientation.max() > 2 * np.pi - 0.2
    assert np.histogram(orientation, bins=4, range=(0, 2 * np.pi))[0].min() > 60  # uniform on the circle
    assert {s.optics.energy_eV for s in states} == {80e3, 300e3}
    for s in states:
        disk_diameter = 2e-3 * s.optics.semiangle_mrad / s.optics.wavelength  # [1/angstrom]
        g_min = np.linalg.norm(reciprocal_vectors(projected_cell(s.crystal)), axis=0).min()
        assert 0.6 - 1e-9 <= s.optics.semiangle_mrad <= 3.0 + 1e-9
        assert disk_diameter <= 0.8 * g_min + 1e-9  # disks stay apart
        assert s.optics.holds_probe()
    assert {s.optics.box_scale for s in states} >= {1.0, 1.5, 2.0}
    scale = np.array([s.thicknesses_nm[0] / 2.0 for s in states])
    assert scale.min() < 0.9 and scale.max() > 1.1 and np.all((scale >= 1 / 1.2 - 1e-9) & (scale <= 1.2 + 1e-9))
    assert 0.35 < np.mean([s.frozen_phonons > 0 for s in states]) < 0.65
    # Without the options: the crystal as its cell lies, the configuration's optics, the listed thicknesses.
    plain = parse_config({"simulate": {"crystals": ["Si_110"], "thicknesses_nm": [2.0, 4.0]}})
    state = draw_state(np.random.default_rng(1), plain, 0)
    assert state.orientation == 0.0 and state.frozen_phonons == 0
    assert (state.optics.energy_eV, state.optics.semiangle_mrad, state.optics.box_scale) == (200e3, 1.5, 1.0)
    np.testing.assert_array_equal(state.thicknesses_nm, [2.0, 4.0])


def test_training_set_stores_spots_that_match_the_targets(tmp_path):
    store = simulate_training_set(parse_config({"simulate": VARIED}), tmp_path / "train.zarr")
    ds = xr.open_zarr(store).load()
    assert ds["spots"].dims == ("sample", "spot", "xy") and ds["spot_amplitudes"].dims == ("sample", "spot")
    assert "energy_eV_range" in ds.attrs and "energy_eV" not in ds.attrs
    assert set(np.unique(ds["energy_eV"].values)) <= {80e3, 300e3}
    assert len(np.unique(np.round(ds["orientation_rad"].values, 6))) == 4  # one per strain state
    for i in range(ds.sizes["sample"]):
        spots = ds["spots"].values[i]
        amplitudes = ds["spot_amplitudes"].values[i]
        real = np.isfinite(spots[:, 0])
        assert np.all(real == (amplitudes > 0)) and real.sum() >= 6
        # Target spots are Gaussians of σ = 1 px: the target is near its amplitude at each stored centre.
        inside = real & np.all((spots > 1) & (spots < 126), axis=1)
        row, col = np.rint(spots[inside, 1]).astype(int), np.rint(spots[inside, 0]).astype(int)
        assert np.all(ds["targets"].values[i, row, col] >= 0.6 * amplitudes[inside])
    # The stored spots are the strained lattice of the crystal at its orientation, G = F^-T G0 with
    # F = R(θ)(I + ε) R(orientation); only the detector's ellipticity (≤ 0.5 %) is left over.
    first = ds.isel(sample=0)
    deformation = deformation_from_strain(*first["strain"].values) @ rotation_matrix(float(first["orientation_rad"]))
    lattice = np.linalg.inv(deformation).T @ reciprocal_vectors(projected_cell("Si_110"))
    spots = first["spots"].values
    spots_k = (spots[np.isfinite(spots[:, 0])] - 64 - first["shift_px"].values) * 0.025
    hk = np.linalg.solve(lattice, spots_k.T).T
    np.testing.assert_allclose(hk, np.rint(hk), atol=0.05)


def test_a_strain_series_shares_crystal_and_microscope_and_changes_the_strain():
    """strain_series 2: states 0-1 and 2-3 are one crystal at one orientation, mistilt, optics and thickness."""
    from stemstrain.simulate.dataset import simulate_chunk

    config = parse_config(
        {"simulate": {**VARIED, "strain_series": 2, "chunk_size": 8, "strain_max": 0.03, "tilt_max_mrad": 2.0}}
    )
    chunk = simulate_chunk(config, 0)  # 4 states x 2 thicknesses, real multislice
    shared = ("orientation_rad", "energy_eV", "semiangle_mrad", "thickness_nm", "frozen_phonons", "tilt_mrad")
    for first in (0, 4):  # the two thicknesses of state 0 (2) against those of state 1 (3)
        for name in shared:
            np.testing.assert_array_equal(chunk[name][first : first + 2], chunk[name][first + 2 : first + 4], name)
        assert np.abs(chunk["strain"][first] - chunk["strain"][first + 2]).max() > 1e-3
        assert not np.array_equal(chunk["inputs"][first], chunk["inputs"][first + 2])
    assert chunk["orientation_rad"][0] != chunk["orientation_rad"][4]  # the next series draws anew
    with pytest.raises(ValueError, match="strain_series"):
        parse_config({"simulate": {**VARIED, "strain_series": 3, "n_samples": 6}})  # 2 states per chunk


def test_composite_field_has_a_shape_per_component_and_vanishes_in_the_reference():
    roi = (0, 8, 0, 3)
    field = strain_field("composite", (8, 10), roi, 0.02)
    for name, values in field.items():
        assert np.all(values[:, :3] == 0), name
    assert np.isclose(np.abs(field["e_xx"]).max(), 0.02)  # the ramp reaches the amplitude
    shapes = np.stack([v.ravel() / np.abs(v).max() for v in field.values()])
    assert np.linalg.matrix_rank(shapes, tol=1e-6) == 4  # four different shapes, not one
    assert field["e_xy"][0].max() > 0 > field["e_xy"][-1].min()  # the shear changes sign along y


def test_rotated_scan_recovers_its_strain_with_bragg(tmp_path):
    """A crystal turned 37° in-plane under a composite 2 % field: the truth is relative to the turned
    crystal, and template-matched Bragg disks recover it within 2e-3 (real multislice, 10 nm, 1e6 e-)."""
    config = parse_config(
        {
            "simulate": {"cluster": {"kind": "none"}},
            "scans": [
                {
                    "name": "rotated",
                    "crystal": "Si_110",
                    "thickness_nm": 10,
                    "dose": 1e6,
                    "field": "composite",
                    "amplitude": 0.02,
                    "scan_shape": [4, 6],
                    "reference_roi": [0, 4, 0, 2],
                    "orientation_deg": 37.0,
                }
            ],
        }
    )
    scan, truth = simulate_scan(config, config.scans[0], tmp_path / "scan.zarr", tmp_path / "truth.zarr")
    reference = rotation_matrix(np.radians(37.0)) @ reciprocal_vectors(projected_cell("Si_110"))
    attrs = xr.open_zarr(truth).attrs
    np.testing.assert_allclose(np.stack([attrs["g1"], attrs["g2"]], axis=-1), reference, atol=1e-12)
    assert xr.open_zarr(scan).attrs["orientation_deg"] == 37.0
    strained = np.ones((4, 6), bool)
    strained[:, :2] = False
    expected = xr.open_zarr(truth)
    for options in ([], ["--static-offsets"]):  # the second takes the reference's reflection offsets off
        out = tmp_path / f"bragg{len(options)}.zarr"
        command = [sys.executable, "-m", "stemstrain.cli", "strain", str(scan), str(out), "--method", "bragg"]
        subprocess.run(command + options, check=True, capture_output=True)
        predicted = xr.open_zarr(out)
        assert predicted["mask"].values.all()
        calibration = np.asarray(predicted.attrs["reflection_calibration"]).reshape(-1, 5)  # (h, k, dx, dy, factor)
        assert bool(np.any(calibration[:, 2:4] != 0)) == bool(options)
        for name in ("e_xx", "e_yy", "e_xy", "theta"):
            error = predicted[name].values[strained] - expected[name].values[strained]
            assert np.sqrt(np.mean(error**2)) < 2e-3, (options, name)

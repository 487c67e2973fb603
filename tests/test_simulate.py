"""Simulation: real abTEM multislice patterns against their kinematic targets, strain, contracts, resume.

Sizes are tiny (a few nm thick, a handful of patterns) so that the whole file runs in well under a
minute on 2 cores; the physics asserted is the one the network learns from.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import xarray as xr

from stemstrain.config import parse_config
from stemstrain.errors import StemstrainInputError
from stemstrain.io import open_4d, open_strain_map
from stemstrain.lattice import reciprocal_vectors
from stemstrain.simulate import simulate_scan, simulate_training_set
from stemstrain.simulate.crystals import CRYSTALS, crystal_unit, projected_cell
from stemstrain.simulate.multislice import SimulationOptics, probe_positions_in_cell, simulate_patterns, vacuum_probe
from stemstrain.simulate.noise import PatternNoise, apply_noise, distort_points
from stemstrain.simulate.scan import clean_scan_patterns, strain_field
from stemstrain.simulate.targets import kinematic_spots, pixels_from_k, spot_weights, target_image
from stemstrain.strain import deformation_from_strain, strain_from_lattice

OPTICS = SimulationOptics()
K_MAX = (OPTICS.pixels // 2 - 1) * OPTICS.k_sampling
YY, XX = np.mgrid[0 : OPTICS.pixels, 0 : OPTICS.pixels]


def disk_centres(pattern: np.ndarray, spots_px: np.ndarray, radius: float = 4.0) -> np.ndarray:
    """Centre of mass (x, y) [px] of the intensity within ``radius`` of each expected spot."""
    centres = []
    for x, y in spots_px:
        window = pattern * (((XX - x) ** 2 + (YY - y) ** 2) <= radius**2)
        centres.append([(window * XX).sum() / window.sum(), (window * YY).sum() / window.sum()])
    return np.array(centres)


def strong_spots(crystal: str, deformation: np.ndarray, min_weight: float = 0.3, margin_px: float = 6.0):
    """Target spots (px), their weights and indices, away from the detector edge."""
    g_xy, intensity, hk = kinematic_spots(crystal, deformation, K_MAX, OPTICS.energy_eV)
    weights = spot_weights(intensity, g_xy)
    px = pixels_from_k(g_xy, OPTICS.pixels, OPTICS.k_sampling)
    keep = (weights >= min_weight) & np.all((px > margin_px) & (px < OPTICS.pixels - 1 - margin_px), axis=1)
    return px[keep], weights[keep], hk[keep]


@pytest.fixture(scope="module")
def patterns():
    """Clean patterns (5 nm) of every crystal, unstrained and strained, at one probe position each."""
    strain = (0.02, -0.01, 0.005, 0.01)
    result = {}
    for crystal in CRYSTALS:
        for label, components in (("reference", (0, 0, 0, 0)), ("strained", strain)):
            deformation = deformation_from_strain(*components)
            position = probe_positions_in_cell(crystal, deformation, np.array([[0.3, 0.6]]), OPTICS.box)
            clean, _ = simulate_patterns(crystal, deformation, [5.0], position, OPTICS)
            result[crystal, label] = (clean[0, 0], deformation)
    return result


def test_projected_cells_are_lattices_of_the_structure():
    """Every atom moved by a projected basis vector lands on an atom of the same element (in projection)."""
    for name in CRYSTALS:
        unit = crystal_unit(name)
        cell = np.diag(unit.cell.lengths()[:2])
        xy, symbols = unit.positions[:, :2], np.array(unit.get_chemical_symbols())
        for vector in projected_cell(name).T:
            moved = xy + vector
            fractional = np.linalg.solve(cell, (moved[:, None, :] - xy[None, :, :]).reshape(-1, 2).T).T
            distance = np.abs(fractional - np.rint(fractional)).max(axis=1).reshape(len(xy), len(xy))
            same = symbols[:, None] == symbols[None, :]
            assert np.all(np.any((distance < 1e-9) & same, axis=1)), name


def test_vacuum_probe_is_centred_and_normalised():
    probe = vacuum_probe(OPTICS)
    assert probe.shape == (128, 128)
    assert 0.97 < probe.sum() <= 1.0 + 1e-6
    centre = [(probe * XX).sum() / probe.sum(), (probe * YY).sum() / probe.sum()]
    np.testing.assert_allclose(centre, [64, 64], atol=1e-3)
    # Disk radius: α/λ = 1.5 mrad / 0.0251 Å = 0.0598 1/Å = 2.39 px; nothing leaks beyond 4 px.
    outside = probe[(XX - 64) ** 2 + (YY - 64) ** 2 > 4**2].sum()
    assert outside < 0.01 * probe.sum()


@pytest.mark.parametrize("crystal", sorted(CRYSTALS))
def test_disk_centres_lie_on_target_spots(patterns, crystal):
    """Centre of mass of each Bragg disk within 0.5 px (median) of its target spot, unstrained and strained."""
    for label in ("reference", "strained"):
        pattern, deformation = patterns[crystal, label]
        spots, _, _ = strong_spots(crystal, deformation)
        assert len(spots) >= 8
        errors = np.linalg.norm(disk_centres(pattern, spots) - spots, axis=1)
        assert np.median(errors) < 0.5, (crystal, label, np.median(errors))
        assert np.percentile(errors, 90) < 1.0, (crystal, label, errors)
        # The target image is the spot mask: peaks exactly where the spots are, zero far from them.
        _, weights, _ = strong_spots(crystal, deformation)
        target = target_image(spots, weights, OPTICS.pixels)
        assert target[np.rint(spots[:, 1]).astype(int), np.rint(spots[:, 0]).astype(int)].min() > 0.3 * weights.min()
        far = np.min((XX[..., None] - spots[:, 0]) ** 2 + (YY[..., None] - spots[:, 1]) ** 2, axis=-1) > 3.5**2
        assert np.all(target[far] == 0)


@pytest.mark.parametrize("crystal", sorted(CRYSTALS))
def test_strained_spots_move_as_deformation_predicts(patterns, crystal):
    """Spot displacements follow G = F^-T G0 and a lattice fit to them returns the imposed strain."""
    reference, _ = patterns[crystal, "reference"]
    strained, deformation = patterns[crystal, "strained"]
    spots0, _, hk = strong_spots(crystal, np.eye(2), min_weight=0.1)
    spots1 = pixels_from_k(
        hk @ (np.linalg.inv(deformation).T @ reciprocal_vectors(projected_cell(crystal))).T,
        OPTICS.pixels,
        OPTICS.k_sampling,
    )
    inside = np.all((spots1 > 6) & (spots1 < OPTICS.pixels - 7), axis=1)
    spots0, spots1, hk = spots0[inside], spots1[inside], hk[inside]
    # Disk centres, measured around the positions each pattern should have: the dynamical offset cancels.
    measured_shift = disk_centres(strained, spots1) - disk_centres(reference, spots0)
    predicted_shift = spots1 - spots0
    assert np.abs(predicted_shift).max() > 1.0  # the strain moves outer spots by pixels
    assert np.median(np.linalg.norm(measured_shift - predicted_shift, axis=1)) < 0.25
    # Least-squares reciprocal lattice of each pattern, then strain in the DESIGN.md convention.
    k_measured = [(disk_centres(p, s) - 64) * OPTICS.k_sampling for p, s in ((reference, spots0), (strained, spots1))]
    lattices = [np.linalg.lstsq(hk.astype(float), k, rcond=None)[0].T for k in k_measured]
    strain = strain_from_lattice(lattices[1], lattices[0])
    imposed = dict(zip(("e_xx", "e_yy", "e_xy", "theta"), (0.02, -0.01, 0.005, 0.01), strict=True))
    for name, value in imposed.items():
        assert abs(float(strain[name]) - value) < 1.5e-3, (crystal, name, float(strain[name]), value)


def test_distortion_moves_pattern_and_target_together(patterns):
    """A descan shift and ellipticity move the disks exactly where distort_points moves the target spots."""
    pattern, deformation = patterns["Au_001", "reference"]
    spots, _, _ = strong_spots("Au_001", deformation, margin_px=10)
    noise = PatternNoise(shift_px=(0.7, -0.4), ellipticity=0.02, ellipse_angle=0.5)
    moved = distort_points(spots, noise, OPTICS.pixels)
    distorted = apply_noise(pattern, noise, OPTICS.k_sampling, np.random.default_rng(0))
    before = disk_centres(pattern, spots) - spots
    after = disk_centres(distorted, moved) - moved
    assert np.abs(moved - spots).max() > 1.0
    assert np.median(np.linalg.norm(after - before, axis=1)) < 0.1


def test_positions_run_in_parts_give_the_patterns_of_one_run(monkeypatch):
    """Positions go through the multislice in parts that keep the exit waves of every frozen phonon and exit
    plane within ``WAVE_BYTES``; the parts give the same patterns as one run (2 frozen phonons, 2 planes)."""
    from stemstrain.simulate import multislice

    optics = SimulationOptics()
    xy = probe_positions_in_cell("Si_110", np.eye(2), np.array([[0.1, 0.2], [0.5, 0.5], [0.8, 0.3]]), optics.box)
    whole, _ = simulate_patterns("Si_110", np.eye(2), [2.0, 4.0], xy, optics, frozen_phonons=2, seed=3)
    monkeypatch.setattr(multislice, "WAVE_BYTES", 1)  # one position at a time
    parts, _ = simulate_patterns("Si_110", np.eye(2), [2.0, 4.0], xy, optics, frozen_phonons=2, seed=3)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-9 * whole.max())


@pytest.mark.parametrize("frozen_phonons", [0, 2])
def test_patterns_are_abtems_crystal_multislice_to_the_bit(frozen_phonons):
    """The transmission functions of a period are computed once, not at each repetition: the patterns are
    those of abTEM's own CrystalPotential multislice (its frozen-phonon ensemble reseeding each member)."""
    import abtem
    import dask

    from stemstrain.simulate.crystals import get_crystal
    from stemstrain.simulate.multislice import diffraction_patterns, exit_plane_periods, strained_box

    deformation = deformation_from_strain(0.01, -0.005, 0.004, 0.02)
    xy = probe_positions_in_cell("Si_110", deformation, np.array([[0.1, 0.2], [0.6, 0.5]]), OPTICS.box)
    ours, _ = simulate_patterns("Si_110", deformation, [2.0, 4.0], xy, OPTICS, frozen_phonons=frozen_phonons, seed=3)

    spec = get_crystal("Si_110")
    periods = exit_plane_periods("Si_110", [2.0, 4.0])
    atoms = strained_box("Si_110", deformation, OPTICS.box)
    if frozen_phonons:
        atoms = abtem.FrozenPhonons(atoms, num_configs=int(periods.max()), sigmas=dict(spec.rms_displacement), seed=3)
    unit = abtem.Potential(
        atoms, gpts=OPTICS.gpts, slice_thickness=spec.period / spec.slices_per_period, projection="infinite"
    )
    seeds = tuple(int(s) for s in np.random.default_rng(3).integers(0, 2**31, frozen_phonons)) or None
    potential = abtem.CrystalPotential(
        unit,
        repetitions=(1, 1, int(periods.max())),
        exit_planes=tuple(int(p) * spec.slices_per_period - 1 for p in periods),
        num_frozen_phonons=frozen_phonons or None,
        seeds=seeds,
        ensemble_mean=False,
    )
    probe = abtem.Probe(energy=OPTICS.energy_eV, semiangle_cutoff=OPTICS.semiangle_mrad, gpts=OPTICS.gpts)
    probe.grid.match(potential)
    with dask.config.set(scheduler="synchronous"):
        waves = probe.multislice(potential, scan=abtem.CustomScan(xy), lazy=False).array
    waves = waves.reshape(-1, len(periods), len(xy), OPTICS.gpts, OPTICS.gpts)
    reference = np.swapaxes(diffraction_patterns(waves, OPTICS).mean(axis=0), 0, 1)
    np.testing.assert_array_equal(ours, reference)


def test_counting_noise_has_the_dose():
    pattern = vacuum_probe(OPTICS)
    counts = apply_noise(pattern, PatternNoise(dose=1e5), OPTICS.k_sampling, np.random.default_rng(1))
    assert counts.dtype == np.float32 and np.all(counts == np.rint(counts))
    assert abs(counts.sum() - 1e5 * pattern.sum()) < 5 * np.sqrt(1e5)


TINY = {
    "crystals": ["Si_110", "Au_001"],
    "thicknesses_nm": [2.0, 4.0],
    "n_samples": 5,
    "chunk_size": 4,
    "positions_per_state": 1,
    "seed": 3,
    "cluster": {"kind": "none"},
}


def tiny_config(**changes):
    return parse_config({"simulate": {**TINY, **changes}})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return simulate_training_set(tiny_config(), tmp_path_factory.mktemp("train") / "train.zarr")


def test_training_set_contract(uninterrupted):
    ds = xr.open_zarr(uninterrupted)
    n = 5 * 2
    assert ds["inputs"].dims == ("sample", "k_y", "k_x") and ds["inputs"].shape == (n, 128, 128)
    assert ds["targets"].shape == (n, 128, 128)
    assert ds["inputs"].dtype == np.float32 and ds["targets"].dtype == np.float32
    assert ds["strain"].dims == ("sample", "component")
    assert list(ds["component"].values) == ["e_xx", "e_yy", "e_xy", "theta"]
    np.testing.assert_allclose(ds["k_x"].values, (np.arange(128) - 64) * 0.025)
    assert ds["k_y"].attrs["units"] == "1/angstrom"
    assert list(ds["material"].values[:4]) == ["Si_110", "Si_110", "Au_001", "Au_001"]
    np.testing.assert_allclose(ds["thickness_nm"].values[:2], [2.0, 4.0], atol=0.25)
    strain = ds["strain"].values
    assert np.abs(strain[:, :3]).max() <= 0.03 and np.abs(strain[:, 3]).max() <= 0.03
    assert len(np.unique(strain[:, 0])) == 5  # one strain state per pair of thicknesses
    dose = ds["dose"].values
    assert np.all((dose >= 1e4) & (dose <= 1e7))
    inputs, targets = ds["inputs"].values, ds["targets"].values
    assert np.all(inputs >= 0) and np.all(inputs == np.rint(inputs))
    np.testing.assert_allclose(inputs.sum(axis=(1, 2)) / dose, 1.0, atol=0.1)  # counts ≈ dose (Poisson, background)
    assert np.all(targets >= 0) and targets.max() <= 1.0 + 1e-6
    # The undiffracted beam is a full-weight spot at k = 0, moved by the descan shift like the pattern.
    centre = np.rint(64 + ds["shift_px"].values).astype(int)
    assert np.all(targets[np.arange(n), centre[:, 1], centre[:, 0]] > 0.6)
    assert np.all(targets[np.arange(n), 64, 64 + 12] == 0)  # between spots: no target


def _chunk_files(store, variable, chunk):
    return sorted((store / variable / "c").glob(f"{chunk}/**/*")) + sorted((store / variable / "c").glob(f"{chunk}"))


def test_deleted_chunk_is_recreated_alone_and_store_equals_uninterrupted(uninterrupted, tmp_path, caplog):
    resumed = tmp_path / "train.zarr"
    shutil.copytree(uninterrupted, resumed.with_name("train.zarr.partial"))
    # An interrupted run: chunks 0 and 2 finished (markers), chunk 1 lost its data and marker.
    markers = resumed.with_name("train.zarr.partial.done")
    markers.mkdir()
    (markers / "chunk-0").touch()
    (markers / "chunk-2").touch()
    partial = resumed.with_name("train.zarr.partial")
    for variable in ("inputs", "targets", "strain"):
        removed = [p for p in (partial / variable / "c").iterdir() if p.name == "1"]
        assert removed
        for path in removed:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    untouched = (partial / "inputs" / "c" / "0").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="stemstrain"):
        simulate_training_set(tiny_config(), resumed)
    assert "(1 to do)" in caplog.text
    assert not partial.exists() and not markers.exists()
    assert (resumed / "inputs" / "c" / "0").stat().st_mtime_ns == untouched
    a, b = xr.open_zarr(uninterrupted).load(), xr.open_zarr(resumed).load()
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_a_complete_set_is_not_simulated_again(uninterrupted, tmp_path, caplog):
    """Rerunning a finished simulation does nothing; other settings are refused, naming what differs."""
    done = tmp_path / "train.zarr"
    shutil.copytree(uninterrupted, done)
    written = (done / "inputs" / "c" / "0").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="stemstrain"):
        # where it runs does not count: the same set on a dask cluster
        assert simulate_training_set(tiny_config(cluster={"kind": "local", "workers": 2}), done) == done
    assert "nothing to do" in caplog.text and not done.with_name("train.zarr.partial").exists()
    assert (done / "inputs" / "c" / "0").stat().st_mtime_ns == written
    with pytest.raises(StemstrainInputError, match=r"differ in .*simulate\.seed\).*--fresh"):
        simulate_training_set(tiny_config(seed=4), done)
    assert (done / "inputs" / "c" / "0").stat().st_mtime_ns == written


def test_a_complete_set_grows_when_n_samples_is_raised(uninterrupted, tmp_path, caplog):
    """A finished 3-state set raised to 5 states keeps its whole chunk and equals the 5-state set."""
    out = tmp_path / "train.zarr"
    simulate_training_set(tiny_config(n_samples=3), out)  # chunks: states (0, 1) and a short (2,)
    kept = _chunk_files(out, "inputs", 0)
    kept = {path.relative_to(out): path.read_bytes() for path in kept if path.is_file()}
    with caplog.at_level("INFO", logger="stemstrain"):
        assert simulate_training_set(tiny_config(), out) == out
    # chunk 0 is copied; the short chunk 1 gets its second state, chunk 2 is new: 2 to do
    assert "extending" in caplog.text and "(2 to do)" in caplog.text
    assert not out.with_name("train.zarr.partial").exists()
    assert kept and all((out / name).read_bytes() == data for name, data in kept.items())
    a, b = xr.open_zarr(uninterrupted).load(), xr.open_zarr(out).load()
    assert b.sizes["sample"] == 10
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    # a smaller set is not cut out of a larger one
    with pytest.raises(StemstrainInputError, match=r"differ in simulate\.n_samples.*larger simulate\.n_samples"):
        simulate_training_set(tiny_config(n_samples=4), out)


def test_local_dask_cluster_gives_the_same_store(uninterrupted, tmp_path):
    """A LocalCluster gives the in-process store, and leaves this process's environment as it was."""
    config = tiny_config(cluster={"kind": "local", "workers": 2})
    environ = dict(os.environ)
    out = simulate_training_set(config, tmp_path / "train.zarr")
    assert dict(os.environ) == environ  # distributed sets OMP_NUM_THREADS=1 here for its workers
    a, b = xr.open_zarr(uninterrupted).load(), xr.open_zarr(out).load()
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_bad_configuration_gives_clear_errors(tmp_path):
    with pytest.raises(StemstrainInputError, match="unknown crystal 'Ge_110'"):
        simulate_training_set(tiny_config(crystals=["Si_110", "Ge_110"]), tmp_path / "a.zarr")
    with pytest.raises(StemstrainInputError, match="thicknesses_nm"):
        tiny_config(thicknesses_nm=[5.0, -2.0])
    with pytest.raises(StemstrainInputError, match="sampling_angstrom"):
        simulate_training_set(tiny_config(sampling_angstrom=0.4), tmp_path / "b.zarr")
    far_detector = parse_config({"detector": {"pixels": 512}, "simulate": TINY})
    with pytest.raises(StemstrainInputError, match="beyond the simulated range"):
        simulate_training_set(far_detector, tmp_path / "c.zarr")
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("field", ["uniform", "gradient", "bump", "interface"])
def test_strain_fields_vanish_in_the_reference_region(field):
    roi = (0, 8, 0, 3)
    values = strain_field(field, (8, 10), roi, 0.01)
    for component in values.values():
        assert component.shape == (8, 10)
        assert np.all(component[:, :3] == 0)
    assert np.isclose(np.abs(values["e_xx"]).max(), 0.01)


def test_scan_contract_and_truth(tmp_path):
    config = parse_config(
        {
            "simulate": {"cluster": {"kind": "none"}},
            "scans": [
                {
                    "name": "tiny",
                    "crystal": "SrTiO3_001",
                    "thickness_nm": 3.0,
                    "dose": 1e5,
                    "field": "gradient",
                    "amplitude": 0.02,
                    "scan_shape": [2, 4],
                    "step_nm": 0.5,
                    "reference_roi": [0, 2, 0, 1],
                }
            ],
        }
    )
    out, truth = simulate_scan(config, config.scans[0], tmp_path / "scan.zarr", tmp_path / "truth.zarr")
    scan = open_4d(out)
    assert scan["data"].shape == (2, 4, 128, 128)
    assert scan.attrs["reference_roi"] == [0, 2, 0, 1]
    assert scan.attrs["material"] == "SrTiO3_001" and scan.attrs["dose_e_per_pattern"] == 1e5
    assert abs(scan.attrs["thickness_nm"] - 3.0) < 0.2
    assert scan["probe"].dims == ("k_y", "k_x")
    assert abs(float(scan["probe"].sum()) - 1e5) < 0.03 * 1e5
    data = scan["data"].values
    np.testing.assert_allclose(data.sum(axis=(2, 3)), 1e5, rtol=0.05)
    maps = open_strain_map(truth)
    np.testing.assert_allclose(maps["e_xx"].values[0], [0, 0.02 / 3, 0.04 / 3, 0.02])
    assert np.all(maps["mask"].values)
    # The strained column's (1 0) disk sits where the truth's deformation puts it.
    deformation = deformation_from_strain(*(float(maps[c].values[0, 3]) for c in ("e_xx", "e_yy", "e_xy", "theta")))
    spots, _, _ = strong_spots("SrTiO3_001", deformation)
    errors = np.linalg.norm(disk_centres(data[0, 3], spots) - spots, axis=1)
    assert np.median(errors) < 0.5


def test_cached_clean_patterns_are_the_scans_before_noise(tmp_path):
    """Scans differing only in dose share the cached multislice; its patterns are what the counts were drawn from."""
    scan_options = {
        "crystal": "Si_110",
        "thickness_nm": 2.0,
        "field": "uniform",
        "amplitude": 0.01,
        "scan_shape": [1, 3],
        "reference_roi": [0, 1, 0, 1],
        "seed": 3,
    }
    config = parse_config(
        {
            "simulate": {"cluster": {"kind": "none"}},
            "scans": [{"name": "high", "dose": 1e6, **scan_options}, {"name": "low", "dose": 1e4, **scan_options}],
        }
    )
    cache = tmp_path / "cache"
    high, _ = simulate_scan(config, config.scans[0], tmp_path / "high.zarr", tmp_path / "high.truth.zarr", cache=cache)
    (tasks,) = [folder for folder in cache.iterdir() if folder.is_dir()]
    stamps = {path: path.stat().st_mtime_ns for path in tasks.glob("*.npy")}
    low, _ = simulate_scan(config, config.scans[1], tmp_path / "low.zarr", tmp_path / "low.truth.zarr", cache=cache)
    clean = clean_scan_patterns(config, config.scans[1], cache)
    assert {path: path.stat().st_mtime_ns for path in tasks.glob("*.npy")} == stamps  # nothing simulated again
    assert clean.shape == (1, 3, 128, 128) and 0.5 < clean[0, 0].sum() <= 1.0
    for scan, store in zip(config.scans, (high, low), strict=True):
        data = open_4d(store)["data"].values
        for i, pattern in enumerate(clean.reshape(-1, 128, 128)):
            noise = PatternNoise(dose=scan.dose)
            expected = apply_noise(pattern, noise, config.detector.k_sampling, np.random.default_rng([scan.seed, i]))
            np.testing.assert_array_equal(data.reshape(-1, 128, 128)[i], expected)
    # Another draw of the counting noise: the same clean patterns (nothing simulated), its own seed.
    other, _ = simulate_scan(
        config, config.scans[1], tmp_path / "low2.zarr", tmp_path / "low2.truth.zarr", cache=cache, noise_draw=2
    )
    assert {path: path.stat().st_mtime_ns for path in tasks.glob("*.npy")} == stamps
    data, first = open_4d(other)["data"].values, open_4d(low)["data"].values
    assert not np.array_equal(data, first)
    rng = np.random.default_rng([config.scans[1].seed, 0, 2])
    expected = apply_noise(clean[0, 0], PatternNoise(dose=1e4), config.detector.k_sampling, rng)
    np.testing.assert_array_equal(data[0, 0], expected)
    with pytest.raises(StemstrainInputError, match="noise_draw"):
        simulate_scan(config, config.scans[1], tmp_path / "x.zarr", tmp_path / "x.truth.zarr", noise_draw=-1)


@pytest.mark.parametrize("frozen_phonons", [0, 2])
def test_each_position_has_its_own_phonon_draw(tmp_path, frozen_phonons):
    """Two reference positions one cell apart (the same probe site, the same strain state) give the same
    static pattern, and different thermal ones: no two positions share a frozen-phonon draw, so the
    reference lattice does not carry one draw's thermal shift."""
    scan = {
        "name": "pair",
        "crystal": "SrTiO3_001",
        "thickness_nm": 2.0,
        "dose": 1e5,
        "field": "uniform",
        "amplitude": 0.01,
        "scan_shape": [1, 3],
        "step_nm": 0.3905,  # one SrTiO3 cell: positions 0 and 1 sit on the same probe site
        "reference_roi": [0, 1, 0, 2],
        "frozen_phonons": frozen_phonons,
    }
    config = parse_config({"simulate": {"cluster": {"kind": "none"}}, "scans": [scan]})
    clean = clean_scan_patterns(config, config.scans[0], tmp_path / "cache")
    assert np.all(np.isfinite(clean)) and clean[0, 0].sum() > 0.5
    difference = np.abs(clean[0, 0] - clean[0, 1]).max() / clean[0, 0].max()
    if frozen_phonons:
        assert difference > 1e-3
    else:
        assert difference < 1e-5


def test_tiny_training_set_fixture(tiny_training_set):
    ds = xr.open_zarr(tiny_training_set)
    assert ds["inputs"].shape == (24, 128, 128)
    assert set(ds["material"].values) == {"Si_110", "SrTiO3_001", "Au_001"}
    assert np.all((ds["targets"].values > 0).sum(axis=(1, 2)) > 50)  # every sample has spots


def test_precession_and_mistilt_keep_disks_on_the_target_spots():
    """abTEM tilts the specimen against the beam: patterns stay de-scanned, disks stay on their spots."""
    deformation = deformation_from_strain(0.01, 0.0, 0.0, 0.0)
    position = probe_positions_in_cell("Au_001", deformation, np.array([[0.2, 0.4]]), OPTICS.box)
    tilted, _ = simulate_patterns("Au_001", deformation, [3.0], position, OPTICS, tilt_mrad=(3.0, -2.0))
    precessed, _ = simulate_patterns("Au_001", deformation, [3.0], position, OPTICS, precession=(4, 10.0))
    spots, _, _ = strong_spots("Au_001", deformation)
    for pattern in (tilted[0, 0], precessed[0, 0]):
        errors = np.linalg.norm(disk_centres(pattern, spots) - spots, axis=1)
        assert np.median(errors) < 0.5
    # A tilt changes the excitation of the reflections: intensities differ from the on-axis pattern.
    on_axis, _ = simulate_patterns("Au_001", deformation, [3.0], position, OPTICS)
    assert np.abs(tilted - on_axis).sum() > 0.05 * on_axis.sum()


def test_electron_wavelength_is_abtems_and_detection_does_not_import_abtem():
    """One wavelength for detection, ingest and simulation: abTEM's formula and constants to the bit
    (200 kV: 0.02508 Å), without importing abTEM, whose numba kernels cost seconds at every start."""
    import subprocess
    import sys

    from abtem.core.energy import energy2wavelength

    from stemstrain.optics import electron_wavelength

    for energy in (60e3, 80e3, 200e3, 300e3, 1e6):
        assert electron_wavelength(energy) == energy2wavelength(energy)
    assert electron_wavelength(200e3) == pytest.approx(0.025079, abs=1e-6)
    with pytest.raises(ValueError, match="positive"):
        electron_wavelength(0.0)
    code = (
        "import sys; from stemstrain.detect.bragg import disk_radius; from stemstrain.ingest import ingest; "
        "disk_radius(2e5, 1.5); assert 'abtem' not in sys.modules, 'abtem imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

"""The disk-centre correction: learned on real abTEM patterns, turns with the pattern, used by the read-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from stemstrain.config import parse_config
from stemstrain.detect import make_detector
from stemstrain.detect.bragg import disk_radius
from stemstrain.errors import StemstrainInputError
from stemstrain.model import resolve_model
from stemstrain.model.disks import correct_positions, load_disk_corrector, save_disk_corrector
from stemstrain.simulate import simulate_training_set
from stemstrain.strain import deformation_from_strain
from stemstrain.train.disks import fit_disk_corrector, residual_pairs, series_cells


@pytest.fixture(scope="module")
def pairs(tiny_training_set):
    return residual_pairs(str(tiny_training_set))


def test_template_places_thin_crystal_disks_near_their_true_centres(pairs):
    """Si, SrTiO3 and Au at 3-6 nm: little dynamical structure, so the tilted template read-out lands
    the strong disks within a fraction of a pixel of the simulated lattice's spots."""
    strong = pairs["amplitude"] >= 0.5
    distance = pairs["offsets"][strong].norm(dim=1)
    assert strong.sum() > 50
    assert float(distance.median()) < 0.15, float(distance.median())
    assert pairs["patches"].shape == (len(pairs["offsets"]), 169)


def test_fitted_corrector_learns_the_offsets_it_was_shown(pairs):
    """A corrector fitted to the pairs explains part of their offsets: the part that is not counting
    noise (measured: median 0.16 px before, 0.12 px after 40 epochs)."""
    corrector, losses = fit_disk_corrector(pairs, epochs=40, batch_size=64)
    assert losses[-1] < 0.9 * losses[0], losses
    with torch.inference_mode():
        left = (pairs["offsets"] - corrector(pairs["patches"], pairs["scalars"])).norm(dim=1)
    before = pairs["offsets"].norm(dim=1)
    assert float(left.median()) < 0.85 * float(before.median()), (float(left.median()), float(before.median()))


def test_correction_turns_with_the_pattern(tiny_training_set):
    """Turning a real pattern by 90° (np.rot90) turns the shipped corrector's correction of each disk
    with it, nearly: the corrector learnt with random grid symmetries and runs once per disk (on its
    validation set the two differ by 0.03 px, median, against corrections of 0.11 px)."""
    import xarray as xr

    corrector, _ = load_disk_corrector("disks-v1")
    data = xr.open_zarr(tiny_training_set)
    radius = disk_radius(float(data["energy_eV"][0]), float(data["semiangle_mrad"][0])) / data.attrs["k_sampling"]
    size = data.sizes["k_x"]
    pattern = np.asarray(data["inputs"].values[0], dtype=np.float32)
    spots = data["spots"].values[0]
    strong = np.isfinite(spots[:, 0]) & (data["spot_amplitudes"].values[0] > 0.2)
    positions = spots[strong][None].astype(np.float64) + 0.2  # off the centres, as the template leaves them
    inside = (positions > 8).all(-1) & (positions < size - 9).all(-1)
    positions = positions[:, inside[0]]
    moved = correct_positions(corrector, pattern[None], positions, radius, gain=1.0) - positions
    # rot90: B[i, j] = A[j, N-1-i], so (x, y) in A is (y, N-1-x) in B and an offset (dx, dy) is (dy, -dx).
    turned_positions = np.stack([positions[..., 1], size - 1 - positions[..., 0]], axis=-1)
    turned = correct_positions(corrector, np.rot90(pattern)[None].copy(), turned_positions, radius, gain=1.0)
    expected = np.stack([moved[..., 1], -moved[..., 0]], axis=-1)
    difference = np.linalg.norm(turned - turned_positions - expected, axis=-1)
    size_of = np.linalg.norm(moved, axis=-1)
    assert positions.shape[1] >= 6
    # and it moves the disks towards their true centres, 0.28 px away
    after = np.linalg.norm(positions + moved - (positions - 0.2), axis=-1)
    assert np.median(after) < 0.2, np.median(after)
    assert np.median(difference) < 0.5 * np.median(size_of), (np.median(difference), np.median(size_of))


def test_strain_applies_the_correction_file_and_refuses_bad_ones(pairs, uniform_scan, tmp_path):
    """strain's network read-out moves its disks by the file's gain times the correction and records the
    file; the 1 % strain comes back within 2e-3. A file that is not a corrector, or a read-out that cannot
    take one, is refused with the option's name."""
    from stemstrain.evaluate import evaluate_strain
    from stemstrain.io import open_4d, open_strain_map
    from stemstrain.strainmap import describe_readout, strain_map

    corrector, _ = fit_disk_corrector(pairs, epochs=4)
    path = save_disk_corrector(corrector, tmp_path / "disks.pt", {"gain": 0.5})
    loaded, metadata = load_disk_corrector(path)
    assert metadata["gain"] == 0.5
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), corrector.state_dict().values(), strict=True)
    )

    scan_path, truth_path = uniform_scan
    scan = open_4d(scan_path)
    patterns = np.asarray(scan["data"].values, dtype=np.float32).reshape(-1, *scan["data"].shape[2:])
    model = resolve_model(None)
    plain = make_detector("unet", scan, model=model, refine="template")(patterns)[0]
    corrected = make_detector("unet", scan, model=model, disk_correction=path)(patterns)[0]
    moved = np.linalg.norm(corrected - plain, axis=-1) / 0.025  # [px]
    assert np.nanmax(moved) <= 0.5 and np.nanmax(moved) > 0  # gain 0.5 of offsets below 1 px

    out = strain_map(scan_path, tmp_path / "map.zarr", method="unet", detector_options={"disk_correction": str(path)},
                     progress=False)  # fmt: skip
    prediction = open_strain_map(out)
    assert prediction.attrs["readout_disk_correction"] == "disks.pt (gain 0.5)"
    assert describe_readout(prediction.attrs).endswith("disk centres corrected by disks.pt (gain 0.5)")
    scores = evaluate_strain(prediction, open_strain_map(truth_path))
    for name in ("e_xx", "e_yy", "e_xy", "theta"):
        assert scores[name]["rmse"] < 2e-3, (name, scores[name]["rmse"])

    (tmp_path / "other.pt").write_bytes(b"not a torch file")
    with pytest.raises(StemstrainInputError, match="option disk_correction: .*other.pt"):
        make_detector("unet", scan, model=model, disk_correction=tmp_path / "other.pt")
    with pytest.raises(StemstrainInputError, match="disks.pt corrects the template read-out, but refine is 'offsets'"):
        make_detector("unet", scan, model=model, refine="offsets", disk_correction=path)
    narrow = save_disk_corrector(corrector, tmp_path / "narrow.pt", {"gain": 0.5, "radius_px": [3.0, 6.0]})
    with pytest.raises(
        StemstrainInputError, match=r"disks are 2\.\d\d px in radius; narrow.pt learnt from disks of 3.00-6.00"
    ):
        make_detector("unet", scan, model=model, disk_correction=narrow)
    with pytest.raises(StemstrainInputError, match="gain"):
        save_disk_corrector(corrector, tmp_path / "nogain.pt", {})


def test_offsets_corrector_learns_isotropic_jitter_and_follows_the_network(tiny_training_set, uniform_scan, tmp_path):
    """With ``placement="offsets"`` the patches sit at the true centres moved by a Gaussian offset of
    jitter_px per axis (measured spread 0.30 px), and a corrector fitted on them moves the disks back
    towards their centres (on the thin tiny set the median distance falls by more than a quarter). In a
    strain run it corrects the network's own spots (the offsets read-out, which ``auto`` then takes):
    the scan's 1 % strain comes back within 2e-3, and a template read-out is refused for it."""
    from stemstrain.evaluate import evaluate_strain
    from stemstrain.io import open_4d, open_strain_map
    from stemstrain.strainmap import strain_map

    pairs = residual_pairs(str(tiny_training_set), placement="offsets", jitter_px=0.3)
    assert abs(float(pairs["offsets"].std()) - 0.3) < 0.03, float(pairs["offsets"].std())
    assert abs(float(pairs["offsets"].mean())) < 0.03
    strong = pairs["amplitude"] >= 0.5
    corrector, _ = fit_disk_corrector(pairs, epochs=30, batch_size=64)
    with torch.inference_mode():
        left = (pairs["offsets"] - corrector(pairs["patches"], pairs["scalars"]))[strong].norm(dim=1)
    before = pairs["offsets"][strong].norm(dim=1)
    assert float(left.median()) < 0.75 * float(before.median()), (float(left.median()), float(before.median()))

    path = save_disk_corrector(corrector, tmp_path / "offsets.pt", {"gain": 1.0, "readout": "offsets"})
    scan_path, truth_path = uniform_scan
    scan = open_4d(scan_path)
    patterns = np.asarray(scan["data"].values, dtype=np.float32).reshape(-1, *scan["data"].shape[2:])
    model = resolve_model(None)
    plain = make_detector("unet", scan, model=model, refine="offsets", disk_correction=None)(patterns)[0]
    detector = make_detector("unet", scan, model=model, disk_correction=path)
    assert detector.refine == "offsets"
    moved = np.linalg.norm(detector(patterns)[0] - plain, axis=-1) / 0.025  # [px]
    assert 0 < np.nanmax(moved) < 1.5
    out = strain_map(scan_path, tmp_path / "map.zarr", method="unet", detector_options={"disk_correction": str(path)},
                     progress=False)  # fmt: skip
    scores = evaluate_strain(open_strain_map(out), open_strain_map(truth_path))
    for name in ("e_xx", "e_yy", "e_xy", "theta"):
        assert scores[name]["rmse"] < 2e-3, (name, scores[name]["rmse"])
    with pytest.raises(
        StemstrainInputError, match="offsets.pt corrects the offsets read-out, but refine is 'template'"
    ):
        make_detector("unet", scan, model=model, refine="template", disk_correction=path)
    with pytest.raises(StemstrainInputError, match="placement"):
        residual_pairs(str(tiny_training_set), placement="cepstrum")


def test_default_network_read_out_is_corrected_by_the_shipped_offsets_corrector(uniform_scan, tmp_path):
    """At the model's calibration the default read-out (the network's offsets) is corrected by the shipped
    disks-offsets-v1, recorded in the map, and the uniform scan's 1 % strain comes back within 1e-3;
    "none" reads the offsets alone, and a scan resampled to the model (template read-out) is not corrected."""
    from stemstrain.evaluate import evaluate_strain
    from stemstrain.io import open_4d, open_strain_map
    from stemstrain.strainmap import describe_readout, strain_map

    corrector, metadata = load_disk_corrector("disks-offsets-v1")
    assert metadata["readout"] == "offsets" and metadata["gain"] == 1.0 and corrector.width == 8
    scan_path, truth_path = uniform_scan
    scan = open_4d(scan_path)
    model = resolve_model(None)
    assert make_detector("unet", scan, model=model).disk_correction == "disks-offsets-v1 (gain 1)"
    # fp32 (auto on CPUs without native bf16, asked for here so that every CPU tests it): ONNX Runtime runs
    # the corrector, and moves the spots as torch does
    detector = make_detector("unet", scan, model=model, precision="fp32")
    assert detector.refine == "offsets" and detector.disk_correction == "disks-offsets-v1 (gain 1)"
    by_torch = make_detector("unet", scan, model=model, precision="fp32", engine="torch")
    assert detector.engine == "onnxruntime" and by_torch._disk_run is None
    patterns = np.asarray(scan["data"].values[:2], dtype=np.float32).reshape(-1, *scan["data"].shape[2:])
    assert np.allclose(detector(patterns)[0], by_torch(patterns)[0], atol=1e-4 * 0.025, equal_nan=True)
    assert make_detector("unet", scan, model=model, disk_correction="none").disk_correction is None
    coarser = scan.assign_coords(k_y=scan["k_y"] * 1.2, k_x=scan["k_x"] * 1.2)
    resampled = make_detector("unet", coarser, model=model)
    assert resampled.refine == "template" and resampled.disk_correction is None

    out = strain_map(scan_path, tmp_path / "map.zarr", method="unet", progress=False)
    prediction = open_strain_map(out)
    assert describe_readout(prediction.attrs).endswith("disk centres corrected by disks-offsets-v1 (gain 1)")
    scores = evaluate_strain(prediction, open_strain_map(truth_path))
    for name in ("e_xx", "e_yy", "e_xy", "theta"):
        assert scores[name]["rmse"] < 1e-3, (name, scores[name]["rmse"])


def test_series_cells_match_each_reflection_across_a_strain_series(tmp_path, tiny_training_set):
    """A real strain series (2 states of one crystal, orientation, mistilt and optics): each reflection's
    disks at one thickness form one cell, one disk per strain, and the corrector learns on the cells."""
    simulate = {
        "crystals": ["Si_110", "SrTiO3_001"],
        "thicknesses_nm": [3.0, 6.0],
        "n_samples": 8,
        "chunk_size": 8,
        "strain_series": 2,
        "strain_max": 0.04,
        "orientation": "random",
        "tilt_max_mrad": 1.0,
        "seed": 3,
        "cluster": {"kind": "none"},
    }
    store = str(simulate_training_set(parse_config({"simulate": simulate}), tmp_path / "series.zarr"))
    pairs = residual_pairs(store)
    cells = series_cells(store, pairs).numpy()
    sample = pairs["sample"].numpy()
    for cell in np.unique(cells):
        members = sample[cells == cell]
        assert len(set(members)) == len(members) <= 2  # one disk per strain state
        assert len({s // 4 for s in members}) == 1 and len({s % 2 for s in members}) == 1  # one series, thickness
    paired = np.bincount(cells)[cells] == 2
    assert paired.mean() > 0.8, paired.mean()  # most reflections are kept at both strains (measured 0.87)
    # A pair's true centres differ as their strains say, k_b = D_b^-T D_a^T k_a (about k = 0 at pixel 64 less
    # the detector shift; its ellipticity, <= 0.5 %, is left in), while the strain moves them by pixels.
    strain, shift = (xr.open_zarr(store)[name].values for name in ("strain", "shift_px"))
    misses, moves = [], []
    for cell in np.unique(cells[paired]):
        a, b = np.flatnonzero(cells == cell)
        k_a, k_b = (pairs["centre"][i].numpy().astype(float) - 64 - shift[sample[i]] for i in (a, b))
        deform_a, deform_b = (deformation_from_strain(*strain[sample[i]]) for i in (a, b))
        misses.append(np.linalg.norm(np.linalg.inv(deform_b).T @ deform_a.T @ k_a - k_b))
        moves.append(np.linalg.norm(k_a - k_b))
    # Measured: median 0.07 px (at most 0.26) against moves of 1.27 px.
    assert np.max(misses) < 0.5 and np.median(misses) < 0.2 * np.median(moves), (np.median(misses), np.median(moves))
    with pytest.raises(StemstrainInputError, match="no strain series"):
        series_cells(str(tiny_training_set), pairs)
    _, losses = fit_disk_corrector(pairs, epochs=8, batch_size=64, cells=torch.as_tensor(cells))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


@pytest.mark.parametrize("patch", [9, 13])
def test_patch_size_is_the_correctors_own_and_turns_with_the_grid(tiny_training_set, uniform_scan, tmp_path, patch):
    """A corrector file records its patch size: pairs collected with 9 x 9 patches fit a corrector of
    9 x 9 patches, which comes back from its file as it was written and corrects the network's spots
    (in ONNX Runtime where ONNX can take it, else in torch). For either size the grid
    permutation of a 90° turn is the patch of the turned pattern (np.rot90) at the turned positions,
    sample for sample: what the fit's random symmetries rely on."""
    from stemstrain.model.disks import MATRICES, disk_patches, grid_permutations

    pairs = residual_pairs(str(tiny_training_set), samples=slice(0, 6), placement="offsets", patch=patch)
    assert pairs["patches"].shape[1] == patch**2
    corrector, _ = fit_disk_corrector(pairs, epochs=1, batch_size=64, width=4)
    path = save_disk_corrector(corrector, tmp_path / "c.pt", {"gain": 1.0, "readout": "offsets"})
    loaded, metadata = load_disk_corrector(path)
    assert loaded.patch == patch and "patch" not in metadata
    assert loaded.exportable == (patch == 13)  # ONNX Runtime runs it, or torch (9 x 9: 4 -> 3 pooling)
    from stemstrain.io import open_4d

    scan = open_4d(uniform_scan[0])
    # fp32 (auto on CPUs without native bf16): ONNX Runtime where the corrector exports
    detector = make_detector("unet", scan, model=resolve_model(None), disk_correction=path, precision="fp32")
    assert (detector._disk_run is not None) == (patch == 13)
    patterns = np.asarray(scan["data"].values[0, :2], dtype=np.float32)
    assert np.isfinite(detector(patterns)[0]).sum() > 10
    with torch.inference_mode():
        # the loaded one runs channels_last: the same offsets to float rounding
        offsets = loaded(pairs["patches"], pairs["scalars"]), corrector(pairs["patches"], pairs["scalars"])
        assert torch.allclose(*offsets, atol=1e-5)

    data = xr.open_zarr(tiny_training_set)
    pattern = np.asarray(data["inputs"].values[0], dtype=np.float32)
    size = pattern.shape[-1]
    positions = np.array([[[40.3, 52.7], [70.1, 61.4]]])
    turned = np.stack([positions[..., 1], size - 1 - positions[..., 0]], axis=-1)  # rot90's (x, y)
    k = next(i for i, m in enumerate(MATRICES.tolist()) if m == [[0, 1], [-1, 0]])  # (dx, dy) -> (dy, -dx)
    assert np.allclose(MATRICES[k].numpy() @ (positions[0, 1] - positions[0, 0]), turned[0, 1] - turned[0, 0])
    before, _ = disk_patches(pattern[None], positions, 3.0, patch)
    after, _ = disk_patches(np.rot90(pattern)[None].copy(), turned, 3.0, patch)
    assert torch.allclose(after, before[:, grid_permutations(patch)[k]], rtol=1e-4, atol=1e-4)

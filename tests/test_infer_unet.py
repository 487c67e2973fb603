"""The network detector: resampling to the model's calibration, and the full chain on a trained model."""

import numpy as np
import pytest
import xarray as xr

from stemstrain.config import ModelConfig
from stemstrain.detect.network import UNetDetector
from stemstrain.errors import StemstrainInputError
from stemstrain.io import make_4d_dataset
from stemstrain.model import UNet, export_model
from stemstrain.peaks import find_peaks
from stemstrain.simulate.targets import kinematic_spots, spot_weights, target_image
from stemstrain.strainmap import strain_map

ENERGY = 200e3


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """A real (untrained) network with the reference calibration: for geometry, not for accuracy."""
    model = UNet(ModelConfig(base_channels=4, depth=2, norm="none"))
    metadata = {"pixels": 128, "k_sampling": 0.025, "energy_eV": ENERGY, "semiangle_mrad": 1.5}
    metadata |= {"config": {}, "data_hash": "untrained"}
    return export_model(model, tmp_path_factory.mktemp("model") / "model.pt", metadata)


def spots_at(pixels, k_sampling, sigma_px):
    g_xy, intensity, _ = kinematic_spots("Si_110", np.eye(2), 1.5, ENERGY)
    return target_image(g_xy / k_sampling + pixels // 2, spot_weights(intensity, g_xy), pixels, sigma_px)


def scan_at(pixels, k_sampling, sigma_px):
    pattern = spots_at(pixels, k_sampling, sigma_px)
    return make_4d_dataset(np.broadcast_to(pattern, (1, 1, pixels, pixels)), 0.5, k_sampling, ENERGY, 1.5)


def test_finer_and_larger_detector_is_resampled_onto_the_model_grid(untrained_model):
    scan = scan_at(256, 0.0125, 2.0)
    detector = UNetDetector(untrained_model, scan, device="cpu")
    resampled = detector.resample(scan["data"].values[0].copy())[:, 0].numpy()
    assert resampled.shape == (1, 128, 128)
    found, _ = find_peaks(resampled, threshold_rel=0.05, max_peaks=500)
    expected, _ = find_peaks(spots_at(128, 0.025, 1.0)[None], threshold_rel=0.05, max_peaks=500)
    found, expected = found[0][np.isfinite(found[0, :, 0])], expected[0][np.isfinite(expected[0, :, 0])]
    distance = np.linalg.norm(found[:, None] - expected[None], axis=-1)
    assert len(found) == len(expected) >= 20
    assert distance.min(axis=1).max() < 0.05  # [px]


def test_calibration_far_from_the_model_is_refused_unless_overridden(untrained_model):
    scan = scan_at(64, 0.05, 0.5)
    with pytest.raises(StemstrainInputError, match="allow-calibration-mismatch"):
        UNetDetector(untrained_model, scan, device="cpu")
    with pytest.warns(UserWarning, match="never saw"):
        UNetDetector(untrained_model, scan, device="cpu", allow_calibration_mismatch=True)


def test_disk_radius_for_the_counting_noise_comes_from_the_scans_optics(untrained_model):
    # 1.5 mrad at 200 kV: alpha/lambda = 0.0598 1/angstrom, 2.39 px of 0.025 1/angstrom on the model's grid,
    # whatever the scan's own pixel size.
    for pixels, k_sampling in ((128, 0.025), (256, 0.0125)):
        detector = UNetDetector(untrained_model, scan_at(pixels, k_sampling, 1.0), device="cpu")
        assert detector.disk_radius_px == pytest.approx(2.39, abs=0.01)
    without_optics = scan_at(128, 0.025, 1.0)
    without_optics.attrs.pop("semiangle_mrad")
    assert UNetDetector(untrained_model, without_optics, device="cpu").disk_radius_px is None


def test_network_runs_in_fp32_and_bf16_with_the_same_output_shape(untrained_model):
    scan = scan_at(128, 0.025, 1.0)
    patterns = np.repeat(scan["data"].values[0], 3, axis=0)
    fp32 = UNetDetector(untrained_model, scan, device="cpu", batch_size=2).predict(patterns)
    bf16 = UNetDetector(untrained_model, scan, device="cpu", precision="bf16").predict(patterns)
    assert fp32.shape == bf16.shape == (3, 2, 128, 128) and fp32.dtype == np.float32
    scale = np.abs(fp32).max()
    assert np.abs(fp32 - bf16).max() < 0.05 * scale


def test_full_chain_on_the_trained_fixture_model(request, tmp_path):
    """A tiny trained network (TRAIN's ``tiny_model`` fixture) through strain_map: the contract is written."""
    try:
        tiny_model = request.getfixturevalue("tiny_model")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no tiny_model fixture yet")
    from test_infer import REFERENCE, target_scan

    scan = target_scan(tmp_path / "scan.zarr")
    out = strain_map(scan, tmp_path / "strain.zarr", model=tiny_model, device="cpu", precision="bf16", progress=False)
    ds = xr.open_zarr(out)
    assert ds.attrs["method"] == "unet" and len(ds.attrs["model_hash"]) == 16
    assert ds.attrs["reference_roi"] == REFERENCE
    assert ds["mask"].values.any()


def test_the_shipped_model_loads_and_strain_uses_it_by_default(tmp_path, monkeypatch):
    """``models/fast-v1.pt`` is small, loads, says what it was trained on, and is what ``strain`` runs."""
    from test_infer import target_scan

    from stemstrain.detect.network import model_hash
    from stemstrain.model import default_model, load_model

    monkeypatch.delenv("STEMSTRAIN_MODEL", raising=False)
    path = default_model()
    assert path.name == "fast-v1.pt" and path.stat().st_size < 5e6
    _, metadata = load_model(path)
    assert len(metadata["trained_on"]["crystals"]) >= 8
    out = strain_map(target_scan(tmp_path / "scan.zarr"), tmp_path / "strain.zarr", progress=False)
    ds = xr.open_zarr(out)
    assert ds.attrs["method"] == "unet" and ds.attrs["model_hash"] == model_hash(path)
    assert ds["mask"].values.mean() > 0.9
    # the offsets read-out weighs spots by inverse variances: the fit checks them against their scatter
    assert ds.attrs["readout"] == "offsets" and ds.attrs["fit_options"]["scatter_limit"] == 2


def test_data_not_at_the_network_calibration_get_the_camera_model(monkeypatch):
    """A camera's data (another detector size or pixel size, resampled to the network's) get camera-v1 by
    default; data at fast-v1's calibration get fast-v1; ``$STEMSTRAIN_MODEL`` overrides both."""
    from stemstrain.io import at_calibration, make_4d_dataset
    from stemstrain.model import default_model, load_model

    monkeypatch.delenv("STEMSTRAIN_MODEL", raising=False)
    _, metadata = load_model(default_model())
    pixels, k_sampling = int(metadata["pixels"]), float(metadata["k_sampling"])
    at_model = make_4d_dataset(np.ones((1, 1, pixels, pixels), np.float32), 1.0, k_sampling, 200e3, 1.5)
    camera = make_4d_dataset(np.ones((1, 1, 144, 144), np.float32), 1.0, 0.0325, 300e3, 0.7)
    finer = make_4d_dataset(np.ones((1, 1, pixels, pixels), np.float32), 1.0, 0.9 * k_sampling, 200e3, 1.5)
    assert at_calibration(at_model, pixels, k_sampling) and not at_calibration(finer, pixels, k_sampling)
    assert default_model(at_model).name == "fast-v1.pt" and default_model().name == "fast-v1.pt"
    assert default_model(camera).name == "camera-v1.pt" and default_model(finer).name == "camera-v1.pt"
    monkeypatch.setenv("STEMSTRAIN_MODEL", str(default_model()))
    assert default_model(camera).name == "fast-v1.pt"


def test_a_shipped_model_is_chosen_by_name():
    """``--model camera-v1`` is ``models/camera-v1.pt`` (trained with camera effects), ``--model general-v2`` the
    default until 2026-12-02 (four times fast-v1's compute); a wrong name lists them all."""
    from stemstrain.errors import StemstrainInputError
    from stemstrain.model import load_model, resolve_model

    path = resolve_model("camera-v1")
    assert path.name == "camera-v1.pt" and path.stat().st_size < 5e6
    _, metadata = load_model(path)
    augment = metadata["config"]["train"]["augment"]
    assert augment["halo"] > 0 and augment["psf_px"] > 0 and augment["saturation"] > 0
    general = resolve_model("general-v2")
    _, metadata = load_model(general)
    assert metadata["config"]["model"]["base_channels"] == 8 and general.stat().st_size < 1e6
    with pytest.raises(StemstrainInputError, match=r"camera-v1, fast-v1, general-v2"):
        resolve_model("camera-v9")


# Tuned py4DSTEM on the same positions (bench/results/mgo.json, row py4dstem): std of e_xx, e_yy, e_xy, theta.
PY4DSTEM_MGO_SPREAD = (2.79e-3, 3.31e-3, 2.62e-3, 1.94e-3)
# Our bragg with --static-offsets there (row bragg_static_offsets), the best classical method on this scan.
BRAGG_MGO_SPREAD = (1.23e-3, 0.83e-3, 0.67e-3, 0.81e-3)


def test_camera_model_maps_the_relaxed_mgo_cube_flatter_than_tuned_py4dstem(tmp_path):
    """Real SPED data (precession, halo, saturated beam): the MgO cube is relaxed, so its spread is noise.

    Read by the network's own offsets (``-o refine=offsets``), general-v2 (the default until
    2026-12-02, trained without camera effects) finds no lattice in these patterns, and the error
    points to camera-v1; with the template read-out (the default) it fits some of the reference region
    only, and the run warns and points to camera-v1. camera-v1 with
    ``--static-offsets`` maps the cube (rows 85-100, columns 14-29, reference rows 89-92, columns
    18-23) all valid, each component's spread below tuned py4DSTEM's on the same positions. With the template read-out
    (``-o refine=template``) its spread is below our bragg's with ``--static-offsets`` too. camera-v1 is the
    default for this scan (not at the network's calibration), and its defaults beat tuned py4DSTEM.
    """
    from test_ingest import MGO, _write_zspy_crop

    from stemstrain.errors import StemstrainInputError
    from stemstrain.ingest import ingest
    from stemstrain.lattice import FitOptions

    if not MGO.is_dir():
        pytest.skip(f"MgO SPED data not found at {MGO}")
    raw = _write_zspy_crop(tmp_path / "cube.zspy", (slice(85, 101), slice(14, 30)))
    scan = ingest(raw, tmp_path / "cube.zarr")
    with pytest.raises(StemstrainInputError, match="holds no valid lattice fit.*try --model camera-v1"):
        strain_map(
            scan,
            tmp_path / "default.zarr",
            model="general-v2",
            reference_roi=(4, 8, 4, 10),
            detector_options={"refine": "offsets"},
            progress=False,
        )
    with pytest.warns(UserWarning, match=r"only \d+ of 24 positions .* valid lattice fit.*try --model camera-v1"):
        strain_map(scan, tmp_path / "general.zarr", model="general-v2", reference_roi=(4, 8, 4, 10), progress=False)
    # Without --model the scan, resampled to the network's calibration, is read by camera-v1 and the
    # template: every component flatter than tuned py4DSTEM's. camera-v1 with its own offsets and
    # --static-offsets beats py4DSTEM too; its spots placed by the probe template (the aperture disk at
    # the scan's optics) with --static-offsets beat our bragg with them, the best classical method here.
    runs = {
        "default": ({}, FitOptions(), PY4DSTEM_MGO_SPREAD),
        "offsets": ({"refine": "offsets"}, FitOptions(static_offsets=True), PY4DSTEM_MGO_SPREAD),
        "template": ({"refine": "template"}, FitOptions(static_offsets=True), BRAGG_MGO_SPREAD),
    }
    for label, (options, fit_options, spread) in runs.items():
        out = strain_map(
            scan,
            tmp_path / f"{label}.zarr",
            model=None if label == "default" else "camera-v1",
            reference_roi=(4, 8, 4, 10),
            detector_options=options,
            fit_options=fit_options,
            progress=False,
        )
        ds = xr.open_zarr(out)
        assert ds.attrs["model"] == "camera-v1" and ds["mask"].values.mean() >= 0.99
        assert ds.attrs["readout"] == options.get("refine", "template")
        assert ds.attrs["fit_options"]["scatter_limit"] == (2 if ds.attrs["readout"] == "offsets" else 0)
        for name, bound in zip(("e_xx", "e_yy", "e_xy", "theta"), spread, strict=True):
            assert np.nanstd(ds[name].values) < bound, f"{label}: {name}"

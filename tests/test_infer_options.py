"""Detector options from the CLI, the material's lattice as fallback, inference-time network folding."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from test_infer import target_scan

from stemstrain.cli import parse_detector_options
from stemstrain.config import ModelConfig
from stemstrain.detect import make_detector
from stemstrain.errors import StemstrainInputError
from stemstrain.io import open_4d
from stemstrain.lattice import index_peaks, initial_lattice
from stemstrain.model import UNet, resolve_model
from stemstrain.runtime import fold_batchnorm, resolve_engine, resolve_precision
from stemstrain.simulate.targets import kinematic_spots
from stemstrain.strainmap import material_lattice, strain_map

ENERGY = 200e3


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    return target_scan(tmp_path_factory.mktemp("scan") / "scan.zarr")


def test_detector_options_are_typed():
    options = parse_detector_options(
        ["upsample=32", "hybrid=0.5", "template=probe", "fast=true", "r-max=none", "offset=1e-3"]
    )
    assert options == {"upsample": 32, "hybrid": 0.5, "template": "probe", "fast": True, "r_max": None, "offset": 1e-3}
    assert isinstance(options["upsample"], int) and isinstance(options["hybrid"], float)
    for bad in (["upsample"], ["=3"], ["a=1", "a=2"]):
        with pytest.raises(StemstrainInputError, match="--detector-option"):
            parse_detector_options(bad)


def _strain(scan, out, *options):
    command = [sys.executable, "-m", "stemstrain.cli", "strain", str(scan), str(out), "--no-progress", *options]
    return subprocess.run(command, capture_output=True, text=True)


def test_cli_detector_options_reach_the_detector(scan, tmp_path):
    default = xr.open_zarr(strain_map(scan, tmp_path / "default.zarr", method="peaks", progress=False))
    assert default["n_peaks"].values.max() > 12
    result = _strain(scan, tmp_path / "ok.zarr", "--method", "peaks", "--detector-option", "max_peaks=12")
    assert result.returncode == 0, result.stderr
    capped = xr.open_zarr(tmp_path / "ok.zarr")
    assert capped["n_peaks"].values.max() <= 12 and capped["mask"].values.all()
    # bragg: a value the baseline itself rejects proves the option arrived there, typed.
    result = _strain(scan, tmp_path / "b.zarr", "--method", "bragg", "--device", "cpu", "-o", "hybrid=2")
    assert result.returncode == 2 and "hybrid must lie in [0, 1]" in result.stderr
    with pytest.raises(StemstrainInputError, match="bogus"):
        strain_map(scan, tmp_path / "c.zarr", method="cepstrum", device="cpu", detector_options={"bogus": 1})
    with pytest.raises(StemstrainInputError, match=r"has no option\(s\) \['template'\]"):
        strain_map(scan, tmp_path / "p.zarr", method="peaks", detector_options={"template": "probe"})
    for name in ("b", "c", "p"):
        assert not (tmp_path / f"{name}.zarr").exists() and not (tmp_path / f"{name}.zarr.partial").exists()


def test_baseline_detectors_get_their_options(scan):
    ds = open_4d(scan)
    bragg = make_detector("bragg", ds, device="cpu", batch_size=8, upsample=3, hybrid=0.25, template="mean")
    assert (bragg.batch_size, bragg.upsample, bragg.hybrid) == (8, 3, 0.25)
    cepstrum = make_detector("cepstrum", ds, device="cpu", r_max=7.5, max_peaks=10)
    assert (cepstrum.r_max, cepstrum.max_peaks) == (7.5, 10)


@pytest.mark.parametrize(
    "name, attrs",
    [
        ("Si_110", {"material": "Si_110"}),
        ("Si_110", {"material": "Si", "zone_axis": "[110]"}),
        ("SrTiO3_001", {"material": "SrTiO3_001"}),
        ("Au_001", {"material": "Au", "zone_axis": "[001]"}),
    ],
)
def test_material_lattice_indexes_the_kinematic_spots(name, attrs):
    # Every kinematic reflection of the unstrained crystal is an integer combination of the basis.
    g_xy, _, _ = kinematic_spots(name, np.eye(2), 1.5, ENERGY)
    basis = material_lattice(attrs, "reciprocal")
    hk = np.linalg.solve(basis, g_xy.T).T
    np.testing.assert_allclose(hk, np.round(hk), atol=1e-9)
    assert np.linalg.det(basis) > 0
    real = material_lattice(attrs, "real")
    np.testing.assert_allclose(np.abs(np.linalg.det(real) * np.linalg.det(basis)), 1.0, rtol=1e-12)


def test_material_lattice_of_unknown_material_is_none():
    assert material_lattice({}, "reciprocal") is None
    assert material_lattice({"material": "Unobtainium"}, "reciprocal") is None


def test_too_few_spots_fall_back_to_the_material_lattice():
    basis = material_lattice({"material": "Si_110"}, "reciprocal")
    g_xy, intensity, _ = kinematic_spots("Si_110", np.eye(2), 1.5, ENERGY)
    # Two spots on one line (the direct beam and one reflection): no lattice of their own.
    nearest = np.argsort(np.linalg.norm(g_xy, axis=-1))[:2]
    positions, weights = g_xy[nearest] + 0.003, intensity[nearest]
    with pytest.raises(StemstrainInputError, match="too few for a lattice"):
        initial_lattice(positions, weights, "reciprocal")
    lattice, origin = initial_lattice(positions, weights, "reciprocal", fallback=basis)
    _, indexed = index_peaks(g_xy, lattice, origin, tolerance=0.05)
    assert indexed.all()  # the fallback indexes every reflection of the crystal
    np.testing.assert_allclose(origin, [0.003, 0.003], atol=1e-12)


def test_folded_batchnorm_network_computes_the_same(tmp_path):
    torch.manual_seed(0)
    network = UNet(ModelConfig(base_channels=4, depth=3)).eval()
    for module in network.modules():  # non-trivial running statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    folded = fold_batchnorm(network)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())  # the original is untouched
    patterns = torch.poisson(torch.full((3, 1, 32, 32), 20.0))
    with torch.inference_mode():
        expected, found = network(patterns), folded(patterns)
    np.testing.assert_allclose(found.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_precision_auto_and_emulated_bf16_warning():
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    if not native:
        with pytest.warns(UserWarning, match="slower than fp32"):
            assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(StemstrainInputError, match="--precision"):
        resolve_precision("fp16", "cpu")


def test_engine_rule():
    """ONNX Runtime for fp32 on a CPU, torch for bf16 and on GPUs; onnxruntime elsewhere is refused."""
    assert resolve_engine("auto", "cpu", "fp32") == "onnxruntime"
    assert resolve_engine("auto", "cpu", "bf16") == "torch"
    assert resolve_engine("auto", "cuda", "fp32") == "torch"
    assert resolve_engine("torch", "cpu", "fp32") == "torch"
    with pytest.raises(StemstrainInputError, match="--engine onnxruntime: runs fp32 on the CPU only, found fp16"):
        resolve_engine("onnxruntime", "cuda", "fp16")
    with pytest.raises(StemstrainInputError, match="--engine: expected one of auto, torch, onnxruntime, found 'tvm'"):
        resolve_engine("tvm", "cpu", "fp32")


def test_engine_without_onnxruntime_installed(monkeypatch):
    """On a platform without onnxruntime's wheels auto runs torch; asking for onnxruntime names the package."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    assert resolve_engine("auto", "cpu", "fp32") == "torch"
    with pytest.raises(StemstrainInputError, match=r"the package\(s\) onnxruntime are not installed"):
        resolve_engine("onnxruntime", "cpu", "fp32")


def test_compile_is_ignored_on_the_cpu(scan):
    """torch.compile runs only on a GPU: on the CPU the network stays eager and the run says so."""
    dataset = open_4d(scan)
    with pytest.warns(UserWarning, match="option compile: ignored on the CPU"):
        detector = make_detector("unet", dataset, model=resolve_model("fast-v1"), device="cpu", compile=True)
    assert not hasattr(detector.network, "_orig_mod")  # not an OptimizedModule
    positions, _ = detector(dataset["data"].values[0, :2])
    assert np.isfinite(positions).any()

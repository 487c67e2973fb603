"""Shared fixtures: small strain maps built from the package's own contract functions."""

from __future__ import annotations

import numpy as np
import pytest

from stemstrain.io import strain_map_dataset, write_strain_map


def make_strain_map(path, values=None, shape=(6, 8), **attrs):
    """Write a strain map whose components are ``values`` (dict) or smooth ramps; return its path."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    if values is None:
        values = {"e_xx": 1e-3 * x, "e_yy": -5e-4 * y, "e_xy": 2e-4 * (x - y), "theta": 1e-3 * np.ones(shape)}
    ds = strain_map_dataset(values, 0.5 * np.arange(shape[0]), 0.5 * np.arange(shape[1]), method="test", **attrs)
    return write_strain_map(ds, path)


@pytest.fixture
def strain_map_factory(tmp_path):
    counter = iter(range(1000))

    def factory(values=None, shape=(6, 8), **attrs):
        return make_strain_map(tmp_path / f"map{next(counter)}.zarr", values, shape, **attrs)

    return factory


# ---------------------------------------------------------------- training (TRAIN)

TINY_MODEL = {"base_channels": 8, "depth": 3, "norm": "batch"}
TINY_TRAIN = {"epochs": 12, "batch_size": 4, "lr": 3e-3, "val_fraction": 0.25, "nproc": 1, "precision": "fp32"}


@pytest.fixture(scope="session")
def tiny_train_config(tiny_training_set):
    """Factory of a small training Config with the calibration of ``tiny_training_set``.

    Keyword arguments override ``train`` options, or ``model`` options by their names.
    """
    import zarr

    from stemstrain.config import parse_config

    group = zarr.open_group(str(tiny_training_set), mode="r")
    attrs = group.attrs
    detector = {"pixels": int(group["inputs"].shape[-1])}
    if "k_sampling" in attrs:
        detector["k_sampling"] = float(attrs["k_sampling"])
    optics = {key: float(attrs[key]) for key in ("energy_eV", "semiangle_mrad") if key in attrs}

    def factory(**overrides):
        model = {**TINY_MODEL, **{k: v for k, v in overrides.items() if k in TINY_MODEL}}
        train = {**TINY_TRAIN, **{k: v for k, v in overrides.items() if k not in TINY_MODEL}}
        return parse_config({"optics": optics, "detector": detector, "model": model, "train": train}, "tiny")

    return factory


@pytest.fixture(scope="session")
def tiny_model(tiny_training_set, tiny_train_config, tmp_path_factory):
    """Path of ``model.pt``: a small U-Net trained a few epochs on ``tiny_training_set`` (metrics beside it)."""
    from stemstrain.train import train

    ckpt_dir = tmp_path_factory.mktemp("tiny_model")
    train(tiny_train_config(), tiny_training_set, ckpt_dir, progress=False)
    return ckpt_dir / "model.pt"


@pytest.fixture(scope="session")
def tiny_training_set(tmp_path_factory):
    """A real abTEM training set (training-set contract of DESIGN.md), made once per session in seconds.

    24 patterns: 12 strain states (|ε|, |θ| ≤ 0.03) of Si [110], SrTiO3 [001] and Au [001] at 3 and 6 nm,
    each crystal turned in-plane by a random angle,
    noisy inputs (dose 1e4-1e7) and Gaussian spot targets, reference calibration (128², 0.025 1/Å).
    Returns the store's path.
    """
    from stemstrain.config import parse_config
    from stemstrain.simulate import simulate_training_set

    config = parse_config(
        {
            "simulate": {
                "crystals": ["Si_110", "SrTiO3_001", "Au_001"],
                "thicknesses_nm": [3.0, 6.0],
                "n_samples": 12,
                "chunk_size": 8,
                "seed": 7,
                "orientation": "random",
                "cluster": {"kind": "none"},
            }
        }
    )
    return simulate_training_set(config, tmp_path_factory.mktemp("tiny_training_set") / "train.zarr")


UNIFORM_SCAN_REFERENCE_ROI = (0, 3, 0, 1)
"""Reference region (y0, y1, x0, x1) of ``uniform_scan``."""


@pytest.fixture(scope="session")
def uniform_scan(tmp_path_factory):
    """Si [110], 10 nm, uniform field of amplitude 1 % (e_xx 1 %, e_yy -0.5 %, e_xy 0.3 %, θ 4 mrad), 3 x 4
    positions at 1e8 e-, with its vacuum probe. Returns the (scan, truth) store paths."""
    from stemstrain.config import ScanConfig, parse_config
    from stemstrain.simulate import simulate_scan

    config = parse_config({"simulate": {"cluster": {"kind": "none"}}})
    scan = ScanConfig(
        name="uniform",
        crystal="Si_110",
        thickness_nm=10.0,
        dose=1e8,
        field="uniform",
        amplitude=0.01,
        scan_shape=(3, 4),
        reference_roi=UNIFORM_SCAN_REFERENCE_ROI,
    )
    root = tmp_path_factory.mktemp("uniform_scan")
    return simulate_scan(config, scan, root / "scan.zarr", root / "truth.zarr")

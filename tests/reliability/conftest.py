"""Session fixtures of the reliability suite: one tiny run of every stage, made by the real CLI.

The configuration is the smallest that still exercises the real science: Au [001] (strong
diffraction at 4 nm), 64-pixel patterns at the reference k-sampling, 0.2 angstrom potential
sampling, six strain states in three chunks, a 2-level U-Net with 4 channels, a 4 x 4 scan.
The two training sets are simulated by two concurrent processes (the concurrency check of
``test_concurrent.py`` and the reference of the kill test of ``simulate``).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from reltools import rewrite, run_cli

TINY_CONFIG = {
    "name": "reliability",
    "detector": {"pixels": 64, "k_sampling": 0.025},
    "simulate": {
        "crystals": ["Au_001"],
        "thicknesses_nm": [4.0],
        "n_samples": 6,
        "chunk_size": 2,
        "seed": 5,
        "sampling_angstrom": 0.2,
        "cluster": {"kind": "none"},
    },
    "model": {"base_channels": 4, "depth": 2, "norm": "batch"},
    "train": {
        "epochs": 3,
        "batch_size": 1,
        "lr": 0.003,
        "nproc": 1,
        "precision": "fp32",
        "val_fraction": 0.25,
        "deterministic": True,
        "checkpoint_every": 1,
        "seed": 0,
    },
    "scans": [
        {
            "name": "tiny",
            "crystal": "Au_001",
            "thickness_nm": 4.0,
            "dose": 1.0e5,
            "field": "uniform",
            "amplitude": 0.01,
            "scan_shape": [4, 4],
            "step_nm": 0.5,
            "reference_roi": [0, 4, 0, 1],
        }
    ],
    "evaluate": {
        "crystal": "Au_001",
        "thicknesses_nm": [4.0],
        "doses": [1.0e5],
        "scan_shape": [4, 4],
        "reference_roi": [0, 4, 0, 1],
        "methods": ["bragg"],
    },
}


@dataclass(frozen=True)
class Artifacts:
    """Outputs of one uninterrupted run of every stage (read-only for the tests)."""

    config: Path
    training_set: Path
    training_set_concurrent: Path
    scan: Path
    scan_chunked: Path
    truth: Path
    ckpt_dir: Path
    strain_map: Path


def _check(result, what: str) -> None:
    assert result.returncode == 0, f"{what} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    root = tmp_path_factory.mktemp("reliability")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG, sort_keys=False))
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        sets = [pool.submit(run_cli, "simulate", config, root / name) for name in ("train_a.zarr", "train_b.zarr")]
        scan = pool.submit(run_cli, "simulate-scan", config, root / "scan.zarr", root / "truth.zarr")
        for future, what in ((sets[0], "simulate"), (sets[1], "concurrent simulate"), (scan, "simulate-scan")):
            _check(future.result(), what)
        trained = pool.submit(run_cli, "train", config, root / "train_a.zarr", root / "ckpt")
        strain = pool.submit(
            run_cli, "strain", root / "scan.zarr", root / "strain.zarr", "--method", "peaks", "--no-progress"
        )
        _check(trained.result(), "train")
        _check(strain.result(), "strain")
    # the scan in 2 x 2 chunks: damaged copies then have several chunk files
    scan_chunked = rewrite(root / "scan.zarr", root / "scan_chunked.zarr", lambda ds: ds, {"scan_y": 2, "scan_x": 2})
    return Artifacts(
        config=config,
        training_set=root / "train_a.zarr",
        training_set_concurrent=root / "train_b.zarr",
        scan=root / "scan.zarr",
        scan_chunked=scan_chunked,
        truth=root / "truth.zarr",
        ckpt_dir=root / "ckpt",
        strain_map=root / "strain.zarr",
    )

"""The workflow's `ingest` rule: runs only for files listed in config `ingest.files`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from stemstrain.io import open_4d

ROOT = Path(__file__).resolve().parents[1]
FORMATS = Path(__file__).parents[1] / ".." / "shared" / "data" / "formats"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
INGEST_JOB = re.compile(r"^\s*ingest\s+\d+\s*$", re.MULTILINE)  # a row of the dry run's job table
HOT_PIXEL = "002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y"


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(
        [
            str(SNAKEMAKE),
            *args,
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--cores",
            "1",
            "--configfile",
            str(ROOT / "config.yaml"),
            str(workdir / "extra.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": env_path, "HOME": str(workdir)},
    )


def test_rule_all_has_no_ingest_job_without_files(tmp_path):
    (tmp_path / "extra.yaml").write_text("ingest: {files: []}\n")
    result = _snakemake(tmp_path, "--dry-run", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    assert not INGEST_JOB.search(result.stdout), result.stdout


@pytest.mark.skipif(not FORMATS.is_dir(), reason=f"detector samples not found at {FORMATS}")
def test_ingest_rule_converts_a_listed_merlin_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(FORMATS / "quantumdetector_merlin" / "Merlin_navigation4x2_signalNx256_ROI.zip") as zipped:
        for suffix in (".mib", ".hdr"):
            with zipped.open(HOT_PIXEL + suffix) as source, open(raw / (HOT_PIXEL + suffix), "wb") as target:
                shutil.copyfileobj(source, target)
    y, x = np.indices((128, 256))
    probe = np.where(np.hypot(y - 64, x - 128) <= 5, 100.0, 0.0).astype(np.float32)
    np.save(raw / "probe.npy", probe)
    entry = {
        "name": "hot",
        "file": f"raw/{HOT_PIXEL}.mib",
        "energy_eV": 3e5,
        "semiangle_mrad": 1.0,
        "k_sampling": 0.02,
        "chunks": [1, 2],
        "centre": "middle",
        "probe": "raw/probe.npy",
    }
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump({"ingest": {"files": [entry]}}))
    dry = _snakemake(tmp_path, "--dry-run", "--quiet", "rules")
    assert dry.returncode == 0 and INGEST_JOB.search(dry.stdout), dry.stdout + dry.stderr

    result = _snakemake(tmp_path, "results/ingest/hot.zarr")
    assert result.returncode == 0, result.stderr
    ds = open_4d(tmp_path / "results" / "ingest" / "hot.zarr")
    assert ds["data"].shape == (2, 4, 128, 256) and ds.attrs["energy_eV"] == 3e5
    assert ds["data"].encoding["chunks"][:2] == (1, 2)
    pattern = ds["data"][1, 3].values
    assert np.unravel_index(pattern.argmax(), pattern.shape) == (39, 52)
    np.testing.assert_array_equal(ds["probe"].values, probe)

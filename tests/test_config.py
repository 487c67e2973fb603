"""Configuration: the embedded default validates, bad options are named, the schema is current."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stemstrain.config import SCHEMA_PATH, load_config, parse_config, schema_yaml
from stemstrain.errors import StemstrainInputError

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_config_is_valid():
    config = load_config(ROOT / "config" / "paper.yaml")
    assert config.simulate.frozen_phonons > 0 and config.simulate.cluster.kind == "slurm"
    assert {scan.thickness_nm for scan in config.scans} >= {37, 75}


def test_thermal_config_adds_frozen_phonons_to_the_demo():
    demo, thermal = load_config(ROOT / "config.yaml"), load_config(ROOT / "config" / "thermal.yaml")
    assert demo.simulate.frozen_phonons == 0 and thermal.simulate.frozen_phonons > 0
    assert max(thermal.simulate.thicknesses_nm) >= 75 > max(demo.simulate.thicknesses_nm)
    assert thermal.detector == demo.detector and thermal.optics == demo.optics


def test_default_config_is_valid():
    config = load_config(ROOT / "config.yaml")
    assert config.detector.pixels == 128 and config.detector.k_sampling == 0.025
    assert config.scans, "the demo needs at least one test scan"


def test_committed_schema_matches_the_models():
    assert (ROOT / SCHEMA_PATH).read_text() == schema_yaml(), "regenerate: python -m stemstrain.config > " + str(
        SCHEMA_PATH
    )


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"simulate": {"thicknesses_nm": [10, -5]}}, "thicknesses_nm must be positive"),
        ({"optics": {"energy_eV": -1}}, "optics.energy_eV"),
        ({"train": {"gamma": 0}}, "train.gamma"),
        ({"trian": {}}, "trian"),
    ],
)
def test_bad_options_are_named(raw, message):
    with pytest.raises(StemstrainInputError, match=message):
        parse_config(raw, "test.yaml")


def test_not_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [unclosed")
    with pytest.raises(StemstrainInputError, match="not valid YAML"):
        load_config(path)


def test_snakemake_dry_run_and_lint_are_clean(tmp_path):
    snakemake = Path(sys.executable).with_name("snakemake")
    dry = subprocess.run([snakemake, "-n", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    lint = subprocess.run([snakemake, "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0 and "good condition" in lint.stdout + lint.stderr, lint.stdout + lint.stderr


def test_config_round_trips_through_yaml(tmp_path):
    config = load_config(ROOT / "config.yaml")
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(path) == config

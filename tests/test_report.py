"""The workflow report: one row per method and scan, figure links relative to the report."""

import ast
import json
from pathlib import Path

from stemstrain.evaluate.report import SHIPPED, write_report

COMMON_RULES = Path(__file__).resolve().parents[1] / "workflow" / "rules" / "common.smk"


def test_report_table_and_links(tmp_path):
    scores = {
        name: {"rmse": value, "median_abs_error": value / 2}
        for name, value in [("e_xx", 4.1e-4), ("e_yy", 4.4e-4), ("e_xy", 3.0e-4), ("theta", 4.4e-4)]
    }
    score = tmp_path / "results" / "evaluation" / "unet" / "scan_a.json"
    score.parent.mkdir(parents=True)
    score.write_text(json.dumps(scores))
    figure = tmp_path / "results" / "figures" / "unet" / "scan_a.png"
    config = {"name": "demo", "scans": [{"name": "scan_a", "crystal": "Si_110", "thickness_nm": 30, "dose": 1e6}]}
    out = write_report([str(score)], [str(figure)], tmp_path / "results" / "report.md", config)
    text = out.read_text()
    assert "| unet | scan_a | Si_110 | 30 | 1000000.0 | 4.10e-04 | 4.40e-04 | 3.00e-04 | 4.40e-04 |" in text
    assert "](figures/unet/scan_a.png)" in text


def test_report_names_the_shipped_model_row(tmp_path):
    scores = {name: {"rmse": 1e-3, "median_abs_error": 5e-4} for name in ("e_xx", "e_yy", "e_xy", "theta")}
    files = []
    for method in ("unet", "unet-shipped"):
        score = tmp_path / "results" / "evaluation" / method / "scan_a.json"
        score.parent.mkdir(parents=True)
        score.write_text(json.dumps(scores))
        files.append(str(score))
    config = {"name": "demo", "scans": [{"name": "scan_a", "crystal": "Si_110", "thickness_nm": 30, "dose": 1e6}]}
    text = write_report(files, [], tmp_path / "results" / "report.md", config).read_text()
    assert "| unet | scan_a |" in text and "| unet-shipped | scan_a |" in text
    assert "unet-shipped: the pretrained model shipped with stemstrain" in text


def test_workflow_and_report_name_the_shipped_model_alike():
    # The Snakefile does not import the package (it may run where stemstrain is not installed), so
    # the name is written in both places; this keeps them in step.
    text = COMMON_RULES.read_text()
    line = next(line for line in text.splitlines() if line.startswith("SHIPPED ="))
    assert ast.literal_eval(line.split("=", 1)[1].strip()) == SHIPPED

"""Markdown report of a workflow run: the error table and the figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

from stemstrain.io import atomic_output

SHIPPED = "unet-shipped"
"""Workflow name of the shipped model's strain maps (``strain.shipped_model``)."""


def write_report(score_files: list[str], figure_files: list[str], out: str | Path, config: dict) -> Path:
    """Write the RMSE table (one row per method and scan) with links to the figures.

    Score files are named ``results/evaluation/<method>/<scan>.json``; figures
    ``results/figures/<method>/<scan>.png``.
    """
    scans = {scan["name"]: scan for scan in config.get("scans", [])}
    lines = [
        f"# stemstrain report: {config.get('name', '')}",
        "",
        "Strain errors against simulated ground truth, outside the reference region.",
        "",
        "| method | scan | crystal | thickness [nm] | dose [e-] "
        "| RMSE e_xx | RMSE e_yy | RMSE e_xy | RMSE theta [rad] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in map(Path, score_files):
        scores = json.loads(path.read_text())
        method, scan = path.parent.name, path.stem
        meta = scans.get(scan, {})
        rmse = " | ".join(f"{scores[c]['rmse']:.2e}" for c in ("e_xx", "e_yy", "e_xy", "theta"))
        lines.append(
            f"| {method} | {scan} | {meta.get('crystal', '')} | {meta.get('thickness_nm', '')} | "
            f"{meta.get('dose', '')} | {rmse} |"
        )
    if any(Path(path).parent.name == SHIPPED for path in score_files):
        lines += [
            "",
            f"{SHIPPED}: the pretrained model shipped with stemstrain (`models/`), not trained on this config; "
            "unet: the model this workflow trained.",
        ]
    lines += ["", "## Figures", ""]
    out = Path(out)
    for figure in map(Path, figure_files):
        # links relative to the report, so they work wherever results/ is copied
        link = os.path.relpath(figure, out.parent)
        lines.append(f"![{figure.parent.name} {figure.stem}]({link})")
    with atomic_output(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out

"""Evaluation of every method over a thickness × dose grid of simulated test scans.

For each grid point a strained scan with known truth is simulated
(:func:`stemstrain.simulate.simulate_scan`), every method measures its strain map
(:func:`stemstrain.strainmap.strain_map` with the config's ``strain`` section) and
:func:`stemstrain.evaluate.score.evaluate_strain` scores it: the stages of the workflow, composed.
Finished scans and scores are kept, so a second run reuses them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stemstrain.config import Config, ScanConfig  # noqa: E402
from stemstrain.detect import METHODS, NETWORK  # noqa: E402
from stemstrain.errors import StemstrainInputError  # noqa: E402
from stemstrain.io import atomic_output  # noqa: E402

__all__ = ["evaluate_grid", "grid_scans", "write_tables"]

COLUMNS = [
    "method",
    "thickness_nm",
    "dose",
    "scan",
    "rmse_strain",
    "rmse_e_xx",
    "rmse_e_yy",
    "rmse_e_xy",
    "rmse_theta",
    "n_scored",
    "n_valid",
    "n_total",
    "patterns_per_s",
]


def grid_scans(config: Config) -> list[ScanConfig]:
    """The test scans of the evaluation grid, one per thickness and dose.

    Parameters
    ----------
    config : Config
        Its ``evaluate`` section defines the grid; empty thickness or dose lists give no scans.

    Returns
    -------
    list of ScanConfig
        Named ``grid_<crystal>_t<thickness>_d<dose>``.
    """
    from stemstrain.simulate.scan import default_reference_roi

    grid = config.evaluate
    n_y, n_x = grid.scan_shape
    roi = grid.reference_roi if grid.reference_roi is not None else default_reference_roi((n_y, n_x))
    return [
        ScanConfig(
            name=f"grid_{grid.crystal}_t{thickness:g}_d{dose:.0e}".replace("+", ""),
            crystal=grid.crystal,
            thickness_nm=thickness,
            dose=dose,
            field=grid.field,
            amplitude=grid.amplitude,
            scan_shape=grid.scan_shape,
            step_nm=grid.step_nm,
            reference_roi=roi,
            seed=grid.seed,
        )
        for thickness in grid.thicknesses_nm
        for dose in grid.doses
    ]


def _score_row(method: str, scan: ScanConfig, scores: dict, seconds: float) -> dict:
    rmse = {name: scores[name]["rmse"] for name in ("e_xx", "e_yy", "e_xy", "theta")}
    return {
        "method": method,
        "thickness_nm": scan.thickness_nm,
        "dose": scan.dose,
        "scan": scan.name,
        "rmse_strain": max(rmse["e_xx"], rmse["e_yy"], rmse["e_xy"]),
        **{f"rmse_{name}": value for name, value in rmse.items()},
        "n_scored": scores["n_scored"],
        "n_valid": scores["n_valid"],
        "n_total": scores["n_total"],
        "patterns_per_s": scores["n_total"] / seconds if seconds > 0 else float("nan"),
    }


def evaluate_grid(
    config: Config,
    work_dir: str | Path = "results/grid",
    out_dir: str | Path = "results/evaluation",
    model: str | Path | None = None,
    methods: list[str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Simulate the grid scans, run every method on each and tabulate the errors.

    Parameters
    ----------
    config : Config
        Whole configuration (optics, detector and the ``evaluate`` grid).
    work_dir : path
        Where scans (``scans/<name>.zarr``, ``.truth.zarr``), strain maps
        (``strain/<method>/<name>.zarr``) and scores (``scores/<method>/<name>.json``) are kept;
        existing ones are reused.
    out_dir : path
        Where ``table.csv``, ``table.md`` and ``rmse_vs_thickness.png`` are written.
    model : path, optional
        Exported network for the ``unet`` method; without it ``unet`` is skipped.
    methods : list of str, optional
        Methods to run; default ``config.evaluate.methods``.
    progress : bool
        Show progress bars of the strain runs.

    Returns
    -------
    pandas.DataFrame
        One row per method and scan, the columns of ``table.csv``.

    Raises
    ------
    StemstrainInputError
        If the grid is empty or ``unet`` is the only method and no model is given.
    """
    from stemstrain.evaluate.score import evaluate_strain
    from stemstrain.io import open_strain_map
    from stemstrain.simulate import simulate_scan
    from stemstrain.strainmap import strain_map

    scans = grid_scans(config)
    if not scans:
        raise StemstrainInputError(
            "evaluate.thicknesses_nm and evaluate.doses: the evaluation grid is empty (give at least one of each)"
        )
    methods = list(methods or config.evaluate.methods)
    # checked before any scan is simulated: an unknown method used to fail only after the first simulation
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise StemstrainInputError(f"--method: expected one of {METHODS}, found {unknown}")
    if model is not None and not Path(model).is_file():
        raise StemstrainInputError(f"--model {model}: model file not found")
    if NETWORK in methods and model is None:
        methods.remove(NETWORK)
        if not methods:
            raise StemstrainInputError("--model: the unet method needs a model checkpoint (CKPT_DIR/model.pt)")
    work_dir = Path(work_dir)
    rows = []
    for scan in scans:
        scan_path = work_dir / "scans" / f"{scan.name}.zarr"
        truth_path = work_dir / "scans" / f"{scan.name}.truth.zarr"
        if not (scan_path.exists() and truth_path.exists()):
            simulate_scan(config, scan, scan_path, truth_path)
        for method in methods:
            score_path = work_dir / "scores" / method / f"{scan.name}.json"
            if score_path.exists():
                rows.append(json.loads(score_path.read_text()))
                continue
            strain_path = work_dir / "strain" / method / f"{scan.name}.zarr"
            start = time.perf_counter()
            strain_map(
                scan_path, strain_path, method, model if method == NETWORK else None, config.strain, progress=progress
            )
            seconds = time.perf_counter() - start
            scores = evaluate_strain(open_strain_map(strain_path), open_strain_map(truth_path))
            row = _score_row(method, scan, scores, seconds)
            with atomic_output(score_path) as tmp:
                tmp.write_text(json.dumps(row, indent=2) + "\n")
            rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values(["method", "dose", "thickness_nm"], ignore_index=True)
    write_tables(table, out_dir)
    return table


def write_tables(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write ``table.csv``, ``table.md`` and ``rmse_vs_thickness.png`` of a grid table.

    The markdown table has one row per thickness and dose and one column per method, holding
    the strain RMSE (largest of e_xx, e_yy, e_xy) in units of 10⁻⁴. The figure plots that RMSE
    against thickness: one colour per method, one line style per dose.

    Returns
    -------
    dict of Path
        ``csv``, ``markdown`` and ``figure`` paths.
    """
    out_dir = Path(out_dir)
    paths = {
        "csv": out_dir / "table.csv",
        "markdown": out_dir / "table.md",
        "figure": out_dir / "rmse_vs_thickness.png",
    }
    with atomic_output(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(paths["markdown"]) as tmp:
        tmp.write_text(_markdown(table))
    _plot(table, paths["figure"])
    return paths


def _markdown(table: pd.DataFrame) -> str:
    methods = list(dict.fromkeys(table["method"]))
    pivot = table.pivot_table(index=["thickness_nm", "dose"], columns="method", values="rmse_strain", aggfunc="first")
    lines = [
        "Strain RMSE (largest of e_xx, e_yy, e_xy; reference region excluded) in units of 1e-4.",
        "",
        "| thickness [nm] | dose [e-/pattern] | " + " | ".join(methods) + " |",
        "|---:|---:|" + "---:|" * len(methods),
    ]
    for (thickness, dose), row in pivot.iterrows():
        cells = [f"{1e4 * row[m]:.2f}" if m in row and np.isfinite(row[m]) else "–" for m in methods]
        lines.append(f"| {thickness:g} | {dose:.0e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(table: pd.DataFrame, out: Path) -> None:
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(table["method"]))}
    for j, dose in enumerate(sorted(table["dose"].unique())):
        for method, colour in colours.items():
            rows = table[(table["method"] == method) & (table["dose"] == dose)].sort_values("thickness_nm")
            if rows.empty:
                continue
            ax.plot(
                rows["thickness_nm"],
                rows["rmse_strain"],
                styles[j % len(styles)],
                marker="o",
                color=colour,
                label=f"{method}, {dose:.0e} e-",
            )
    ax.set_xlabel("thickness [nm]")
    ax.set_ylabel("strain RMSE [1]")
    ax.set_yscale("log")
    ax.set_title("strain error vs thickness (colour: method, line style: dose)")
    ax.legend(fontsize=7, ncol=2)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

"""The accuracy suite: every method on every held-out scan, one table.

A row is one (scan, method) run: its scores against the truth (:func:`evaluate_strain`), the fraction
of valid positions, the slope of predicted against true strain per component (1: no compression) and
the patterns per second, or the reason it failed. :func:`suite_table` turns rows into the markdown
table of ``bench/results/summary.md``; a method that failed on a scan shows ``fails: <reason>`` in its
cell, never a blank.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import xarray as xr

from stemstrain.errors import StemstrainInputError
from stemstrain.evaluate.score import evaluate_strain
from stemstrain.strain import STRAIN_COMPONENTS

__all__ = ["failed_row", "pooled_row", "score_row", "slopes", "suite_table", "timed_row"]

STRAIN_ONLY = ("e_xx", "e_yy", "e_xy")


def slopes(prediction: xr.Dataset, truth: xr.Dataset) -> dict[str, float]:
    """Least-squares slope of predicted against true values per component over the strained positions.

    Positions count where the prediction is valid and the truth is not zero in every component (the
    reference region is left out by construction: the truth vanishes there). 1 means no compression.

    Returns
    -------
    dict
        ``{component: slope}`` [1]; NaN where the truth does not vary.
    """
    valid = prediction["mask"].values.astype(bool) if "mask" in prediction else np.ones(truth["e_xx"].shape, bool)
    strained = np.any([truth[c].values != 0 for c in STRAIN_COMPONENTS], axis=0)
    result = {}
    for name in STRAIN_COMPONENTS:
        true, predicted = truth[name].values, prediction[name].values
        use = valid & strained & np.isfinite(predicted) & np.isfinite(true)
        spread = np.var(true[use]) if use.sum() > 2 else 0.0
        if spread <= 0:
            result[name] = math.nan
            continue
        centred = true[use] - true[use].mean()
        result[name] = float(np.sum(centred * (predicted[use] - predicted[use].mean())) / np.sum(centred**2))
    return result


def score_row(scan: str, method: str, prediction: str | Path, truth: str | Path, seconds: float) -> dict:
    """The suite row of one strain map: scores, valid fraction, slopes and patterns per second.

    Parameters
    ----------
    scan, method : str
        Names of the scan and the method.
    prediction, truth : path
        Strain-map stores of the method and of the imposed field.
    seconds : float
        Wall time of the method on the whole scan [s].
    """
    predicted, expected = xr.open_zarr(prediction), xr.open_zarr(truth)
    scores = evaluate_strain(predicted, expected)
    n_total = scores["n_total"]
    return {
        "scan": scan,
        "method": method,
        "status": "ok",
        "rmse": {c: scores[c]["rmse"] for c in STRAIN_COMPONENTS},
        "median_abs_error": {c: scores[c]["median_abs_error"] for c in STRAIN_COMPONENTS},
        "worst_strain_rmse": max(scores[c]["rmse"] for c in STRAIN_ONLY),
        "valid_fraction": scores["n_valid"] / n_total,
        "n_scored": scores["n_scored"],
        "slope": slopes(predicted, expected),
        "seconds": seconds,
        "patterns_per_s": n_total / seconds if seconds > 0 else math.nan,
    }


def failed_row(scan: str, method: str, reason: str) -> dict:
    """The suite row of a method that gave no strain map, with the reason (one line)."""
    return {"scan": scan, "method": method, "status": "failed", "reason": " ".join(str(reason).split())}


def timed_row(scan: str, method: str, truth: str | Path, out: str | Path, run) -> dict:
    """Run ``run()`` (which writes the strain map ``out``), time it and score it; a bad-input error is a failed row."""
    start = time.perf_counter()
    try:
        run()
    except StemstrainInputError as err:
        return failed_row(scan, method, str(err))
    return score_row(scan, method, out, truth, time.perf_counter() - start)


def pooled_row(rows: list[dict]) -> dict | None:
    """One row for several noise draws of one (scan, method): a failed draw's row, else the draws pooled.

    The RMSE of each component is pooled over the draws (root of the mean square; every draw scores
    the same positions), slopes and valid fractions are averaged, and ``worst_strain_rmse_se`` is the
    standard error of the mean of the draws' worst-component RMSE (absent for one draw).
    """
    if not rows:
        return None
    failed = [row for row in rows if row["status"] != "ok"]
    if failed or len(rows) == 1:
        return (failed or rows)[0]
    rmse = {c: float(np.sqrt(np.mean([row["rmse"][c] ** 2 for row in rows]))) for c in rows[0]["rmse"]}
    worst = [row["worst_strain_rmse"] for row in rows]
    return {
        **rows[0],
        "rmse": rmse,
        "worst_strain_rmse": max(rmse[c] for c in STRAIN_ONLY),
        "worst_strain_rmse_se": float(np.std(worst, ddof=1) / np.sqrt(len(worst))),
        "draws": len(rows),
        "valid_fraction": float(np.mean([row["valid_fraction"] for row in rows])),
        "slope": {c: float(np.mean([row["slope"][c] for row in rows])) for c in rows[0]["slope"]},
    }


def _cell(row: dict | None) -> str:
    if row is None:
        return "not run"
    if row["status"] != "ok":
        reason = row["reason"]
        return f"fails: {reason[:90] + '…' if len(reason) > 90 else reason}"
    slope = row["slope"]
    text = f"{1e4 * row['worst_strain_rmse']:.1f}"
    if "worst_strain_rmse_se" in row:
        text += f" ±{1e4 * row['worst_strain_rmse_se']:.1f}"
    if row["valid_fraction"] < 0.995:
        text += f" ({100 * row['valid_fraction']:.0f} % valid)"
    return text + f" · s {slope['e_xx']:.2f}/{slope['e_yy']:.2f}"


def suite_table(rows: list[dict], methods: list[str]) -> str:
    """Markdown table: a row per scan, a column per method.

    Each cell holds the worst-component strain RMSE outside the reference region [1e-4], the valid
    fraction when under 99.5 %, and the slopes of e_xx and e_yy (``s 0.98/1.01``); a failed method
    shows ``fails: <reason>``. Rows of several noise draws (``draw``) of one scan and method are pooled
    (:func:`pooled_row`) and the RMSE is followed by its standard error over the draws (``5.8 ±0.1``).
    A last row gives each method's patterns per second (median over scans and draws).
    """
    scans = list(dict.fromkeys(row["scan"] for row in rows))
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["scan"], row["method"]), []).append(row)
    by_key = {key: pooled_row(group) for key, group in grouped.items()}
    lines = [
        "| scan | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for scan in scans:
        lines.append(f"| {scan} | " + " | ".join(_cell(by_key.get((scan, m))) for m in methods) + " |")
    rates = []
    for method in methods:
        values = [r["patterns_per_s"] for r in rows if r["method"] == method and r["status"] == "ok"]
        rates.append(f"{np.median(values):.0f}" if values else "–")
    lines.append("| patterns/s (median) | " + " | ".join(rates) + " |")
    return "\n".join(lines) + "\n"

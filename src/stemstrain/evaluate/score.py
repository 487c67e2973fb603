"""Scores of a strain map against ground truth."""

from __future__ import annotations

import numpy as np
import xarray as xr

from stemstrain.errors import StemstrainInputError
from stemstrain.strain import STRAIN_COMPONENTS

__all__ = ["evaluate_strain", "scored_positions", "summary_line"]


def scored_positions(
    prediction: xr.Dataset, truth: xr.Dataset, exclude_reference: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The scan positions :func:`evaluate_strain` scores, and those valid in the prediction.

    Returns
    -------
    scored, valid : ndarray (scan_y, scan_x) bool
        ``valid``: ``mask`` (where present) and every component finite in the prediction; ``scored``:
        valid and finite in the truth, outside the reference region when ``exclude_reference`` is set
        (unless that would leave none).

    Raises
    ------
    StemstrainInputError
        If the scan grids differ or no position can be scored.
    """
    shape_p = tuple(prediction.sizes[d] for d in ("scan_y", "scan_x"))
    shape_t = tuple(truth.sizes[d] for d in ("scan_y", "scan_x"))
    if shape_p != shape_t:
        raise StemstrainInputError(f"prediction scan shape {shape_p} differs from truth scan shape {shape_t}")
    valid = np.all([np.isfinite(prediction[c].values) for c in STRAIN_COMPONENTS], axis=0)
    if "mask" in prediction:
        valid &= prediction["mask"].values.astype(bool)
    scored = valid & np.all([np.isfinite(truth[c].values) for c in STRAIN_COMPONENTS], axis=0)
    roi = prediction.attrs.get("reference_roi", truth.attrs.get("reference_roi"))
    if exclude_reference and roi is not None:
        y0, y1, x0, x1 = (int(v) for v in roi)
        outside = np.ones(shape_p, bool)
        outside[y0:y1, x0:x1] = False
        if (scored & outside).any():
            scored &= outside
    if not scored.any():
        raise StemstrainInputError("no scan position is valid in both the prediction and the truth")
    return scored, valid


def evaluate_strain(prediction: xr.Dataset, truth: xr.Dataset, exclude_reference: bool = True) -> dict:
    """RMSE and median absolute error of each strain component against truth.

    Scored positions are those valid in the prediction (``mask`` and finite) and finite in the
    truth, outside the reference region (``reference_roi`` attr of the prediction, else of the
    truth) when ``exclude_reference`` is set.

    Parameters
    ----------
    prediction, truth : xr.Dataset
        Strain maps in the contract of docs/DESIGN.md, on the same scan grid.
    exclude_reference : bool
        Leave the reference region out of the score (it is zero strain by construction).

    Returns
    -------
    dict
        ``{component: {"rmse": float, "median_abs_error": float}}`` for e_xx, e_yy, e_xy [1] and
        theta [rad], plus ``n_scored`` (positions scored), ``n_valid`` and ``n_total``.

    Raises
    ------
    StemstrainInputError
        If the scan grids differ or no position can be scored.
    """
    scored, valid = scored_positions(prediction, truth, exclude_reference)
    result: dict = {}
    for name in STRAIN_COMPONENTS:
        error = prediction[name].values[scored] - truth[name].values[scored]
        result[name] = {
            "rmse": float(np.sqrt(np.mean(error**2))),
            "median_abs_error": float(np.median(np.abs(error))),
        }
    result["n_scored"] = int(scored.sum())
    result["n_valid"] = int(valid.sum())
    result["n_total"] = int(valid.size)
    return result


def summary_line(scores: dict) -> str:
    """One line ``rmse_strain=<max over e_xx, e_yy, e_xy> rmse_theta=<theta>``."""
    rmse_strain = max(scores[c]["rmse"] for c in ("e_xx", "e_yy", "e_xy"))
    return f"rmse_strain={rmse_strain:.3e} rmse_theta={scores['theta']['rmse']:.3e}"

"""Figures of strain maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from stemstrain.errors import StemstrainInputError  # noqa: E402
from stemstrain.io import atomic_output  # noqa: E402
from stemstrain.strain import STRAIN_COMPONENTS  # noqa: E402

__all__ = ["plot_strain"]

_LABELS = {
    "e_xx": r"$\varepsilon_{xx}$",
    "e_yy": r"$\varepsilon_{yy}$",
    "e_xy": r"$\varepsilon_{xy}$",
    "theta": r"$\theta$",
}


def _masked(ds: xr.Dataset, name: str) -> np.ndarray:
    values = np.asarray(ds[name].values, dtype=float)
    if "mask" in ds:
        values = np.where(ds["mask"].values.astype(bool), values, np.nan)
    return values


def _symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(np.percentile(finite, 99.5)) if finite.size and finite.max() > 0 else 1e-3


def plot_strain(strain: xr.Dataset, out: str | Path, truth: xr.Dataset | None = None, title: str | None = None) -> Path:
    """Plot e_xx, e_yy, e_xy and θ side by side, with colour bars and units.

    Colour limits are symmetric about zero (99.5th percentile of |value|, shared by the rows of
    one component). With ``truth`` the figure has three rows: prediction, truth, error.

    Parameters
    ----------
    strain : xr.Dataset
        Strain map (contract of docs/DESIGN.md).
    out : path
        PNG to write (atomically).
    truth : xr.Dataset, optional
        Ground-truth strain map on the same grid.
    title : str, optional
        Figure title; by default the method attr.

    Returns
    -------
    Path
        ``out``.
    """
    if truth is not None:
        shape, truth_shape = ((ds.sizes["scan_y"], ds.sizes["scan_x"]) for ds in (strain, truth))
        if shape != truth_shape:
            raise StemstrainInputError(
                f"--truth: truth scan shape {truth_shape} differs from the map's scan shape {shape}"
            )
    rows = [("prediction", strain)] if truth is None else [("prediction", strain), ("truth", truth), ("error", None)]
    extent = [float(strain.scan_x[0]), float(strain.scan_x[-1]), float(strain.scan_y[-1]), float(strain.scan_y[0])]
    fig, axes = plt.subplots(len(rows), 4, figsize=(16, 3.6 * len(rows)), squeeze=False, constrained_layout=True)
    for col, name in enumerate(STRAIN_COMPONENTS):
        predicted = _masked(strain, name)
        images = {"prediction": predicted}
        if truth is not None:
            images["truth"] = np.asarray(truth[name].values, dtype=float)
            images["error"] = predicted - images["truth"]
        limit = _symmetric_limit(np.concatenate([images[k].ravel() for k in images if k != "error"]))
        units = strain[name].attrs.get("units", "1")
        for row, (label, _) in enumerate(rows):
            ax = axes[row, col]
            row_limit = _symmetric_limit(images[label]) if label == "error" else limit
            shown = ax.imshow(images[label], cmap="RdBu_r", vmin=-row_limit, vmax=row_limit, extent=extent)
            ax.set_title(f"{_LABELS[name]} {label}" if truth is not None else _LABELS[name])
            ax.set_xlabel("x [nm]")
            ax.set_ylabel("y [nm]")
            fig.colorbar(shown, ax=ax, label=f"{name} [{units}]", shrink=0.85)
    fig.suptitle(title or f"strain map ({strain.attrs.get('method', 'unknown method')})")
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out)

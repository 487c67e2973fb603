"""The files rank 0 writes beside the checkpoint: metrics per epoch, loss per step, the curves."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from stemstrain.io import atomic_output

__all__ = ["CURVES", "METRICS", "METRIC_FIELDS", "STEPS", "STEP_FIELDS", "plot_curves", "read_csv", "rewrite_csv"]

METRICS = "metrics.csv"
STEPS = "steps.csv"
CURVES = "curves.png"

METRIC_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_bce",
    "train_mse",
    "train_offset",
    "val_loss",
    "val_bce",
    "val_mse",
    "val_offset",
    "val_median_error_px",
    "val_recall",
    "val_precision",
    "val_strain_rmse",
    "val_strain_median",
    "val_strain_valid",
    "samples_per_s",
    "elapsed_s",
)
STEP_FIELDS = ("step", "epoch", "lr", "loss", "bce", "mse", "offset")


def rewrite_csv(path: Path, fields, rows: list[dict]) -> None:
    """Write ``rows`` as a CSV file with the columns ``fields``, atomically."""
    with atomic_output(path) as tmp:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows(rows)


def read_csv(path: Path, up_to_step: int) -> list[dict]:
    """The rows of a CSV log up to a step (those a resumed run keeps); none when the file is absent."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["step"]) <= up_to_step]


def plot_curves(metrics: list[dict], steps: list[dict], out: Path) -> Path:
    """Loss per step and per epoch (train, validation) and validation spot metrics, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def column(rows, key):
        return np.array([float(row[key]) if row[key] not in ("", None) else np.nan for row in rows])

    figure, (loss_axis, spot_axis, strain_axis) = plt.subplots(1, 3, figsize=(16, 4), constrained_layout=True)
    if steps:
        loss_axis.plot(
            column(steps, "step"), column(steps, "loss"), lw=0.6, alpha=0.4, label="train (rank 0, per step)"
        )
    if metrics:
        epoch_step = column(metrics, "step")
        for key, label in [("train_loss", "train"), ("val_loss", "validation"), ("val_bce", "validation BCE")]:
            loss_axis.plot(epoch_step, column(metrics, key), "o-", label=label)
        spot_axis.plot(epoch_step, column(metrics, "val_recall"), "o-", label="recall")
        spot_axis.plot(epoch_step, column(metrics, "val_precision"), "s-", label="precision")
        spot_axis.set_ylim(0, 1.05)
        error_axis = spot_axis.twinx()
        error_axis.plot(epoch_step, column(metrics, "val_median_error_px"), "^-", color="C3", label="median error")
        error_axis.set_ylabel("median spot-position error [px]", color="C3")
        for key, label in [("val_strain_rmse", "RMS"), ("val_strain_median", "median |error|")]:
            strain_axis.plot(epoch_step, column(metrics, key), "o-", label=label)
    # The offset term (a negative log-likelihood) can take the total below zero.
    loss_axis.set_yscale("symlog", linthresh=1e-3)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss L = BCE + MSE^γ (+ λ NLL) [1]")
    strain_axis.set_yscale("log")
    strain_axis.set_xlabel("step")
    strain_axis.set_ylabel("validation lattice strain error [1]")
    strain_axis.legend()
    loss_axis.legend()
    spot_axis.set_xlabel("step")
    spot_axis.set_ylabel("validation spot recall / precision [1]")
    spot_axis.legend(loc="lower left")
    with atomic_output(out) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return out

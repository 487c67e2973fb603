"""Spots as local maxima of the raw patterns (no network): the ``peaks`` method."""

from __future__ import annotations

import numpy as np
import xarray as xr

from stemstrain.io import k_calibration
from stemstrain.peaks import find_peaks
from stemstrain.runtime import Timings

__all__ = ["PeakDetector"]


class PeakDetector:
    """Spots as local maxima of the raw patterns, refined to subpixel.

    For sharp, well separated spots (small convergence angle, target images); it is also the
    fast method of the scale benchmark. Positions are in 1/angstrom relative to k = 0 from the
    scan's k coordinates.

    Parameters
    ----------
    scan : xr.Dataset
        4D data; its k coords calibrate positions.
    threshold_rel, min_distance, max_peaks
        As in :func:`stemstrain.peaks.find_peaks`.
    """

    space = "reciprocal"

    def __init__(self, scan: xr.Dataset, threshold_rel: float = 0.02, min_distance: int = 2, max_peaks: int = 64):
        self.k_sampling, self.centre = k_calibration(scan)
        self.threshold_rel, self.min_distance, self.max_peaks = threshold_rel, min_distance, max_peaks
        self.timings = Timings()

    def __call__(self, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.timings.measure("peaks"):
            positions, weights = find_peaks(
                patterns, threshold_rel=self.threshold_rel, min_distance=self.min_distance, max_peaks=self.max_peaks
            )
        centre_xy = np.array([self.centre[1], self.centre[0]])
        return (positions - centre_xy) * self.k_sampling, weights

"""Spots read out of the network's output: what inference fits and what validation scores.

The network maps a pattern to two images (:class:`~stemstrain.model.UNet`): channel 0 the mask
logit, channel 1 the spot image. A spot is a peak of the spot image where the mask is more likely
on than off (logit > 0), located to subpixel by :func:`stemstrain.peaks.find_peaks`.
"""

from __future__ import annotations

import numpy as np

from stemstrain.peaks import find_peaks

__all__ = ["MAX_SPOTS", "MIN_DISTANCE", "THRESHOLD_REL", "read_spots"]

# Spot-image peaks below this fraction of the image's maximum are not spots [1].
THRESHOLD_REL = 0.01
# A spot is the largest value within this many pixels [px].
MIN_DISTANCE = 2
# Most spots kept per pattern, the strongest first.
MAX_SPOTS = 64


def read_spots(
    outputs: np.ndarray,
    threshold_rel: float = THRESHOLD_REL,
    min_distance: int = MIN_DISTANCE,
    max_peaks: int = MAX_SPOTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Spots of a batch of network outputs.

    Parameters
    ----------
    outputs : ndarray, shape (n, 2, H, W)
        Network outputs: mask logit, spot image.
    threshold_rel, min_distance, max_peaks
        As in :func:`stemstrain.peaks.find_peaks`.

    Returns
    -------
    positions : ndarray, shape (n, m, 2)
        Spot positions (x, y) [px], NaN-padded.
    weights : ndarray, shape (n, m)
        Spot heights in the spot image, zero for padding.
    """
    outputs = np.asarray(outputs)
    return find_peaks(
        outputs[:, 1],
        threshold_rel=threshold_rel,
        min_distance=min_distance,
        max_peaks=max_peaks,
        mask=outputs[:, 0] > 0,
    )

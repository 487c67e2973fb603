"""How Bragg spots are read back from the network's output channels.

One home for the read-out, so that inference (the ``unet`` detector) and validation during training
agree by construction. Channel 0 of the output is the mask logit, channel 1 the spot image; a spot
is a peak of the spot image where the mask is more likely on than off (logit > 0), located to
subpixel by the one peak finder, :func:`stemstrain.peaks.find_peaks`. Positions are ``(x, y)``
pixels, x the column (k_x).
"""

from __future__ import annotations

import numpy as np

from stemstrain.peaks import find_peaks

__all__ = ["decode_spots"]


def decode_spots(
    outputs: np.ndarray, threshold_rel: float = 0.01, min_distance: int = 2, max_peaks: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Spot positions and fit weights from network outputs.

    Parameters
    ----------
    outputs : ndarray (N, C, H, W)
        Network output: mask logit, spot image.
    threshold_rel, min_distance, max_peaks
        Peak finding in the spot image (:func:`stemstrain.peaks.find_peaks`); peaks count only where the
        mask logit is positive.

    Returns
    -------
    positions : ndarray (N, m, 2)
        Spot centres (x, y) [px], NaN-padded.
    weights : ndarray (N, m)
        Fit weights: the spot image's peak height; 0 for padding.
    """
    outputs = np.asarray(outputs, dtype=np.float32)
    return find_peaks(
        outputs[:, 1],
        threshold_rel=threshold_rel,
        min_distance=min_distance,
        max_peaks=max_peaks,
        mask=outputs[:, 0] > 0,
    )

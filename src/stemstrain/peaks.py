"""Spot finding with subpixel refinement in batches of images (pure, batched).

A peak is a local maximum above a threshold, at least ``min_distance`` pixels from any larger
value. Its position is refined by a least-squares quadratic fit to the logarithm of the 3×3
neighbourhood: the logarithm of a Gaussian is a quadratic, so a sampled Gaussian spot of any
width or ellipticity is located exactly (to float rounding). Where the fit is not a maximum
(flat or non-positive neighbourhood), the intensity-weighted centre of mass of the 3×3 window is
used instead.

Positions are ``(x, y)`` pairs in pixels: x the column index (k_x), y the row index (k_y).
"""

from __future__ import annotations

import numpy as np

__all__ = ["find_peaks", "fit_quadratic", "local_maximum", "refine_peaks"]

_TIE_LAGS = 8  # equal-valued peaks compared when dropping duplicates (a plateau, and its mirror images)

_OFFSETS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=float)  # (9, 2) window order
# Least-squares solution of f = c0 + c1 x + c2 y + c3 x² + c4 xy + c5 y² on the 3×3 window.
_QUADRATIC = np.linalg.pinv(
    np.stack(
        [
            np.ones(9),
            _OFFSETS[:, 1],
            _OFFSETS[:, 0],
            _OFFSETS[:, 1] ** 2,
            _OFFSETS[:, 1] * _OFFSETS[:, 0],
            _OFFSETS[:, 0] ** 2,
        ],
        axis=-1,
    )
)  # (6, 9)


def fit_quadratic(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares quadratic ``c0 + c1 x + c2 y + c3 x² + c4 xy + c5 y²`` on 3×3 windows, and its vertex.

    Parameters
    ----------
    values : ndarray, shape (p, 9)
        The windows' values, row by row from (-1, -1) (the order of ``_OFFSETS``).

    Returns
    -------
    coefficients : ndarray, shape (p, 6)
        c0 ... c5 [value units, per px and per px²].
    offsets : ndarray, shape (p, 2)
        Offset (x, y) of the stationary point from the centre pixel [px]; 0 where the Hessian is singular.
    maximum : ndarray of bool, shape (p,)
        True where that point is a maximum (the Hessian negative definite) within ±1 px of the centre.
    """
    c = np.asarray(values, dtype=np.float64) @ _QUADRATIC.T  # (p, 6)
    # The stationary point, where the gradient vanishes; a maximum if the Hessian
    # [[2 c3, c4], [c4, 2 c5]] is negative definite.
    h_xx, h_xy, h_yy = 2 * c[:, 3], c[:, 4], 2 * c[:, 5]
    det = h_xx * h_yy - h_xy**2
    safe_det = np.where(det > 0, det, 1.0)
    dx = (-h_yy * c[:, 1] + h_xy * c[:, 2]) / safe_det
    dy = (h_xy * c[:, 1] - h_xx * c[:, 2]) / safe_det
    maximum = (det > 0) & (h_xx < 0) & (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    return c, np.stack([dx, dy], axis=-1), maximum


def refine_peaks(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subpixel offsets and amplitudes of peaks from their 3×3 neighbourhoods.

    Parameters
    ----------
    windows : ndarray, shape (p, 3, 3)
        Intensities around each peak, the peak pixel at the centre.

    Returns
    -------
    offsets : ndarray, shape (p, 2)
        Offset (x, y) of the refined maximum from the centre pixel [px], within ±1.
    amplitude : ndarray, shape (p,)
        Height of the fitted maximum (centre value where the centre of mass was used).
    """
    values = np.asarray(windows, dtype=np.float64).reshape(-1, 9)
    centre = values[:, 4]
    positive = np.all(values > 0, axis=-1)
    c, vertex, maximum = fit_quadratic(np.log(np.where(positive[:, None], values, 1.0)))
    dx, dy = vertex[:, 0], vertex[:, 1]
    quadratic_ok = positive & maximum

    # Fallback: centre of mass of the window above its minimum.
    above = values - values.min(axis=-1, keepdims=True)
    total = above.sum(axis=-1)
    safe_total = np.where(total > 0, total, 1.0)
    com_x = np.where(total > 0, above @ _OFFSETS[:, 1] / safe_total, 0.0)
    com_y = np.where(total > 0, above @ _OFFSETS[:, 0] / safe_total, 0.0)

    offsets = np.where(quadratic_ok[:, None], np.stack([dx, dy], -1), np.stack([com_x, com_y], -1))
    log_peak = c[:, 0] + c[:, 1] * dx + c[:, 2] * dy + c[:, 3] * dx**2 + c[:, 4] * dx * dy + c[:, 5] * dy**2
    amplitude = np.where(quadratic_ok, np.exp(np.where(quadratic_ok, log_peak, 0.0)), centre)
    return offsets, amplitude


def local_maximum(images: np.ndarray, reach: int) -> np.ndarray:
    """The largest value within ``reach`` pixels (Chebyshev distance) of each pixel, per image.

    Pixels outside the image do not count (as scipy's ``maximum_filter`` with ``mode="nearest"``,
    whose result this equals exactly). A separable running maximum over shifted views: 3x faster than
    scipy's filter on batches of 128² px images, as it runs whole-array vector instructions.

    Parameters
    ----------
    images : ndarray, shape (n, H, W)
        Images.
    reach : int
        Half width of the square neighbourhood [px].

    Returns
    -------
    ndarray, shape (n, H, W)
        Neighbourhood maxima.
    """
    result = np.array(images, copy=True)
    for axis in (1, 2):
        source = result.copy()
        for lag in range(1, reach + 1):
            later = [slice(None)] * 3
            earlier = [slice(None)] * 3
            later[axis], earlier[axis] = slice(lag, None), slice(None, -lag)
            later, earlier = tuple(later), tuple(earlier)
            np.maximum(result[later], source[earlier], out=result[later])
            np.maximum(result[earlier], source[later], out=result[earlier])
    return result


def find_peaks(
    images: np.ndarray,
    threshold: float = 0.0,
    threshold_rel: float = 0.02,
    min_distance: int = 2,
    max_peaks: int = 64,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Find spots in a batch of images with subpixel positions.

    Parameters
    ----------
    images : ndarray, shape (n, H, W) or (H, W)
        Images (e.g. the network's spot image, or a diffraction pattern).
    threshold : float or ndarray (n,)
        Smallest peak value accepted [image units], for all images or one per image.
    threshold_rel : float
        Smallest peak value as a fraction of each image's maximum [1].
    min_distance : int
        A peak is the largest value within this many pixels (Chebyshev distance) [px].
    max_peaks : int
        Most peaks kept per image, the highest first.
    mask : ndarray of bool, shape like ``images``, optional
        Peaks are accepted only where the mask is True (e.g. the network's spot mask).

    Returns
    -------
    positions : ndarray, shape (n, m, 2)
        Peak positions (x, y) [px] in descending order of amplitude, NaN-padded; m ≤ ``max_peaks``.
        Peaks on the outermost pixel row or column are not reported (no window to refine).
    weights : ndarray, shape (n, m)
        Fitted peak amplitudes [image units], zero for padding.
    """
    images = np.asarray(images, dtype=np.float32)
    single = images.ndim == 2
    if single:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n, H, W) or (H, W), found {images.shape}")
    n, height, width = images.shape
    local_max = local_maximum(images, int(min_distance))
    floor = np.maximum(np.broadcast_to(threshold, (n,)), threshold_rel * images.reshape(n, -1).max(axis=-1))
    candidates = (images == local_max) & (images > floor[:, None, None])
    if mask is not None:
        candidates &= np.asarray(mask, dtype=bool).reshape(candidates.shape)
    candidates[:, [0, -1], :] = False
    candidates[:, :, [0, -1]] = False

    image_index, row, col = np.nonzero(candidates)
    values = images[image_index, row, col]
    order = np.lexsort((-values, image_index))
    image_index, row, col, values = image_index[order], row[order], col[order], values[order]
    counts = np.bincount(image_index, minlength=n)
    rank = np.arange(image_index.size) - (np.cumsum(counts) - counts)[image_index]
    keep = rank < max_peaks
    image_index, row, col, values = image_index[keep], row[keep], col[keep], values[keep]

    windows = images[
        image_index[:, None, None],
        row[:, None, None] + np.arange(-1, 2)[None, :, None],
        col[:, None, None] + np.arange(-1, 2)[None, None, :],
    ]
    offsets, amplitude = refine_peaks(windows)
    x, y = col + offsets[:, 0], row + offsets[:, 1]

    # Equal neighbouring pixels (a spot centred between pixels) are both local maxima and refine
    # to the same position: keep the first. Such pixels have equal values, so they lie close together
    # in the (image, -value) order (other spots of exactly the same value may sit between them in a
    # symmetric image): comparing each peak with its few predecessors replaces an all-pairs search.
    duplicate = np.zeros(image_index.size, dtype=bool)
    for lag in range(1, _TIE_LAGS + 1):
        same = (image_index[lag:] == image_index[:-lag]) & (values[lag:] == values[:-lag])
        duplicate[lag:] |= same & (np.hypot(x[lag:] - x[:-lag], y[lag:] - y[:-lag]) < 0.5)
    image_index, x, y, amplitude = image_index[~duplicate], x[~duplicate], y[~duplicate], amplitude[~duplicate]
    counts = np.bincount(image_index, minlength=n)
    rank = np.arange(image_index.size) - (np.cumsum(counts) - counts)[image_index]

    m = max(1, int(counts.max(initial=0)))
    positions = np.full((n, m, 2), np.nan)
    weights = np.zeros((n, m))
    positions[image_index, rank, 0] = x
    positions[image_index, rank, 1] = y
    weights[image_index, rank] = amplitude
    if single:
        return positions[0], weights[0]
    return positions, weights

"""Peaks of Fourier sums located on fine local grids (batched, torch), for the classical detectors.

A peak found on a coarse map (a correlation map, a cepstrum) by :func:`stemstrain.peaks.find_peaks`
is located again by evaluating the Fourier sum that made the map on a fine grid around it, the
matrix-multiply DFT of Guizar-Sicairos et al. (Opt. Lett. 33, 156 (2008)) that py4DSTEM uses for
Bragg disks. Evaluating the sum exactly avoids the bias of fitting a parabola to a few coarse pixels
of a peak that is not a parabola. (Images that are themselves the signal, such as the network's
spot image, are refined by :func:`stemstrain.peaks.find_peaks` alone.)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stemstrain.errors import StemstrainInputError
from stemstrain.peaks import fit_quadratic

__all__ = ["fine_grid", "fine_grid_maximum", "in_batches", "local_fourier_sum"]


def local_fourier_sum(
    spectrum: torch.Tensor,
    freq_y: torch.Tensor,
    freq_x: torch.Tensor,
    centres: torch.Tensor,
    offsets: torch.Tensor,
    sign: float,
) -> torch.Tensor:
    """Evaluate ``sum_{y,x} spectrum[y, x] exp(2πi sign (freq_y[y] r_y + freq_x[x] r_x))`` on local grids.

    Parameters
    ----------
    spectrum : complex tensor, shape (n, H, W)
        The coefficients of the sum (one map per pattern).
    freq_y, freq_x : tensor, shape (H,), (W,)
        Frequencies of the rows and columns [cycles per unit of ``r``].
    centres : tensor, shape (n, m, 2)
        Grid centres (x, y) [units of ``r``]; NaN rows give NaN.
    offsets : tensor, shape (u,)
        Grid offsets from the centre along each axis [units of ``r``].
    sign : float
        +1 for an inverse DFT, -1 for a forward one.

    Returns
    -------
    complex tensor, shape (n, m, u, u)
        Values at ``(centre_y + offsets[i], centre_x + offsets[j])``, index ``[..., i, j]``.
    """
    safe = torch.nan_to_num(centres)
    r_y = safe[..., 1, None] + offsets  # (n, m, u)
    r_x = safe[..., 0, None] + offsets
    phase_y = (2 * math.pi * sign) * r_y[..., None] * freq_y  # (n, m, u, H)
    phase_x = (2 * math.pi * sign) * r_x[..., None] * freq_x  # (n, m, u, W)
    kernel_y = torch.polar(torch.ones_like(phase_y), phase_y)
    kernel_x = torch.polar(torch.ones_like(phase_x), phase_x)
    rows = kernel_y @ spectrum[:, None]  # (n, m, u, W)
    return rows @ kernel_x.transpose(-1, -2)  # (n, m, u, u)


def fine_grid(spacing: float, upsample: int, device) -> tuple[torch.Tensor, float]:
    """Offsets of a local grid over ±1 coarse pixel, ``upsample`` steps per pixel.

    Returns
    -------
    offsets : tensor, shape (2 upsample + 1,)
        Offsets from the grid centre [units of ``spacing``].
    step : float
        Grid spacing, ``spacing / upsample``.
    """
    step = spacing / upsample
    return torch.arange(-upsample, upsample + 1, device=device) * step, step


def fine_grid_maximum(
    surface: torch.Tensor, centres: torch.Tensor, step: float, cross: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak position and height on fine local grids: the grid maximum plus a quadratic's.

    By default a three-point parabola along each axis through the grid maximum. With ``cross`` the
    full quadratic, xy term included, is fitted to the 3×3 around the grid maximum by least squares
    (:func:`stemstrain.peaks.fit_quadratic`) and its maximum taken: a peak elongated along a
    diagonal has its maximum off the row and column through the grid maximum, which the parabolas
    miss (on the template read-out's scores of the uniform series, ``bench/readout_search.py``:
    0.3-0.5 mpx RMS from the scores' maximum on a 1/32 px grid, against 2.6-3.2 for the parabolas,
    static lattice at 1e6 e-; 1.2-1.6 on a 1/16 px grid). Where the fit has no maximum within one
    step (a saddle, a flat or noisy surface)
    or the grid maximum lies on the border, the parabolas' position is kept.

    Parameters
    ----------
    surface : real tensor, shape (n, m, u, u)
        Values on the grids of :func:`local_fourier_sum`, index ``[..., y, x]``.
    centres : tensor, shape (n, m, 2)
        Grid centres (x, y); NaN rows are missing peaks.
    step : float
        Grid spacing, in the units of ``centres``.
    cross : bool
        Fit the full quadratic on the 3×3 (see above) rather than two parabolas.

    Returns
    -------
    positions : tensor, shape (n, m, 2)
        Peak positions (x, y); NaN where ``centres`` is NaN.
    heights : tensor, shape (n, m)
        Surface value at the grid maximum; 0 where ``centres`` is NaN.
    """
    n, m, u, _ = surface.shape
    flat = surface.reshape(n, m, u * u)
    heights, index = flat.max(dim=-1)
    iy, ix = index // u, index % u

    # Neighbours clamped at the grid border: a maximum on the border gets no parabolic shift.
    def parabola(minus, centre, plus):
        curvature = minus - 2 * centre + plus
        shift = 0.5 * (minus - plus) / torch.where(curvature < 0, curvature, -torch.ones_like(curvature))
        return torch.where(curvature < 0, shift.clamp(-0.5, 0.5), torch.zeros_like(shift))

    def at(y, x):
        return flat.gather(-1, (y.clamp(0, u - 1) * u + x.clamp(0, u - 1))[..., None])[..., 0]

    centre = heights
    dy = parabola(at(iy - 1, ix), centre, at(iy + 1, ix))
    dx = parabola(at(iy, ix - 1), centre, at(iy, ix + 1))
    inner_y, inner_x = (iy > 0) & (iy < u - 1), (ix > 0) & (ix < u - 1)
    dy = torch.where(inner_y, dy, torch.zeros_like(dy))
    dx = torch.where(inner_x, dx, torch.zeros_like(dx))
    if cross:
        window = torch.stack([at(iy + wy, ix + wx) for wy in (-1, 0, 1) for wx in (-1, 0, 1)], dim=-1)
        _, vertex, maximum = fit_quadratic(window.reshape(-1, 9).cpu().numpy())
        vertex = torch.as_tensor(vertex, dtype=dx.dtype, device=dx.device).reshape(n, m, 2)
        fits = inner_y & inner_x & torch.as_tensor(maximum, device=dx.device).reshape(n, m)
        dx = torch.where(fits, vertex[..., 0], dx)
        dy = torch.where(fits, vertex[..., 1], dy)
    half = (u - 1) / 2
    offset = torch.stack([(ix - half + dx) * step, (iy - half + dy) * step], dim=-1)
    found = torch.isfinite(centres).all(dim=-1)
    return centres + offset, torch.where(found, heights, torch.zeros_like(heights))


def in_batches(detect, patterns: np.ndarray, batch_size: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Check the pattern shape, run ``detect`` on batches of patterns and join the NaN-padded results.

    The local Fourier sums hold (batch × peaks × grid × pixels) complex numbers, so bounded
    batches bound the memory whatever the caller's chunk size.

    Raises
    ------
    StemstrainInputError
        If ``patterns`` is not (n, *shape).
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    if patterns.ndim != 3 or patterns.shape[1:] != tuple(shape):
        raise StemstrainInputError(f"patterns must have shape (n, {shape[0]}, {shape[1]}), found {patterns.shape}")
    results = [detect(patterns[start : start + batch_size]) for start in range(0, len(patterns), batch_size)]
    m = max(1, *(positions.shape[1] for positions, _ in results))
    positions = np.full((len(patterns), m, 2), np.nan)
    weights = np.zeros((len(patterns), m))
    start = 0
    for batch_positions, batch_weights in results:
        stop = start + len(batch_positions)
        positions[start:stop, : batch_positions.shape[1]] = batch_positions
        weights[start:stop, : batch_weights.shape[1]] = batch_weights
        start = stop
    return positions, weights

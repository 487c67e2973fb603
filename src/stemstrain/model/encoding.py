"""How Bragg spots are written into the network's output channels, and read back.

One home for the representation, so that training (targets, validation) and inference (the read-out)
agree by construction:

* channel 0, mask logit: a pixel lies within ``CUTOFF_SIGMAS`` σ of a spot centre;
* channel 1, spot image: ``Σ a^p exp(-p r² / 2σ²)`` over spots of amplitude a (the target image,
  normalised as :func:`stemstrain.model.loss.normalise_target` does: a Gaussian of the same centre);
* channels 2, 3 (optional): offset (x, y) from the pixel centre to the nearest spot centre [px], defined
  within ``OFFSET_RADIUS`` of a centre;
* channel 4 (optional): log σ of that offset [log px], trained as a Gaussian negative log-likelihood.

A spot's position is read back at its peak pixel (:func:`stemstrain.peaks.find_peaks`, the one peak finder)
and, when the offset channels exist, moved to the mean of ``q + offset(q)`` over the pixels q within a pixel
of the peak (inside the region where offsets are trained), each weighted by ``1/σ(q)²``; the fit then
weights the spot by ``1/σ²``, or, given the patterns and their disk radius r, by ``1/(σ² + r²/N)`` with N
the counts of the disk. σ is learned against kinematic truth, so it holds the dynamical error the network
could not remove as much as counting noise, and it varies less from spot to spot than counting noise
does; r²/N (four times the variance of the centroid of a uniform disk) puts the counting noise back.
On the uniform series at 1e4 e⁻ (``bench/uniform_series.py``) it lowered general-v2's error from 19.8 to
17.7e-4 in all 15 crystal × thickness cases, at 1e5 e⁻ from 9.8 to 9.2e-4, and left 1e6 e⁻ at 6.9e-4.
N includes any diffuse background under the disk, so a faint disk on a strong halo weighs as if it
were brighter than it is (on the MgO scan, whose counts are mostly halo, the map did not change).
Positions are ``(x, y)`` pixels, x the column (k_x).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from stemstrain.peaks import find_peaks

__all__ = ["CUTOFF_SIGMAS", "OFFSET_RADIUS", "SpotTargets", "decode_spots", "disk_counts", "render_targets"]

CUTOFF_SIGMAS = 3.0  # target spots are cut to zero beyond this many σ: target > 0 is the spot mask
OFFSET_RADIUS = 1.5  # pixels whose centre lies this close to a spot centre carry its offset [px]
LOG_SIGMA_RANGE = (-5.0, 3.0)  # clamp of the predicted log σ [log px]


class SpotTargets(NamedTuple):
    """Training targets of a batch rendered from spot lists.

    Attributes
    ----------
    image : Tensor (N, H, W)
        Spot image in [0, 1]; zero beyond ``CUTOFF_SIGMAS`` σ of every spot (its support is the mask).
    offsets : Tensor (N, 2, H, W)
        Offset (x, y) from each pixel centre to the nearest spot centre [px] (0 where undefined).
    offset_mask : Tensor of bool (N, H, W)
        Pixels within ``OFFSET_RADIUS`` of a spot centre, where ``offsets`` is defined.
    """

    image: torch.Tensor
    offsets: torch.Tensor
    offset_mask: torch.Tensor


def render_targets(
    spots: torch.Tensor, amplitudes: torch.Tensor, size: int, sigma_px: float = 1.0, power: float = 0.5
) -> SpotTargets:
    """Render spot lists into the network's target channels.

    Parameters
    ----------
    spots : Tensor (N, M, 2)
        Spot centres (x, y) [px]; NaN rows are padding.
    amplitudes : Tensor (N, M)
        Spot amplitudes in [0, 1] (sqrt of the kinematic intensity); 0 for padding.
    size : int
        Image side [px].
    sigma_px : float
        Gaussian σ of the stored target spots [px].
    power : float
        Target power p: a spot becomes ``a^p exp(-p r² / 2σ²)`` (weak spots stay visible).

    Returns
    -------
    SpotTargets
    """
    n, m, _ = spots.shape
    device = spots.device
    valid = torch.isfinite(spots).all(dim=-1) & (amplitudes > 0)
    centres = torch.where(valid[..., None], spots, torch.full_like(spots, -1e4)).float()
    reach = int(np.ceil(CUTOFF_SIGMAS * sigma_px)) + 1
    steps = torch.arange(-reach, reach + 1, device=device, dtype=torch.float32)
    base = torch.floor(centres)
    cols = base[..., 0, None, None] + steps[None, None, None, :]  # (N, M, 1, w)
    rows = base[..., 1, None, None] + steps[None, None, :, None]  # (N, M, w, 1)
    dx = centres[..., 0, None, None] - cols  # offset from the pixel to the centre
    dy = centres[..., 1, None, None] - rows
    r2 = dx**2 + dy**2  # (N, M, w, w)
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size) & valid[..., None, None]
    pixel = rows.clamp(0, size - 1).long() * size + cols.clamp(0, size - 1).long()
    flat = torch.arange(n, device=device)[:, None, None, None] * (size * size) + pixel
    flat = flat.expand(r2.shape)

    in_spot = inside & (r2 <= (CUTOFF_SIGMAS * sigma_px) ** 2)
    values = amplitudes.float().clamp_min(0)[..., None, None] ** power * torch.exp(-power * r2 / (2 * sigma_px**2))
    image = torch.zeros(n * size * size, device=device)
    image.index_add_(0, flat[in_spot], values[in_spot])

    near = inside & (r2 <= OFFSET_RADIUS**2)
    offsets = torch.zeros(2, n * size * size, device=device)
    # Spots lie several pixels apart, so the offset windows do not overlap.
    offsets[0, flat[near]] = dx.expand(r2.shape)[near]
    offsets[1, flat[near]] = dy.expand(r2.shape)[near]
    offset_mask = torch.zeros(n * size * size, dtype=torch.bool, device=device)
    offset_mask[flat[near]] = True
    return SpotTargets(
        image.reshape(n, size, size).clamp(max=1.0),
        offsets.reshape(2, n, size, size).transpose(0, 1).contiguous(),
        offset_mask.reshape(n, size, size),
    )


def decode_spots(
    outputs: np.ndarray,
    threshold_rel: float = 0.01,
    min_distance: int = 2,
    max_peaks: int = 64,
    patterns: np.ndarray | None = None,
    disk_radius_px: float | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Spot positions and fit weights from network outputs.

    Parameters
    ----------
    outputs : ndarray (N, C, H, W)
        Network output: mask logit, spot image and, when C = 5, offsets (x, y) [px] and log σ.
    threshold_rel, min_distance, max_peaks
        Peak finding in the spot image (:func:`stemstrain.peaks.find_peaks`); peaks count only where the
        mask logit is positive.
    patterns : ndarray (N, H, W), optional
        The network's input patterns [counts]; with ``disk_radius_px`` the weights add the counting noise.
    disk_radius_px : float or ndarray (N,), optional
        Disk radius r of the patterns [px] (α/λ over the pixel size).

    Returns
    -------
    positions : ndarray (N, m, 2)
        Spot centres (x, y) [px], NaN-padded.
    weights : ndarray (N, m)
        Fit weights [1/px²]: ``1/(σ² + r²/N)`` with offsets, patterns and radius, ``1/σ²`` with offsets
        alone, else the spot image's peak height; 0 for padding.
    """
    outputs = np.asarray(outputs, dtype=np.float32)
    mask = outputs[:, 0] > 0
    positions, heights = find_peaks(
        outputs[:, 1], threshold_rel=threshold_rel, min_distance=min_distance, max_peaks=max_peaks, mask=mask
    )
    if outputs.shape[1] < 5:
        return positions, heights
    positions, weights = _refine_by_offsets(outputs, positions)
    if patterns is None or disk_radius_px is None:
        return positions, weights
    radius = np.broadcast_to(np.asarray(disk_radius_px, dtype=float), (len(outputs),))[:, None]
    counts = disk_counts(patterns, positions, radius)
    with np.errstate(divide="ignore"):
        variance = np.where(weights > 0, 1.0 / weights, np.inf) + radius**2 / np.maximum(counts, 1.0)
    return positions, np.where(weights > 0, 1.0 / variance, 0.0)


def disk_counts(patterns: np.ndarray, positions: np.ndarray, disk_radius_px: float | np.ndarray) -> np.ndarray:
    """Counts within ``r + 0.5`` px of each position: the counts of a disk of radius r centred there.

    Parameters
    ----------
    patterns : ndarray (N, H, W)
        Patterns [counts].
    positions : ndarray (N, m, 2)
        Disk centres (x, y) [px], NaN-padded.
    disk_radius_px : float or ndarray (N, 1)
        Disk radius [px].

    Returns
    -------
    ndarray (N, m)
        Summed counts; 0 for padding.
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    n, height, width = patterns.shape
    radius = np.broadcast_to(np.asarray(disk_radius_px, dtype=float).reshape(-1, 1), (n, 1))
    reach = int(np.ceil(radius.max() + 0.5))
    found = np.all(np.isfinite(positions), axis=-1)
    x = np.where(found, positions[..., 0], -1e4)
    y = np.where(found, positions[..., 1], -1e4)
    step = np.arange(-reach, reach + 1)
    cols = np.rint(x)[..., None, None].astype(int) + step[None, :]  # (N, m, 1, w)
    rows = np.rint(y)[..., None, None].astype(int) + step[:, None]  # (N, m, w, 1)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    within = (cols - x[..., None, None]) ** 2 + (rows - y[..., None, None]) ** 2 <= (radius[..., None, None] + 0.5) ** 2
    image = np.arange(n)[:, None, None, None]
    values = patterns[image, rows.clip(0, height - 1), cols.clip(0, width - 1)]
    return np.where(inside & within, values, np.float32(0.0)).sum(axis=(-2, -1), dtype=np.float64)


def _refine_by_offsets(outputs: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``q + offset(q)`` over the pixels q within 1 px of each peak, weighted by 1/σ(q)²."""
    n, _, height, width = outputs.shape
    found = np.all(np.isfinite(positions), axis=-1)
    col = np.rint(np.where(found, positions[..., 0], 0)).astype(int)
    row = np.rint(np.where(found, positions[..., 1], 0)).astype(int)
    step = np.arange(-1, 2)
    rows = np.clip(row[..., None, None] + step[:, None], 0, height - 1)  # (N, m, 3, 1)
    cols = np.clip(col[..., None, None] + step[None, :], 0, width - 1)  # (N, m, 1, 3)
    image = np.arange(n)[:, None, None, None]
    x = cols + outputs[image, 2, rows, cols]
    y = rows + outputs[image, 3, rows, cols]
    log_sigma = np.clip(outputs[image, 4, rows, cols], *LOG_SIGMA_RANGE)
    # Offsets are trained within OFFSET_RADIUS of a centre: use the pixels within a pixel of the peak.
    near = (cols - positions[..., 0, None, None]) ** 2 + (rows - positions[..., 1, None, None]) ** 2 <= 1.0
    inverse_variance = np.where(near, np.exp(-2.0 * log_sigma), 0.0)
    total = inverse_variance.sum(axis=(-2, -1))
    refined = np.stack([(x * inverse_variance).sum(axis=(-2, -1)), (y * inverse_variance).sum(axis=(-2, -1))], -1)
    with np.errstate(invalid="ignore", divide="ignore"):  # padding (no peak) has no weight: NaN, masked below
        refined = refined / total[..., None]
    centre_variance = np.exp(2.0 * np.clip(outputs[image[..., 0, 0], 4, row, col], *LOG_SIGMA_RANGE))
    return np.where(found[..., None], refined, np.nan), np.where(found, 1.0 / centre_variance, 0.0)

"""How precisely a pattern's counts could fix its strain: the Cramér–Rao bound of the disk geometry.

A pattern with expected counts λ(k) is a set of disks; a strain (and a rotation, and a descan shift)
moves each disk rigidly by ``u = D g``, g being the disk's centre relative to k = 0 and D the
displacement gradient. Under Poisson counting noise the Fisher information of the parameters is
``I_ab = Σ_k (∂λ/∂a)(∂λ/∂b) / λ`` with ``∂λ/∂a = -∇λ · ∂u/∂a`` over the pixels of the disks, and no
unbiased estimator has a variance below ``(I⁻¹)_aa``. The bound counts the information in where the
disks lie, not in how their intensities change with strain, and treats each disk's image as known: an
estimator that must also learn that image (from the data or from a model) does worse.

Gradients are central differences. At a disk edge sharper than a pixel they give the dark pixel just
outside the edge a slope it does not have, and a large weight (1/λ), so on sharp simulated disks the
bound comes out optimistic (too low). A detector point-spread (``psf_px``) softens the edges: with
0.5 px the suite's Si [110] bounds rise 1.6× (``bench/bound.py`` reports both).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["PARAMETERS", "strain_bound"]

PARAMETERS = ("e_xx", "e_yy", "e_xy", "theta", "shift_x", "shift_y")
"""The parameters of the bound, in the order of its covariance: strain [1], rotation [rad], descan shift [px]."""


def strain_bound(
    counts: np.ndarray,
    spots_px: np.ndarray,
    centre: tuple[float, float],
    disk_radius_px: float,
    psf_px: float = 0.0,
) -> np.ndarray:
    """Cramér–Rao bound on the strain of one pattern from its disks' positions.

    Parameters
    ----------
    counts : ndarray (H, W)
        Expected counts per pixel λ [e-] (the clean pattern times the dose), not a noisy draw.
    spots_px : ndarray (m, 2)
        Disk centres (x, y) [px], relative to ``centre``; NaN rows are ignored.
    centre : (float, float)
        Pixel index (y, x) of k = 0.
    disk_radius_px : float
        Disk radius [px]; pixels within this radius plus 1.5 px of a centre belong to its disk.
    psf_px : float
        σ of a Gaussian detector point-spread [px] applied to ``counts`` first; 0 for none.

    Returns
    -------
    ndarray (6, 6)
        Lower bound of the covariance of ``PARAMETERS`` (inverse Fisher information); infinite
        where the disks do not fix a parameter.
    """
    spots = np.asarray(spots_px, dtype=float)
    spots = spots[np.all(np.isfinite(spots), axis=-1)]
    counts = np.asarray(counts, dtype=float)
    if psf_px > 0:
        counts = ndimage.gaussian_filter(counts, psf_px, mode="constant")
    if len(spots) < 3:
        return np.full((len(PARAMETERS), len(PARAMETERS)), np.inf)
    grad_y, grad_x = np.gradient(counts)
    y, x = np.indices(counts.shape, dtype=float)
    pixel = np.stack([x - centre[1], y - centre[0]], axis=-1).reshape(-1, 2)
    distance = np.linalg.norm(pixel[:, None, :] - spots[None], axis=-1)
    nearest = distance.argmin(axis=-1)
    inside = (distance[np.arange(len(pixel)), nearest] <= disk_radius_px + 1.5) & (counts.reshape(-1) > 0)
    g_x, g_y = spots[nearest[inside], 0], spots[nearest[inside], 1]
    zero, one = np.zeros_like(g_x), np.ones_like(g_x)
    # Displacement (u_x, u_y) of a disk at g per unit of each parameter: u = (ε + ω) g + shift.
    moves = [(g_x, zero), (zero, g_y), (g_y, g_x), (-g_y, g_x), (one, zero), (zero, one)]
    gx, gy = grad_x.reshape(-1)[inside], grad_y.reshape(-1)[inside]
    jacobian = np.stack([-(gx * u_x + gy * u_y) for u_x, u_y in moves], axis=-1)
    fisher = (jacobian / counts.reshape(-1)[inside][:, None]).T @ jacobian
    try:
        return np.linalg.inv(fisher)
    except np.linalg.LinAlgError:
        return np.full_like(fisher, np.inf)

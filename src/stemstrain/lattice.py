"""Reciprocal lattices, peak indexing and weighted lattice fits (pure, batched).

Convention (DESIGN.md): vectors are ``(x, y)`` pairs, x the horizontal axis (scan_x, k_x), y the
vertical one (scan_y, k_y). A lattice is a ``(..., 2, 2)`` matrix whose *columns* are its two basis
vectors, so ``G[..., :, 0]`` is g1 and ``G[..., :, 1]`` is g2. Reciprocal vectors carry no 2π:
``a_i · b_j = δ_ij``. Every function takes and returns arrays, batched over leading dimensions.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "fit_lattice",
    "fit_lattice_robust",
    "index_peaks",
    "lattice_points",
    "reciprocal_vectors",
]


def reciprocal_vectors(real_vectors: np.ndarray) -> np.ndarray:
    """Reciprocal basis of a 2-D lattice.

    Parameters
    ----------
    real_vectors : ndarray, shape (..., 2, 2)
        Real-space basis vectors a1, a2 as columns [angstrom].

    Returns
    -------
    ndarray, shape (..., 2, 2)
        Reciprocal basis vectors b1, b2 as columns [1/angstrom], with ``b_i · a_j = δ_ij``.
        The map is its own inverse: applying it twice returns ``real_vectors``.
    """
    return np.swapaxes(np.linalg.inv(real_vectors), -1, -2)


def lattice_points(lattice: np.ndarray, hk: np.ndarray, origin: np.ndarray | None = None) -> np.ndarray:
    """Positions ``origin + h g1 + k g2`` of lattice points.

    Parameters
    ----------
    lattice : ndarray, shape (..., 2, 2)
        Basis vectors as columns [1/angstrom or px].
    hk : ndarray, shape (n, 2) or (..., n, 2)
        Integer (or real) indices of the points.
    origin : ndarray, shape (..., 2), optional
        Position of the (0, 0) point; zero when omitted.

    Returns
    -------
    ndarray, shape (..., n, 2)
        Point positions (x, y) in the units of ``lattice``.
    """
    points = np.einsum("...ij,...nj->...ni", lattice, np.asarray(hk, dtype=float))
    if origin is not None:
        points = points + np.asarray(origin)[..., None, :]
    return points


def index_peaks(
    positions: np.ndarray,
    lattice: np.ndarray,
    origin: np.ndarray | None = None,
    tolerance: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign integer indices (h, k) to measured peaks from an approximate lattice.

    Parameters
    ----------
    positions : ndarray, shape (..., n, 2)
        Peak positions (x, y); NaN rows are missing peaks.
    lattice : ndarray, shape (2, 2) or (..., 2, 2)
        Approximate basis vectors as columns, in the units of ``positions``.
    origin : ndarray, shape (2,) or (..., 2), optional
        Approximate position of the (0, 0) point; zero when omitted.
    tolerance : float
        Largest distance from an integer index, in fractional coordinates, for a peak to count as
        indexed.

    Returns
    -------
    hk : ndarray of int, shape (..., n, 2)
        Nearest integer indices (0 where the peak is missing).
    indexed : ndarray of bool, shape (..., n)
        True where the peak lies within ``tolerance`` of a lattice point.
    """
    relative = np.asarray(positions, dtype=float)
    if origin is not None:
        relative = relative - np.asarray(origin)[..., None, :]
    inverse = np.linalg.inv(lattice)
    fractional = np.einsum("...ij,...nj->...ni", inverse, relative)
    finite = np.all(np.isfinite(fractional), axis=-1)
    nearest = np.where(finite[..., None], np.round(fractional), 0.0)
    distance = np.max(np.abs(fractional - nearest), axis=-1)
    indexed = finite & (distance <= tolerance)
    return nearest.astype(int), indexed


def fit_lattice(
    positions: np.ndarray,
    hk: np.ndarray,
    weights: np.ndarray | None = None,
    fit_origin: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares fit of ``position = origin + h g1 + k g2``.

    Parameters
    ----------
    positions : ndarray, shape (..., n, 2)
        Measured peak positions (x, y); rows with NaN are ignored.
    hk : ndarray, shape (n, 2) or (..., n, 2)
        Integer indices of each peak.
    weights : ndarray, shape (..., n), optional
        Non-negative weights (e.g. peak intensity); zero excludes a peak. Uniform when omitted.
    fit_origin : bool
        Fit the position of the (0, 0) point (True) or hold it at zero (False).

    Returns
    -------
    lattice : ndarray, shape (..., 2, 2)
        Fitted basis vectors g1, g2 as columns; NaN where fewer peaks than unknowns were usable.
    origin : ndarray, shape (..., 2)
        Fitted (0, 0) position (zeros when ``fit_origin`` is False).
    residual : ndarray, shape (..., n)
        Distance of each peak from its fitted lattice point (NaN for unused peaks).
    """
    positions = np.asarray(positions, dtype=float)
    hk = np.broadcast_to(np.asarray(hk, dtype=float), positions.shape)
    if weights is None:
        weights = np.ones(positions.shape[:-1])
    usable = np.all(np.isfinite(positions), axis=-1) & np.isfinite(weights) & (weights > 0)
    w = np.where(usable, weights, 0.0)
    clean = np.where(usable[..., None], positions, 0.0)

    columns = [hk[..., 0], hk[..., 1]]
    if fit_origin:
        columns.insert(0, np.ones_like(hk[..., 0]))
    design = np.stack(columns, axis=-1)  # (..., n, p)
    n_params = design.shape[-1]
    normal = np.einsum("...np,...n,...nq->...pq", design, w, design)
    rhs = np.einsum("...np,...n,...nc->...pc", design, w, clean)

    # Rank-deficient fits (too few or collinear peaks) give NaN instead of an arbitrary answer.
    enough = (usable.sum(axis=-1) >= n_params) & (np.abs(np.linalg.det(normal)) > 1e-12)
    safe_normal = np.where(enough[..., None, None], normal, np.eye(n_params))
    params = np.linalg.solve(safe_normal, rhs)  # (..., p, 2)
    params = np.where(enough[..., None, None], params, np.nan)

    origin = params[..., 0, :] if fit_origin else np.zeros(positions.shape[:-2] + (2,))
    lattice = np.swapaxes(params[..., -2:, :], -1, -2)  # rows (g1, g2) -> columns
    predicted = lattice_points(lattice, hk, origin)
    residual = np.where(usable, np.linalg.norm(positions - predicted, axis=-1), np.nan)
    return lattice, origin, residual


def fit_lattice_robust(
    positions: np.ndarray,
    hk: np.ndarray,
    weights: np.ndarray | None = None,
    fit_origin: bool = True,
    n_iterations: int = 3,
    rejection: float = 3.0,
    floor: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lattice fit with iterative outlier rejection.

    After each weighted fit, peaks whose residual exceeds ``rejection`` times the robust spread
    (1.4826 × median absolute residual, at least ``floor``) are dropped and the fit repeated.

    Parameters
    ----------
    positions, hk, weights, fit_origin
        As in :func:`fit_lattice`.
    n_iterations : int
        Number of rejection rounds.
    rejection : float
        Rejection threshold in units of the robust spread.
    floor : float
        Smallest spread [units of ``positions``], so that exact data reject nothing.

    Returns
    -------
    lattice, origin, residual
        As in :func:`fit_lattice`, from the last round.
    inliers : ndarray of bool, shape (..., n)
        Peaks used in the last round.
    """
    positions = np.asarray(positions, dtype=float)
    if weights is None:
        weights = np.ones(positions.shape[:-1])
    inliers = np.all(np.isfinite(positions), axis=-1) & (np.asarray(weights) > 0)
    for _ in range(n_iterations + 1):
        lattice, origin, residual = fit_lattice(positions, hk, np.where(inliers, weights, 0.0), fit_origin)
        with warnings.catch_warnings():  # a pattern without inliers has a NaN spread, and no fit
            warnings.simplefilter("ignore", RuntimeWarning)
            spread = np.maximum(1.4826 * np.nanmedian(np.where(inliers, residual, np.nan), axis=-1), floor)
        keep = inliers & (residual <= rejection * spread[..., None])
        if np.array_equal(keep, inliers):
            break
        inliers = keep
    return lattice, origin, residual, inliers

"""Reciprocal lattices, peak indexing, lattice fits, reduced bases and the initial lattice (pure, batched).

Convention (docs/DESIGN.md): vectors are ``(x, y)`` pairs, x the horizontal axis (scan_x, k_x), y the
vertical one (scan_y, k_y). A lattice is a ``(..., 2, 2)`` matrix whose *columns* are its two basis
vectors, so ``G[..., :, 0]`` is g1 and ``G[..., :, 1]`` is g2. Reciprocal vectors carry no 2π:
``a_i · b_j = δ_ij``. Every function takes and returns arrays, batched over leading dimensions.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from stemstrain.errors import StemstrainInputError

__all__ = [
    "FitOptions",
    "fit_lattice",
    "fit_lattice_robust",
    "fit_patterns",
    "index_peaks",
    "initial_lattice",
    "lagrange_reduce",
    "lattice_points",
    "reciprocal_vectors",
    "reduced_basis",
    "reflection_calibration",
    "SCATTER_LIMIT",
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
        True where the peak lies within ``tolerance`` of a lattice point; False for every peak of a
        pattern whose lattice is not finite or has (nearly) collinear basis vectors.
    """
    relative = np.asarray(positions, dtype=float)
    if origin is not None:
        relative = relative - np.asarray(origin)[..., None, :]
    lattice = np.asarray(lattice, dtype=float)
    # A collinear basis spans no cell: nothing can be indexed on it (inverting it would raise).
    regular = np.abs(np.linalg.det(lattice)) > 1e-9 * np.sum(lattice**2, axis=(-2, -1))
    inverse = np.linalg.inv(np.where(regular[..., None, None], lattice, np.eye(2)))
    fractional = np.einsum("...ij,...nj->...ni", inverse, relative)
    finite = np.all(np.isfinite(fractional), axis=-1) & regular[..., None]
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


def reduced_basis(points: np.ndarray, weights: np.ndarray | None = None, max_points: int = 32) -> np.ndarray:
    """The two shortest non-collinear lattice vectors of a set of spots.

    Candidate bases are pairs of the shortest difference vectors between spots; the one that
    indexes the most spots wins, and among equals the one with the largest cell (a finer lattice
    indexes everything too, but only spurious close spots produce it). The winner is
    Lagrange-reduced and made right-handed (det > 0) with g1 pointing to +x.

    Parameters
    ----------
    points : ndarray, shape (n, 2)
        Spot positions (x, y); NaN rows are ignored.
    weights : ndarray, shape (n,), optional
        Spot strengths; the ``max_points`` strongest are used.
    max_points : int
        Most spots considered.

    Returns
    -------
    ndarray, shape (2, 2)
        Basis vectors as columns, in the units of ``points``; NaN when fewer than three spots
        or no two non-collinear differences exist.
    """
    points = np.asarray(points, dtype=float)
    finite = np.all(np.isfinite(points), axis=-1)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(-np.where(finite, weights, -np.inf))[: min(max_points, int(finite.sum()))]
    points = points[order]
    nan_basis = np.full((2, 2), np.nan)
    if len(points) < 3:
        return nan_basis
    diffs = (points[:, None, :] - points[None, :, :])[np.triu_indices(len(points), k=1)]
    length = np.linalg.norm(diffs, axis=-1)
    scale = np.median(length)
    diffs, length = diffs[length > 1e-3 * scale], length[length > 1e-3 * scale]
    # The same lattice vector appears between many pairs of spots: keep one per vector (up to sign).
    diffs = np.where((diffs[:, :1] < 0) | ((diffs[:, :1] == 0) & (diffs[:, 1:] < 0)), -diffs, diffs)
    diffs = diffs[np.argsort(length)]
    candidates: list[np.ndarray] = []
    for vector in diffs:
        if all(np.linalg.norm(vector - known) > 0.05 * np.linalg.norm(known) for known in candidates):
            candidates.append(vector)
            if len(candidates) == 8:
                break
    best, best_score = nan_basis, (-1, -np.inf)
    for i in range(len(candidates)):
        for j in range(i + 1, len(candidates)):
            basis = np.stack([candidates[i], candidates[j]], axis=-1)
            area = abs(np.linalg.det(basis))
            if area < 0.2 * np.linalg.norm(candidates[i]) * np.linalg.norm(candidates[j]):
                continue  # (nearly) collinear
            _, indexed = index_peaks(points - points[0], basis, tolerance=0.15)
            score = (int(indexed.sum()), area)
            if score > best_score:
                best, best_score = basis, score
    if not np.all(np.isfinite(best)):
        return nan_basis
    return lagrange_reduce(best)


def lagrange_reduce(basis: np.ndarray) -> np.ndarray:
    """The Lagrange-reduced basis of the same lattice, right-handed (det > 0), g1 towards +x.

    Parameters
    ----------
    basis : ndarray, shape (2, 2)
        Basis vectors as columns.
    """
    g1, g2 = basis[:, 0].copy(), basis[:, 1].copy()
    for _ in range(32):
        if g2 @ g2 < g1 @ g1:
            g1, g2 = g2, g1
        shift = np.round((g1 @ g2) / (g1 @ g1))
        if shift == 0:
            break
        g2 = g2 - shift * g1
    if g1[0] < 0 or (g1[0] == 0 and g1[1] < 0):
        g1 = -g1
    if g1[0] * g2[1] - g1[1] * g2[0] < 0:
        g2 = -g2
    return np.stack([g1, g2], axis=-1)


SCATTER_LIMIT = 2.0
"""``FitOptions.scatter_limit`` where the detector's weights are inverse variances; chosen on the validation
scans (bench/validation.yaml: geometric mean 0.938 of the network's error without it; 4: 0.960)."""


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """Indexing and lattice-fit settings.

    Attributes
    ----------
    tolerance : float
        Largest distance of a peak from a lattice point, in fractions of the cell, to be indexed.
    min_peaks : int or None
        Fewest inlier peaks for a valid fit; default: unknowns + 2 (5 with origin, 4 without).
    max_fit_error : float
        Largest weighted RMS residual for a valid fit, as a fraction of the shorter lattice vector [1].
    rejection : float
        Outlier threshold of the robust fit, in robust standard deviations.
    n_iterations : int
        Index-and-fit rounds (the second indexes with the first fit, for strong strain).
    static_offsets : bool
        Measure each reflection's static displacement from the lattice in the reference region and
        take it off every pattern's spot before the fit (:func:`reflection_calibration`): a calibration
        of detector distortion, for real data. Off by default: on the real MgO nanocube scan it
        lowers the bragg spread 2.4x, but on the distortion-free multislice suite, where the offsets
        are dynamical and change with the strain, it is better on Si [110] 75 nm (10.3 -> 9.5e-4)
        and worse on SrTiO3 [001] (15.1 -> 16.4e-4) and Au [001] (6.3 -> 7.0e-4).
    scatter_limit : float, optional
        A reflection whose spots scatter about the reference region's fitted lattices more than this
        many times the median reflection does, each measured against its spots' own fit weights, has
        its weight scaled down by the excess in every pattern (:func:`reflection_calibration`): fit
        weights that understate a reflection's noise are corrected from the data. Faint outer disks
        under thermal diffuse scattering scatter 5-15x more than their weights say (Si [110] 55 nm
        with 4 frozen phonons). 0 switches it off; None (default): :data:`SCATTER_LIMIT` for a detector
        whose weights are inverse variances (the network's offsets read-out), else 0 (correlation
        heights, whose scatter says nothing of their noise), as ``strain`` resolves it.
    """

    tolerance: float = 0.25
    min_peaks: int | None = None
    max_fit_error: float = 0.05
    rejection: float = 3.0
    n_iterations: int = 2
    static_offsets: bool = False
    scatter_limit: float | None = None


def fit_patterns(
    positions: np.ndarray,
    weights: np.ndarray,
    lattice0: np.ndarray,
    origin0: np.ndarray,
    fit_origin: bool = True,
    options: FitOptions = FitOptions(),
    calibration: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Index the peaks of many patterns to an initial lattice and fit each lattice robustly.

    Parameters
    ----------
    positions : ndarray, shape (n, m, 2)
        Peak positions (x, y), NaN-padded.
    weights : ndarray, shape (n, m)
        Peak weights (zero for padding).
    lattice0 : ndarray, shape (2, 2) or (n, 2, 2)
        Initial basis vectors as columns, units of ``positions`` (one for all patterns, or one each).
    origin0 : ndarray, shape (2,) or (n, 2)
        Initial position of the (0, 0) point.
    fit_origin : bool
        Fit the (0, 0) position per pattern (reciprocal space: descan) or hold it at zero.
    options : FitOptions
        Indexing and validity settings.
    calibration : ndarray, shape (r, 5), optional
        Rows (h, k, dx, dy, factor) of :func:`reflection_calibration`: every indexed peak (h, k) is
        moved by (-dx, -dy) and its weight multiplied by ``factor`` before the fit; reflections without
        a row are fitted as measured.

    Returns
    -------
    dict of ndarray
        ``lattice`` (n, 2, 2) columns g1, g2; ``origin`` (n, 2); ``fit_error`` (n,) RMS residual of
        the inliers, weighted by their fit weights (units of ``positions``); ``n_peaks`` (n,) inliers;
        ``valid`` (n,) bool; ``hk`` (n, m, 2) indices and ``inliers`` (n, m), the peaks of the last fit.
    """
    positions = np.asarray(positions, dtype=float)
    weights = np.asarray(weights, dtype=float)
    n = positions.shape[0]
    lattice = np.broadcast_to(np.asarray(lattice0, dtype=float), (n, 2, 2))
    origin = np.broadcast_to(np.asarray(origin0, dtype=float) if fit_origin else np.zeros(2), (n, 2))
    min_peaks = options.min_peaks if options.min_peaks is not None else (5 if fit_origin else 4)
    inliers = np.zeros(positions.shape[:2], dtype=bool)
    residual = np.full(positions.shape[:2], np.nan)
    for _ in range(max(1, options.n_iterations)):
        # A failed fit falls back to the initial lattice for the next round's indexing.
        usable = np.all(np.isfinite(lattice), axis=(-2, -1)) & np.all(np.isfinite(origin), axis=-1)
        lattice_guess = np.where(usable[:, None, None], lattice, lattice0)
        origin_guess = np.where(usable[:, None], origin, origin0 if fit_origin else 0.0)
        hk, indexed = index_peaks(positions, lattice_guess, origin_guess, options.tolerance)
        shift, factor = _calibration_of(calibration, hk)
        fit_weights = np.where(indexed, weights * factor, 0.0)
        corrected = positions - shift
        lattice, origin, residual, inliers = fit_lattice_robust(
            corrected, hk, fit_weights, fit_origin=fit_origin, rejection=options.rejection
        )
    n_peaks = inliers.sum(axis=-1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)  # no inliers: NaN error
        # weighted as the fit is: faint peaks, which the fit barely heeds, do not decide its quality
        inlier_weights = np.where(inliers & np.isfinite(residual), fit_weights, 0.0)
        squares = np.where(inlier_weights > 0, residual, 0.0) ** 2
        fit_error = np.sqrt((inlier_weights * squares).sum(axis=-1) / inlier_weights.sum(axis=-1))
    shortest = np.linalg.norm(np.asarray(lattice0, dtype=float), axis=-2).min(axis=-1)
    finite = np.all(np.isfinite(lattice), axis=(-2, -1))
    valid = finite & (n_peaks >= min_peaks) & (np.nan_to_num(fit_error, nan=np.inf) <= options.max_fit_error * shortest)
    return {
        "lattice": lattice,
        "origin": origin,
        "fit_error": fit_error,
        "n_peaks": n_peaks,
        "valid": valid,
        "hk": hk,
        "inliers": inliers,
    }


def _calibration_of(calibration: np.ndarray | None, hk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The static displacement (dx, dy) and weight factor of each peak's reflection (0 and 1 without a row)."""
    shift, factor = np.zeros(hk.shape[:-1] + (2,)), np.ones(hk.shape[:-1])
    if calibration is None or not len(calibration):
        return shift, factor
    table = np.asarray(calibration, dtype=float)
    reach = int(np.abs(table[:, :2]).max())
    lookup = np.zeros((2 * reach + 1, 2 * reach + 1, 3))
    lookup[..., 2] = 1.0
    lookup[table[:, 0].astype(int) + reach, table[:, 1].astype(int) + reach] = table[:, 2:]
    inside = np.all(np.abs(hk) <= reach, axis=-1)
    index = np.clip(hk + reach, 0, 2 * reach)
    found = lookup[index[..., 0], index[..., 1]]
    return np.where(inside[..., None], found[..., :2], shift), np.where(inside, found[..., 2], factor)


MIN_CALIBRATION_FITS = 8
"""Fewest valid reference fits from which reflections' scatter is measured (:func:`reflection_calibration`)."""


def reflection_calibration(
    positions: np.ndarray,
    weights: np.ndarray,
    lattice0: np.ndarray,
    origin0: np.ndarray,
    fit_origin: bool = True,
    options: FitOptions = FitOptions(),
    min_fraction: float = 0.5,
) -> np.ndarray:
    """Each reflection's static displacement from the fitted lattice and its weight factor, over patterns of
    one crystal (the reference region).

    **Static displacement** (``options.static_offsets``; else 0). A spot can sit off its lattice point by
    the same amount in every pattern: detector distortion, or the shift that dynamical scattering and
    the disk's inner structure give a reflection. In a lattice fit such offsets are noise that changes
    with the set of spots found, which changes from pattern to pattern. Measured in the reference region
    and taken off every pattern, they leave the strain relative to that region unchanged and remove
    their noise: on the real MgO nanocube scan the bragg spread fell 2.4x (e_xx 3.0e-3 -> 1.2e-3),
    where the strong reflections sat 0.2-0.5 px off the lattice with 0.07-0.1 px scatter.

    **Weight factor** (``options.scatter_limit``; else 1). Each reflection's scatter about its mean
    displacement, weighted by its spots' fit weights (mean ``w |d - mean|²``, about 1 for weights that
    are inverse variances), is compared with the median reflection's, the median taken by fit weight (the
    reflections that carry the fit set it, however many faint ones there are); a reflection above
    ``scatter_limit`` times that median gets the factor ``scatter_limit · median / its own``, so that its
    weight says its noise. The comparison is relative: it holds for weights proportional to inverse
    variances in any units. Measured only from :data:`MIN_CALIBRATION_FITS` valid fits or more.

    Parameters
    ----------
    positions : ndarray, shape (n, m, 2)
        Peak positions (x, y) of n patterns, NaN-padded.
    weights : ndarray, shape (n, m)
        Peak weights.
    lattice0, origin0, fit_origin, options
        As in :func:`fit_patterns`.
    min_fraction : float
        Only reflections that are inliers in at least this fraction of the valid fits get a row.

    Returns
    -------
    ndarray, shape (r, 5)
        Rows (h, k, dx, dy, factor): mean displacement of reflection (h, k) [units of ``positions``] and
        its weight factor (0 < factor ≤ 1); empty when no pattern has a valid fit.
    """
    fit = fit_patterns(positions, weights, lattice0, origin0, fit_origin, options)
    used = fit["inliers"] & fit["valid"][:, None]
    n_valid = int(fit["valid"].sum())
    if n_valid == 0:
        return np.zeros((0, 5))
    hk = fit["hk"][used]
    displacement = (positions - lattice_points(fit["lattice"], fit["hk"], fit["origin"]))[used]
    reflections, where, counts = np.unique(hk, axis=0, return_inverse=True, return_counts=True)
    where = where.reshape(-1)
    mean = np.stack([np.bincount(where, displacement[:, c], len(reflections)) for c in range(2)], axis=-1)
    mean /= counts[:, None]
    kept = counts >= min_fraction * n_valid
    factor = np.ones(len(reflections))
    if options.scatter_limit and n_valid >= MIN_CALIBRATION_FITS and kept.any():
        spot_weights = np.asarray(weights, dtype=float)[used]
        scatter = np.bincount(where, spot_weights * ((displacement - mean[where]) ** 2).sum(axis=-1), len(reflections))
        scatter /= counts
        # the median reflection by fit weight: the scatter of the reflections that carry the fit
        total = np.bincount(where, spot_weights, len(reflections))[kept]
        order = np.argsort(scatter[kept])
        median = scatter[kept][order][np.searchsorted(np.cumsum(total[order]), 0.5 * total.sum())]
        limit = options.scatter_limit * median  # 0 for exact spots: nothing to compare
        factor = np.where((limit > 0) & (scatter > limit), limit / np.where(scatter > 0, scatter, 1.0), 1.0)
    if not options.static_offsets:
        mean[:] = 0.0
    return np.concatenate([reflections[kept].astype(float), mean[kept], factor[kept, None]], axis=-1)


def initial_lattice(
    positions: np.ndarray,
    weights: np.ndarray,
    space: str,
    options: FitOptions = FitOptions(),
    fallback: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Initial lattice and origin from the spots of one (mean) pattern.

    Parameters
    ----------
    positions : ndarray, shape (m, 2)
        Spots (x, y), NaN-padded.
    weights : ndarray, shape (m,)
        Spot strengths.
    space : {"reciprocal", "real"}
        In real space (cepstral peaks) the lattice is centred on r = 0, which is added as a point.
    options : FitOptions
        Indexing and fit settings.
    fallback : ndarray (2, 2), optional
        Basis to start from when the spots do not define a lattice (too few, or collinear), e.g.
        the material's projected cell (:func:`stemstrain.strainmap.material_lattice`); it is then refined by a fit
        to the spots there are.

    Returns
    -------
    lattice : ndarray (2, 2)
        Basis g1, g2 as columns, refined by a fit to all indexed spots.
    origin : ndarray (2,)
        Fitted position of the (0, 0) point (zero in real space).

    Raises
    ------
    StemstrainInputError
        If no lattice can be found (too few spots).
    """
    positions = np.asarray(positions, dtype=float)
    weights = np.asarray(weights, dtype=float)
    finite = np.all(np.isfinite(positions), axis=-1) & (weights > 0)
    points, point_weights = positions[finite], weights[finite]
    if space == "real":
        points = np.vstack([np.zeros((1, 2)), points])
        point_weights = np.concatenate([[np.inf], point_weights])
    basis = reduced_basis(points, point_weights)
    if not np.all(np.isfinite(basis)):
        if fallback is None or not len(points):
            raise StemstrainInputError(
                f"found {int(finite.sum())} spots in the reference region's mean pattern, too few for a lattice "
                "(at least 3 not on one line are needed, or a known `material` attr): "
                "are the patterns empty or all zero?"
            )
        basis = np.asarray(fallback, dtype=float)
    fit_origin = space == "reciprocal"
    origin0 = points[np.argmin(np.linalg.norm(points, axis=-1))] if fit_origin else np.zeros(2)
    fit = fit_patterns(positions[None], weights[None], basis, origin0, fit_origin, options)
    if not fit["valid"][0]:
        return basis, origin0
    return fit["lattice"][0], fit["origin"][0]

"""Deformation gradient, polar decomposition and strain (pure, batched).

Convention (docs/DESIGN.md): reciprocal lattice vectors as columns of G (measured) and G0 (reference)
obey ``G = F^-T G0``, so the real-space deformation gradient is ``F = inv(G @ inv(G0)).T``. The
polar decomposition ``F = R U`` gives the strain ``ε = U - I`` (index 0 = x) and the rotation angle
θ of R, counter-clockwise positive in the (x, y) frame. e_xy is the tensor shear component U[0, 1]
(half the engineering shear).
"""

from __future__ import annotations

import numpy as np

from stemstrain.errors import StemstrainInputError

__all__ = [
    "STRAIN_COMPONENTS",
    "deformation_from_strain",
    "deformation_gradient",
    "polar_decomposition",
    "reference_lattice",
    "rotation_matrix",
    "strain_from_deformation",
    "strain_from_lattice",
]

STRAIN_COMPONENTS = ("e_xx", "e_yy", "e_xy", "theta")


def rotation_matrix(theta: np.ndarray | float) -> np.ndarray:
    """Counter-clockwise rotation matrices R(θ), shape ``(..., 2, 2)``, for angles θ [rad]."""
    theta = np.asarray(theta, dtype=float)
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], axis=-1), np.stack([s, c], axis=-1)], axis=-2)


def deformation_from_strain(e_xx, e_yy, e_xy, theta) -> np.ndarray:
    """Deformation gradient ``F = R(θ) (I + ε)`` from strain components and rotation.

    Parameters
    ----------
    e_xx, e_yy, e_xy : array_like
        Symmetric strain tensor components [1]; e_xy is the tensor (not engineering) shear.
    theta : array_like
        Rotation angle [rad], counter-clockwise positive.

    Returns
    -------
    ndarray, shape (..., 2, 2)
        Deformation gradient acting on column vectors (x, y).
    """
    e_xx, e_yy, e_xy, theta = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (e_xx, e_yy, e_xy, theta)))
    stretch = np.stack([np.stack([1 + e_xx, e_xy], axis=-1), np.stack([e_xy, 1 + e_yy], axis=-1)], axis=-2)
    return rotation_matrix(theta) @ stretch


def deformation_gradient(lattice: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Real-space deformation gradient from measured and reference reciprocal lattices.

    Parameters
    ----------
    lattice : ndarray, shape (..., 2, 2)
        Measured reciprocal basis vectors g1, g2 as columns [1/angstrom].
    reference : ndarray, shape (2, 2) or (..., 2, 2)
        Reference (unstrained) reciprocal basis as columns [1/angstrom].

    Returns
    -------
    ndarray, shape (..., 2, 2)
        ``F = inv(G @ inv(G0)).T``.
    """
    return np.swapaxes(np.linalg.inv(lattice @ np.linalg.inv(reference)), -1, -2)


def polar_decomposition(deformation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polar decomposition ``F = R U`` of 2×2 deformation gradients.

    Uses the closed form for 2×2 matrices with positive determinant: the rotation angle is
    ``atan2(F10 - F01, F00 + F11)`` and ``U = R^T F`` is symmetric positive definite.

    Parameters
    ----------
    deformation : ndarray, shape (..., 2, 2)
        Deformation gradients F.

    Returns
    -------
    theta : ndarray, shape (...)
        Rotation angle of R [rad], counter-clockwise positive.
    stretch : ndarray, shape (..., 2, 2)
        Right stretch tensor U.
    """
    f = np.asarray(deformation, dtype=float)
    theta = np.arctan2(f[..., 1, 0] - f[..., 0, 1], f[..., 0, 0] + f[..., 1, 1])
    stretch = np.swapaxes(rotation_matrix(theta), -1, -2) @ f
    stretch = 0.5 * (stretch + np.swapaxes(stretch, -1, -2))  # remove round-off asymmetry
    return theta, stretch


def strain_from_deformation(deformation: np.ndarray) -> dict[str, np.ndarray]:
    """Strain components and rotation of deformation gradients.

    Parameters
    ----------
    deformation : ndarray, shape (..., 2, 2)
        Deformation gradients F.

    Returns
    -------
    dict of ndarray
        ``e_xx``, ``e_yy``, ``e_xy`` [1] and ``theta`` [rad], each of shape (...).
    """
    theta, stretch = polar_decomposition(deformation)
    return {
        "e_xx": stretch[..., 0, 0] - 1.0,
        "e_yy": stretch[..., 1, 1] - 1.0,
        "e_xy": stretch[..., 0, 1],
        "theta": theta,
    }


def strain_from_lattice(lattice: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """Strain and rotation of measured reciprocal lattices relative to a reference.

    Parameters
    ----------
    lattice : ndarray, shape (..., 2, 2)
        Measured reciprocal basis as columns [1/angstrom]; NaN entries give NaN strain.
    reference : ndarray, shape (2, 2)
        Reference reciprocal basis as columns [1/angstrom].

    Returns
    -------
    dict of ndarray
        As :func:`strain_from_deformation`.
    """
    lattice = np.asarray(lattice, dtype=float)
    finite = np.all(np.isfinite(lattice), axis=(-2, -1))
    safe = np.where(finite[..., None, None], lattice, np.asarray(reference))
    components = strain_from_deformation(deformation_gradient(safe, reference))
    return {name: np.where(finite, value, np.nan) for name, value in components.items()}


def reference_lattice(
    lattice: np.ndarray,
    reference_roi: tuple[int, int, int, int] | None = None,
    valid: np.ndarray | None = None,
    label: str | None = None,
) -> np.ndarray:
    """Reference reciprocal lattice: median of a scan region, element-wise.

    Parameters
    ----------
    lattice : ndarray, shape (scan_y, scan_x, 2, 2)
        Fitted reciprocal basis per scan position [1/angstrom].
    reference_roi : (y0, y1, x0, x1), optional
        Half-open scan-index bounds of the reference region; the whole scan when omitted.
    valid : ndarray of bool, shape (scan_y, scan_x), optional
        Positions whose fit is valid; others are ignored.
    label : str, optional
        How the error names the region (e.g. the user's region and file, when ``lattice`` is already
        cropped to it); default: ``reference region [y0, y1, x0, x1] = [...]``.

    Returns
    -------
    ndarray, shape (2, 2)
        Median reference basis as columns.

    Raises
    ------
    StemstrainInputError
        If the region lies outside the scan or holds no valid fit.
    """
    lattice = np.asarray(lattice, dtype=float)
    n_y, n_x = lattice.shape[:2]
    y0, y1, x0, x1 = reference_roi if reference_roi is not None else (0, n_y, 0, n_x)
    if not (0 <= y0 < y1 <= n_y and 0 <= x0 < x1 <= n_x):
        raise StemstrainInputError(
            f"reference region [y0, y1, x0, x1] = {[y0, y1, x0, x1]} must lie inside the scan of "
            f"{n_y} x {n_x} positions with y0 < y1 and x0 < x1"
        )
    region = lattice[y0:y1, x0:x1].reshape(-1, 2, 2)
    usable = np.all(np.isfinite(region), axis=(-2, -1))
    if valid is not None:
        usable &= np.asarray(valid)[y0:y1, x0:x1].reshape(-1)
    if not usable.any():
        where = label or f"reference region [y0, y1, x0, x1] = {[y0, y1, x0, x1]}"
        raise StemstrainInputError(
            f"{where} holds no valid lattice fit ({usable.size} positions fitted; "
            "choose a region of clean crystal with --ref-roi)"
        )
    return np.median(region[usable], axis=0)

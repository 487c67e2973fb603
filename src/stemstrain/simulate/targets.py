"""Training targets: kinematic Bragg spots of the strained crystal as Gaussian images.

The network learns where the Bragg disks of a pattern lie. Its target is an image of Gaussian spots
(σ ≈ 1 px) at the strained zero-order Laue-zone reciprocal-lattice points inside the detector,
weighted by their kinematic strength and exactly zero elsewhere, so that ``target > 0`` is the spot mask.
Spot positions follow ``G = F^-T G0`` (DESIGN.md): the reciprocal basis G0 of the projected cell,
strained by the deformation gradient F.
"""

from __future__ import annotations

import abtem
import numpy as np
from abtem.parametrizations import LobatoParametrization

from stemstrain.lattice import reciprocal_vectors
from stemstrain.optics import electron_wavelength
from stemstrain.simulate.crystals import crystal_unit, get_crystal, projected_cell

__all__ = ["kinematic_spots", "spot_weights", "pixels_from_k", "target_image"]

_PARAMETRIZATION = LobatoParametrization()
CUTOFF_SIGMAS = 3.0  # spots are cut to zero beyond this many σ, so target > 0 marks the spot area


def kinematic_spots(
    crystal: str, deformation: np.ndarray, k_max: float, energy_eV: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strained zero-order Laue-zone reflections inside a square detector with kinematic intensities.

    Parameters
    ----------
    crystal : str
        Crystal name.
    deformation : ndarray (2, 2)
        Deformation gradient F on (x, y) [1].
    k_max : float
        Half-width of the square detector: reflections with ``max(|g_x|, |g_y|) <= k_max`` are kept [1/angstrom].
    energy_eV : float
        Beam energy [eV]; sets the relativistic wavelength and scattering factors.

    Returns
    -------
    g_xy : ndarray (n, 2)
        Reflection positions (x, y) [1/angstrom], including g = 0.
    intensity : ndarray (n,)
        Kinematic intensity per unit thickness ``(λ γ |F_g| / Ω)²`` [1/angstrom²], with Debye-Waller
        damping of the crystal's thermal displacements; zero for forbidden reflections.
    hk : ndarray (n, 2) of int
        Indices of each reflection in the reciprocal basis of :func:`~crystals.projected_cell`.
    """
    spec = get_crystal(crystal)
    deformation = np.asarray(deformation, dtype=float)
    reference = reciprocal_vectors(projected_cell(crystal))
    lattice = np.linalg.inv(deformation).T @ reference
    reach = int(np.ceil(np.linalg.norm(np.linalg.inv(lattice), 2) * np.sqrt(2.0) * k_max)) + 1
    h, k = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
    hk = np.column_stack([h.ravel(), k.ravel()])
    g_xy = hk @ lattice.T
    inside = np.all(np.abs(g_xy) <= k_max, axis=1)
    hk, g_xy = hk[inside], g_xy[inside]

    unit = crystal_unit(crystal)
    # g . r is invariant under the deformation: use reference reflections and unstrained positions for the phase.
    phase = np.exp(2j * np.pi * (hk @ reference.T) @ unit.positions[:, :2].T)
    g2 = np.sum(g_xy**2, axis=1)
    factors = np.empty((len(g_xy), len(unit)))
    for i, symbol in enumerate(unit.get_chemical_symbols()):
        debye_waller = np.exp(-2.0 * np.pi**2 * spec.rms_displacement.get(symbol, 0.0) ** 2 * g2)
        factors[:, i] = _PARAMETRIZATION.scattering_factor(symbol)(g2) * debye_waller
    structure_factor = np.sum(factors * phase, axis=1)
    volume = np.prod(spec.cell) * abs(np.linalg.det(deformation))
    wavelength = electron_wavelength(energy_eV)
    gamma = float(abtem.core.energy.relativistic_mass_correction(energy_eV))
    intensity = (wavelength * gamma * np.abs(structure_factor) / volume) ** 2
    intensity[intensity < 1e-12 * intensity.max()] = 0.0  # forbidden reflections: round-off only
    return g_xy, intensity, hk


def spot_weights(intensity: np.ndarray, g_xy: np.ndarray, floor: float = 1e-4) -> np.ndarray:
    """Target amplitudes of spots: the kinematic amplitude relative to the strongest g ≠ 0 reflection.

    The amplitude ``sqrt(I / I_max)`` (clipped at 1, so g = 0 gets 1) keeps weak but usable reflections
    visible to the network; reflections below ``floor`` in relative intensity get weight 0 (no spot).

    Returns
    -------
    ndarray (n,)
        Amplitudes in [0, 1].
    """
    intensity = np.asarray(intensity, dtype=float)
    nonzero_order = np.linalg.norm(g_xy, axis=1) > 0
    strongest = intensity[nonzero_order].max() if nonzero_order.any() else intensity.max()
    relative = intensity / strongest if strongest > 0 else np.zeros_like(intensity)
    return np.where(relative >= floor, np.sqrt(np.clip(relative, 0.0, 1.0)), 0.0)


def pixels_from_k(g_xy: np.ndarray, pixels: int, k_sampling: float) -> np.ndarray:
    """Detector pixel positions (x, y) [px] of scattering vectors (x, y) [1/angstrom] in the reference calibration."""
    return np.asarray(g_xy, dtype=float) / k_sampling + pixels // 2


def target_image(positions_px: np.ndarray, intensities: np.ndarray, pixels: int, sigma_px: float = 1.0) -> np.ndarray:
    """Image of Gaussian spots, zero beyond ``CUTOFF_SIGMAS`` σ of every spot.

    Parameters
    ----------
    positions_px : ndarray (n, 2)
        Spot centres (x, y) [px]; NaN rows are skipped.
    intensities : ndarray (n,)
        Peak value of each spot; spots with intensity <= 0 are skipped.
    pixels : int
        Image size along each axis.
    sigma_px : float
        Gaussian standard deviation [px].

    Returns
    -------
    ndarray (pixels, pixels) float32
        Sum of the spots, indexed (y, x).
    """
    positions = np.asarray(positions_px, dtype=float).reshape(-1, 2)
    amplitude = np.asarray(intensities, dtype=float).reshape(-1)
    keep = np.all(np.isfinite(positions), axis=1) & (amplitude > 0)
    positions, amplitude = positions[keep], amplitude[keep]
    # Each spot touches only the pixels of a small window around it.
    reach = int(np.ceil(CUTOFF_SIGMAS * sigma_px)) + 1
    offsets = np.arange(-reach, reach + 1)
    corner = np.floor(positions).astype(int)
    cols = corner[:, 0, None, None] + offsets[None, None, :]
    rows = corner[:, 1, None, None] + offsets[None, :, None]
    r2 = (cols - positions[:, 0, None, None]) ** 2 + (rows - positions[:, 1, None, None]) ** 2
    values = amplitude[:, None, None] * np.exp(-0.5 * r2 / sigma_px**2)
    valid = (r2 <= (CUTOFF_SIGMAS * sigma_px) ** 2) & (rows >= 0) & (rows < pixels) & (cols >= 0) & (cols < pixels)
    rows, cols = np.broadcast_to(rows, r2.shape), np.broadcast_to(cols, r2.shape)
    image = np.zeros(pixels * pixels, dtype=np.float64)
    np.add.at(image, rows[valid] * pixels + cols[valid], values[valid])
    return image.reshape(pixels, pixels).astype(np.float32)

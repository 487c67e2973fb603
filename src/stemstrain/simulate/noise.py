"""Detector and dose model applied to clean simulated patterns.

Order of the physics: a smooth diffuse background (thermal diffuse and inelastic scattering not in a
static multislice), the detector point-spread function (Gaussian blur), the projector distortion
(descan shift and elliptical distortion) and finally counting noise at the dose. The distortion moves
every spot, so it is applied to the target spots as well (:func:`distort_points`): the network must put
its spots where the pattern has them, as measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["PatternNoise", "apply_noise", "distortion_matrix", "distort_points", "sample_noise"]


@dataclass(frozen=True)
class PatternNoise:
    """Noise and distortion parameters of one pattern.

    Attributes
    ----------
    dose : float
        Incident electrons per pattern [e-]; ``inf`` for noise-free patterns.
    background : float
        Diffuse background as a fraction of the pattern's total intensity [1].
    background_width : float
        Half-width of the Lorentzian-like background profile [1/angstrom].
    blur_px : float
        Gaussian detector blur sigma [px].
    shift_px : (float, float)
        Pattern shift (x, y) [px].
    ellipticity : float
        Axis ratio minus one of the elliptical distortion [1].
    ellipse_angle : float
        Direction of the stretched axis, counter-clockwise from x [rad].
    """

    dose: float = np.inf
    background: float = 0.0
    background_width: float = 0.4
    blur_px: float = 0.0
    shift_px: tuple[float, float] = (0.0, 0.0)
    ellipticity: float = 0.0
    ellipse_angle: float = 0.0


def sample_noise(rng: np.random.Generator, options) -> PatternNoise:
    """Draw noise parameters from the ranges of a :class:`stemstrain.config.Noise` section."""
    low, high = options.dose_range
    return PatternNoise(
        dose=float(np.exp(rng.uniform(np.log(low), np.log(high)))),
        background=float(rng.uniform(*options.background_range)),
        background_width=float(rng.uniform(0.2, 0.8)),
        blur_px=float(rng.uniform(*options.blur_px_range)),
        shift_px=tuple(float(v) for v in rng.uniform(-options.shift_px, options.shift_px, 2)),
        ellipticity=float(rng.uniform(0.0, options.ellipticity)),
        ellipse_angle=float(rng.uniform(0.0, np.pi)),
    )


def distortion_matrix(noise: PatternNoise) -> np.ndarray:
    """Linear part (2, 2) of the projector distortion on (x, y) vectors: stretch 1 + e along the ellipse angle."""
    c, s = np.cos(noise.ellipse_angle), np.sin(noise.ellipse_angle)
    rotation = np.array([[c, -s], [s, c]])
    stretch = np.diag([1.0 + 0.5 * noise.ellipticity, 1.0 - 0.5 * noise.ellipticity])
    return rotation @ stretch @ rotation.T


def distort_points(points_px: np.ndarray, noise: PatternNoise, pixels: int) -> np.ndarray:
    """Move detector positions (x, y) [px] as the distortion moves the pattern (about k = 0 at ``pixels // 2``)."""
    centre = pixels // 2
    points = np.asarray(points_px, dtype=float)
    return (points - centre) @ distortion_matrix(noise).T + centre + np.asarray(noise.shift_px)


def _background(pixels: int, k_sampling: float, width: float) -> np.ndarray:
    k = (np.arange(pixels) - pixels // 2) * k_sampling
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    profile = 1.0 / (1.0 + k2 / width**2) ** 1.5
    return profile / profile.sum()


def apply_noise(pattern: np.ndarray, noise: PatternNoise, k_sampling: float, rng: np.random.Generator) -> np.ndarray:
    """Background, blur, distortion and counting noise for one pattern.

    Parameters
    ----------
    pattern : ndarray (pixels, pixels)
        Clean intensity (k_y, k_x) as a fraction of the incident beam.
    noise : PatternNoise
        Parameters of this pattern.
    k_sampling : float
        Detector pixel size [1/angstrom].
    rng : numpy.random.Generator
        Source of the counting noise.

    Returns
    -------
    ndarray (pixels, pixels) float32
        Counts [e-] (expected counts when the dose is infinite: intensity times 1).
    """
    pixels = pattern.shape[-1]
    image = pattern.astype(np.float64)
    if noise.background > 0:
        image = image + noise.background * image.sum() * _background(pixels, k_sampling, noise.background_width)
    if noise.blur_px > 0:
        image = ndimage.gaussian_filter(image, noise.blur_px, mode="constant")
    if noise.ellipticity > 0 or any(noise.shift_px):
        # Output pixel p samples the input at D^-1 (p - c - shift) + c; matrices act on (y, x) here.
        inverse = np.linalg.inv(distortion_matrix(noise))[::-1, ::-1]
        centre = np.full(2, pixels // 2, dtype=float)
        offset = centre - inverse @ (centre + np.asarray(noise.shift_px)[::-1])
        image = ndimage.affine_transform(image, inverse, offset=offset, order=1, mode="constant")
        image = np.clip(image, 0.0, None)
    if np.isfinite(noise.dose):
        image = rng.poisson(image * noise.dose)
    return image.astype(np.float32)

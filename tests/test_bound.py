"""The Cramér–Rao bound of disk geometry against the closed form for Gaussian spots."""

import numpy as np
import pytest

from stemstrain.evaluate.bound import PARAMETERS, strain_bound


def gaussian_lattice(spacing: float, width: float, counts: float, size: int = 128):
    """Expected counts of a square lattice of Gaussian spots (each ``counts`` e-) and its centres [px]."""
    centre = size // 2
    reach = int((centre - 8) // spacing)
    h, k = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
    spots = spacing * np.column_stack([h.ravel(), k.ravel()]).astype(float)
    y, x = np.indices((size, size), dtype=float)
    image = np.zeros((size, size))
    for g_x, g_y in spots:
        image += np.exp(-((x - centre - g_x) ** 2 + (y - centre - g_y) ** 2) / (2 * width**2))
    image *= counts / (2 * np.pi * width**2)
    return image + 1e-9, spots, (centre, centre)


def test_bound_of_gaussian_spots_matches_the_closed_form():
    # A spot of N counts and width s is located to s/sqrt(N) per axis at best; a strain e_xx moves each
    # spot by e_xx g_x, so on a centrosymmetric square lattice var(e_xx) >= s² / (N Σ g_x²).
    width, counts = 1.5, 400.0
    image, spots, centre = gaussian_lattice(spacing=16.0, width=width, counts=counts)
    covariance = strain_bound(image, spots, centre, disk_radius_px=4.0)
    expected = width / np.sqrt(counts * np.sum(spots[:, 0] ** 2))
    standard = dict(zip(PARAMETERS, np.sqrt(np.diag(covariance)), strict=True))
    assert standard["e_xx"] == pytest.approx(expected, rel=0.05)
    assert standard["e_yy"] == pytest.approx(expected, rel=0.05)
    shift = standard["shift_x"]
    assert shift == pytest.approx(width / np.sqrt(counts * len(spots)), rel=0.05)


def test_bound_scales_with_dose_and_needs_three_disks():
    image, spots, centre = gaussian_lattice(spacing=16.0, width=1.5, counts=100.0)
    low = np.sqrt(strain_bound(image, spots, centre, 4.0)[0, 0])
    high = np.sqrt(strain_bound(100 * image, spots, centre, 4.0)[0, 0])
    assert high == pytest.approx(low / 10, rel=1e-6)
    assert np.all(np.isinf(strain_bound(image, spots[:2], centre, 4.0)))

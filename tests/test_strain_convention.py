"""The strain convention of DESIGN.md, checked on hand-made cases and by round trips."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemstrain.errors import StemstrainInputError
from stemstrain.lattice import fit_lattice, fit_lattice_robust, index_peaks, lattice_points, reciprocal_vectors
from stemstrain.strain import (
    deformation_from_strain,
    deformation_gradient,
    polar_decomposition,
    reference_lattice,
    strain_from_lattice,
)

# Si [110] projected cell: a/sqrt(2) along x, a along y [angstrom]
A0 = np.array([[5.431 / np.sqrt(2), 0.0], [0.0, 5.431]])
G0 = reciprocal_vectors(A0)


def deformed_reciprocal(deformation):
    """Reciprocal lattice of the real lattice F @ A0."""
    return reciprocal_vectors(deformation @ A0)


def test_pure_e_xx_stretches_real_space_and_shrinks_reciprocal_along_x():
    deformation = np.array([[1.01, 0.0], [0.0, 1.0]])
    lattice = deformed_reciprocal(deformation)
    # the reciprocal x spacing shrinks by 1/1.01, y is unchanged
    assert lattice[0, 0] == pytest.approx(G0[0, 0] / 1.01)
    assert lattice[1, 1] == pytest.approx(G0[1, 1])
    strain = strain_from_lattice(lattice, G0)
    assert strain["e_xx"] == pytest.approx(0.01, abs=1e-12)
    assert strain["e_yy"] == pytest.approx(0.0, abs=1e-12)
    assert strain["e_xy"] == pytest.approx(0.0, abs=1e-12)
    assert strain["theta"] == pytest.approx(0.0, abs=1e-12)


def test_pure_rotation_is_counter_clockwise_positive():
    theta = 0.01
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    lattice = deformed_reciprocal(rotation)
    # g1 along +x turns towards +y under a counter-clockwise rotation
    assert lattice[1, 0] > 0
    strain = strain_from_lattice(lattice, G0)
    assert strain["theta"] == pytest.approx(0.01, abs=1e-12)
    for name in ("e_xx", "e_yy", "e_xy"):
        assert strain[name] == pytest.approx(0.0, abs=1e-12)


def test_simple_shear_splits_into_strain_and_rotation():
    shear = 0.02
    deformation = np.array([[1.0, shear], [0.0, 1.0]])  # x displaced in proportion to y
    strain = strain_from_lattice(deformed_reciprocal(deformation), G0)
    # closed form of the polar decomposition of simple shear
    theta = np.arctan2(-shear, 2.0)
    assert strain["theta"] == pytest.approx(theta, abs=1e-12)
    assert strain["theta"] < 0  # clockwise
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    stretch = rotation.T @ deformation
    assert strain["e_xy"] == pytest.approx(stretch[0, 1], abs=1e-12)
    assert strain["e_xy"] == pytest.approx(shear / 2, rel=2e-4)
    assert strain["e_xx"] == pytest.approx(stretch[0, 0] - 1, abs=1e-12)


def test_deformation_gradient_inverts_the_reciprocal_map():
    deformation = deformation_from_strain(0.01, -0.02, 0.005, 0.03)
    assert np.allclose(deformation_gradient(deformed_reciprocal(deformation), G0), deformation, atol=1e-13)


small = st.floats(-0.05, 0.05, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(small, small, small, st.floats(-0.3, 0.3, allow_nan=False))
def test_random_deformation_round_trips(e_xx, e_yy, e_xy, theta):
    deformation = deformation_from_strain(e_xx, e_yy, e_xy, theta)
    strain = strain_from_lattice(deformed_reciprocal(deformation), G0)
    assert strain["e_xx"] == pytest.approx(e_xx, abs=1e-10)
    assert strain["e_yy"] == pytest.approx(e_yy, abs=1e-10)
    assert strain["e_xy"] == pytest.approx(e_xy, abs=1e-10)
    assert strain["theta"] == pytest.approx(theta, abs=1e-10)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-0.9, 0.9), min_size=4, max_size=4))
def test_polar_decomposition_reconstructs_f(values):
    deformation = np.eye(2) + 0.1 * np.array(values).reshape(2, 2)
    theta, stretch = polar_decomposition(deformation)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert np.allclose(rotation @ stretch, deformation, atol=1e-12)
    assert np.allclose(stretch, stretch.T)
    assert np.all(np.linalg.eigvalsh(stretch) > 0)


def test_batched_shapes():
    rng = np.random.default_rng(0)
    components = rng.uniform(-0.02, 0.02, size=(4, 5, 4))
    deformation = deformation_from_strain(*np.moveaxis(components, -1, 0))
    assert deformation.shape == (4, 5, 2, 2)
    strain = strain_from_lattice(deformed_reciprocal(deformation), G0)
    for i, name in enumerate(("e_xx", "e_yy", "e_xy", "theta")):
        assert strain[name].shape == (4, 5)
        assert np.allclose(strain[name], components[..., i], atol=1e-12)


def test_nan_lattice_gives_nan_strain():
    lattice = np.stack([G0, np.full((2, 2), np.nan)])
    strain = strain_from_lattice(lattice, G0)
    assert np.isfinite(strain["e_xx"][0]) and np.isnan(strain["e_xx"][1])


def test_fit_recovers_lattice_from_exact_points_and_rejects_an_outlier():
    hk = np.array([(h, k) for h in range(-2, 3) for k in range(-2, 3)])
    lattice = deformed_reciprocal(deformation_from_strain(0.01, 0.0, 0.0, 0.0))
    origin = np.array([0.003, -0.002])
    points = lattice_points(lattice, hk, origin)
    fitted, fitted_origin, residual = fit_lattice(points, hk)
    assert np.allclose(fitted, lattice, atol=1e-14) and np.allclose(fitted_origin, origin, atol=1e-14)
    assert np.nanmax(residual) < 1e-12

    corrupted = points.copy()
    corrupted[3] += [0.05, 0.0]
    fitted, _, _, inliers = fit_lattice_robust(corrupted, hk)
    assert not inliers[3] and inliers.sum() == len(hk) - 1
    assert np.allclose(fitted, lattice, atol=1e-12)


def test_fit_with_too_few_peaks_is_nan():
    fitted, origin, _ = fit_lattice(np.array([[0.1, 0.0], [0.0, 0.2]]), np.array([[1, 0], [0, 1]]))
    assert np.all(np.isnan(fitted))


def test_index_peaks_assigns_nearest_lattice_point():
    hk = np.array([[1, 0], [0, 1], [-1, 2], [2, -1]])
    lattice = deformed_reciprocal(deformation_from_strain(0.02, -0.01, 0.0, 0.01))
    points = lattice_points(lattice, hk)
    found, indexed = index_peaks(points, G0)  # indexed with the unstrained lattice
    assert np.array_equal(found, hk) and indexed.all()
    _, indexed = index_peaks(points + [[0.5 * G0[0, 0], 0]], G0)
    assert not indexed.any()


def test_reference_lattice_is_median_of_region_and_checks_bounds():
    lattice = np.broadcast_to(G0, (4, 6, 2, 2)).copy()
    lattice[:, 3:] *= 1.01
    lattice[0, 0] = np.nan
    assert np.allclose(reference_lattice(lattice, (0, 4, 0, 3)), G0)
    with pytest.raises(StemstrainInputError, match="inside the scan"):
        reference_lattice(lattice, (0, 5, 0, 3))
    with pytest.raises(StemstrainInputError, match="no valid"):
        reference_lattice(lattice, (0, 1, 0, 1))

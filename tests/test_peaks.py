"""Spot finding and the fitting chain spots -> lattice -> strain on target images."""

import numpy as np
import pytest

from stemstrain.lattice import (
    FitOptions,
    fit_patterns,
    index_peaks,
    initial_lattice,
    reduced_basis,
    reflection_calibration,
)
from stemstrain.peaks import find_peaks, local_maximum
from stemstrain.simulate.targets import kinematic_spots, pixels_from_k, spot_weights, target_image
from stemstrain.strain import deformation_from_strain, reference_lattice, strain_from_lattice

PIXELS, K_SAMPLING, ENERGY = 128, 0.025, 200e3
K_MAX = (PIXELS // 2 - 2) * K_SAMPLING


def target_pattern(crystal, deformation, shift_px=(0.0, 0.0)):
    """Target image (SIM's contract) of a strained crystal, optionally shifted (descan) [px]."""
    g_xy, intensity, _ = kinematic_spots(crystal, deformation, K_MAX, ENERGY)
    positions = pixels_from_k(g_xy, PIXELS, K_SAMPLING) + np.asarray(shift_px)
    return target_image(positions, spot_weights(intensity, g_xy), PIXELS)


def test_gaussian_spots_are_located_to_a_hundredth_of_a_pixel():
    rng = np.random.default_rng(3)
    truth = np.stack([rng.uniform(8, 108, 2) + 12 * np.arange(2)[:, None] * [1, 0] for _ in range(40)])
    truth = truth.reshape(40, 2, 2)
    images = np.stack([target_image(t, [1.0, 0.4], PIXELS) for t in truth])
    positions, weights = find_peaks(images, min_distance=2)
    for found, expected in zip(positions, truth, strict=True):
        found = found[np.isfinite(found[:, 0])]
        assert len(found) == 2
        error = np.linalg.norm(found[:, None] - expected[None], axis=-1).min(axis=1)
        assert error.max() < 0.01
    assert np.allclose(np.sort(weights, axis=1)[:, ::-1], [1.0, 0.4], atol=1e-3)


def test_spot_between_two_pixels_is_found_once_and_elliptic_spots_exactly():
    y, x = np.mgrid[0:32, 0:32]
    between = np.exp(-((x - 10.5) ** 2 + (y - 20.0) ** 2) / 2).astype(np.float32)
    elliptic = np.exp(-((x - 7.3) ** 2 / (2 * 1.6**2) + (y - 9.8) ** 2 / (2 * 0.8**2))).astype(np.float32)
    positions, _ = find_peaks(np.stack([between, elliptic]))
    assert np.isfinite(positions[0, :, 0]).sum() == 1
    assert positions[0, 0] == pytest.approx([10.5, 20.0], abs=1e-4)
    assert positions[1, 0] == pytest.approx([7.3, 9.8], abs=1e-4)


def test_no_peaks_in_empty_images_and_masked_peaks_are_dropped():
    images = np.zeros((3, 16, 16), np.float32)
    images[1, 8, 8] = 1.0
    positions, weights = find_peaks(images, mask=np.zeros_like(images, bool))
    assert not np.isfinite(positions).any() and not weights.any()


def test_local_maximum_is_scipys_maximum_filter_at_the_edges_and_on_plateaus():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    images = rng.random((4, 21, 17), dtype=np.float32)
    images[:, 3:6, 0:2] = 2.0  # a plateau on the edge
    for reach in (1, 2, 3):
        expected = ndimage.maximum_filter(images, size=(1, 2 * reach + 1, 2 * reach + 1), mode="nearest")
        assert np.array_equal(local_maximum(images, reach), expected)


def test_reduced_basis_is_the_shortest_right_handed_pair():
    basis = np.array([[0.3, 0.1], [0.05, 0.25]])
    hk = np.array([(h, k) for h in range(-3, 4) for k in range(-3, 4)])
    points = hk @ (basis @ np.array([[1, 1], [0, 1]])).T  # a non-reduced basis generates the points
    found = reduced_basis(points)
    assert np.linalg.det(found) > 0
    assert abs(np.linalg.det(found)) == pytest.approx(abs(np.linalg.det(basis)))
    g1, g2 = found.T
    assert abs(g1 @ g2) <= 0.5 * (g1 @ g1) + 1e-12  # Lagrange-reduced: no shorter basis exists
    assert np.linalg.norm(g1) <= np.linalg.norm(g2)
    assert np.linalg.norm(g2) == pytest.approx(np.hypot(0.2, 0.2))  # g1 - g2 of the generating basis


@pytest.mark.parametrize("crystal", ["Si_110", "SrTiO3_001"])
def test_chain_recovers_uniform_one_percent_strain_from_target_images(crystal):
    """Target images -> peaks -> indexing -> robust fit -> strain vs the reference median, to 1e-6."""
    cases = [(0.01, 0.0, 0.0, 0.0), (0.0, 0.01, 0.0, 0.0), (0.0, 0.0, 0.01, 0.0), (0.004, -0.006, 0.003, 0.01)]
    reference_images = [target_pattern(crystal, np.eye(2), shift) for shift in [(0, 0), (0.3, -0.2)]]
    strained_images = [target_pattern(crystal, deformation_from_strain(*case), (0.17, 0.41)) for case in cases]
    images = np.stack(reference_images + strained_images)
    positions, weights = find_peaks(images, threshold_rel=0.01)
    k_positions = (positions - PIXELS // 2) * K_SAMPLING
    lattice0, origin0 = initial_lattice(k_positions[0], weights[0], "reciprocal")
    fit = fit_patterns(k_positions, weights, lattice0, origin0, options=FitOptions())
    assert fit["valid"].all()
    assert fit["n_peaks"].min() >= 10
    reference = reference_lattice(fit["lattice"][None, :2], valid=fit["valid"][None, :2])
    strain = strain_from_lattice(fit["lattice"][2:], reference)
    for row, case in enumerate(cases):
        measured = [strain[name][row] for name in ("e_xx", "e_yy", "e_xy", "theta")]
        assert measured == pytest.approx(case, abs=1e-6)
    # the descan shift shows up in the origin, not in the lattice
    assert fit["origin"][1] == pytest.approx(np.array([0.3, -0.2]) * K_SAMPLING, abs=1e-6)


def test_mirror_spots_between_pixels_are_each_found_once():
    # Equal spots centred between pixels, mirrored across the image: equal values at four pixels
    # of two spots interleave in the peak order; each spot must come back once, exactly located.
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    centres = [(20.5, 30.0), (43.5, 30.0), (12.0, 50.5), (40.0, 50.5)]
    image = sum(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 2.0) for cx, cy in centres)
    positions, weights = find_peaks(image, threshold_rel=0.5)
    assert np.isfinite(positions[:, 0]).sum() == 4
    found = sorted(map(tuple, np.round(positions[np.isfinite(positions[:, 0])], 6)))
    np.testing.assert_allclose(found, sorted(centres), atol=1e-6)


def test_static_reflection_offsets_measured_in_the_reference_leave_only_the_strain():
    """Spots 0.3 px off their lattice points, the same in every pattern, and a spot set that changes
    from pattern to pattern: the offsets measured in the reference patterns are taken off, and the
    strain comes back to 2 % of itself; fitted as measured, the changing spot set turns them into strain noise."""
    rng = np.random.default_rng(7)
    reference = np.array([[0.31, 0.02], [-0.04, 0.27]])  # g1, g2 as columns [1/angstrom]
    hk = np.array([(h, k) for h in range(-3, 4) for k in range(-3, 4) if (h, k) != (0, 0)], dtype=float)
    static = rng.normal(0.0, 0.3 * K_SAMPLING, hk.shape)  # one fixed displacement per reflection

    def patterns(deformations):
        lattices = np.linalg.inv(np.swapaxes(deformations, -1, -2)) @ reference  # g' = F^-T g
        positions = np.einsum("nij,mj->nmi", lattices, hk) + static
        present = rng.random(positions.shape[:2]) < 0.75  # each pattern finds another subset
        return np.where(present[..., None], positions, np.nan), np.where(present, 1.0, 0.0)

    cases = np.array([(0.01, 0.0, 0.0, 0.0), (0.0, -0.01, 0.005, 0.0), (0.004, -0.006, 0.003, 0.01)])
    reference_positions, reference_weights = patterns(np.broadcast_to(np.eye(2), (16, 2, 2)))
    strained_positions, strained_weights = patterns(np.stack([deformation_from_strain(*case) for case in cases]))
    origin0 = np.zeros(2)
    offsets = reflection_calibration(
        reference_positions, reference_weights, reference, origin0, options=FitOptions(static_offsets=True)
    )
    assert len(offsets) == len(hk)
    errors = {}
    for name, table in (("corrected", offsets), ("as measured", None)):
        fits = [
            fit_patterns(p, w, reference, origin0, calibration=table)
            for p, w in ((reference_positions, reference_weights), (strained_positions, strained_weights))
        ]
        assert all(fit["valid"].all() for fit in fits)
        ref = reference_lattice(fits[0]["lattice"][None], valid=fits[0]["valid"][None])
        strain = strain_from_lattice(fits[1]["lattice"], ref)
        measured = np.stack([strain[c] for c in ("e_xx", "e_yy", "e_xy", "theta")], axis=-1)
        errors[name] = np.abs(measured - cases).max()
    # What stays is the part of the offsets linear in (h, k): it looks like a 1 % different reference
    # lattice, so it scales the strain by ~1 % (the same in any fit); the rest is gone.
    assert errors["corrected"] < 2e-4
    assert errors["as measured"] > 5 * errors["corrected"]


def test_reflections_noisier_than_their_weights_say_are_weighted_down_from_the_reference():
    """The 12 outermost reflections scatter by 0.08 px, the 36 others by 0.02 px, all with the same weight (as
    a network's faint outer spots under thermal diffuse scattering): the scatter measured in 32 reference
    patterns weights the outer ones down (the others' factors stay 1), and the strain of strained patterns
    comes back 1.5x closer than with the weights as given (1.5-1.8x over three seeds); with
    scatter_limit 0 nothing changes."""
    rng = np.random.default_rng(3)
    reference = np.array([[0.31, 0.02], [-0.04, 0.27]])  # g1, g2 as columns [1/angstrom]
    hk = np.array([(h, k) for h in range(-3, 4) for k in range(-3, 4) if (h, k) != (0, 0)], dtype=float)
    outer = np.abs(hk).sum(axis=1) >= 5
    noise = np.where(outer, 0.08, 0.02)[:, None] * K_SAMPLING

    def patterns(deformations):
        lattices = np.linalg.inv(np.swapaxes(deformations, -1, -2)) @ reference  # g' = F^-T g
        positions = np.einsum("nij,mj->nmi", lattices, hk)
        return positions + rng.normal(0.0, 1.0, positions.shape) * noise, np.ones(positions.shape[:2])

    cases = np.array([(0.01, 0.0, 0.0, 0.0), (0.0, -0.01, 0.005, 0.0), (0.004, -0.006, 0.003, 0.01)] * 8)
    reference_positions, reference_weights = patterns(np.broadcast_to(np.eye(2), (32, 2, 2)))
    strained_positions, strained_weights = patterns(np.stack([deformation_from_strain(*case) for case in cases]))
    origin0 = np.zeros(2)
    table = reflection_calibration(
        reference_positions, reference_weights, reference, origin0, options=FitOptions(scatter_limit=2.0)
    )
    factors = {tuple(row[:2]): row[4] for row in table}
    assert all(factors[tuple(h)] < 0.6 for h in hk[outer]) and all(factors[tuple(h)] == 1 for h in hk[~outer])
    assert np.all(table[:, 2:4] == 0)  # no static offsets asked for
    off = reflection_calibration(
        reference_positions, reference_weights, reference, origin0, options=FitOptions(scatter_limit=0)
    )
    assert np.all(off[:, 4] == 1)
    errors = {}
    for name, calibration in (("calibrated", table), ("as given", None)):
        fits = [
            fit_patterns(p, w, reference, origin0, calibration=calibration)
            for p, w in ((reference_positions, reference_weights), (strained_positions, strained_weights))
        ]
        ref = reference_lattice(fits[0]["lattice"][None], valid=fits[0]["valid"][None])
        strain = strain_from_lattice(fits[1]["lattice"], ref)
        measured = np.stack([strain[c] for c in ("e_xx", "e_yy", "e_xy", "theta")], axis=-1)
        errors[name] = np.sqrt(np.mean((measured - cases) ** 2))
    assert errors["as given"] > 1.4 * errors["calibrated"], errors


def test_a_collinear_lattice_indexes_nothing_and_the_others_still_fit():
    """One pattern with a collinear initial basis (a training validation step once raised
    'Singular matrix' on one): its peaks are not indexed, its fit is invalid, the others fit."""
    lattice = np.array([[0.3, 0.0], [0.0, 0.25]])
    hk = np.array([(h, k) for h in range(-2, 3) for k in range(-2, 3)], dtype=float)
    positions = np.broadcast_to(hk @ lattice.T, (3, len(hk), 2)).copy()
    guesses = np.stack([lattice, np.array([[0.3, 0.6], [0.0, 0.0]]), lattice])  # the second: g2 = 2 g1
    _, indexed = index_peaks(positions, guesses)
    assert indexed[[0, 2]].all() and not indexed[1].any()
    fit = fit_patterns(positions, np.ones(positions.shape[:2]), guesses, np.zeros(2))
    assert fit["valid"].tolist() == [True, False, True]
    np.testing.assert_allclose(fit["lattice"][[0, 2]], np.stack([lattice, lattice]), atol=1e-12)


def test_the_fit_line_says_what_the_reference_calibration_changed():
    """`strain` prints which reflections the reference region weighted down and whether offsets were taken off."""
    from stemstrain.strainmap import describe_fit

    options = {"scatter_limit": 2.0}
    plain = {"reflection_calibration": [[1, 0, 0.0, 0.0, 1.0], [0, 1, 0.0, 0.0, 1.0]], "fit_options": options}
    assert describe_fit(plain) == "" and describe_fit({}) == ""
    down = {"reflection_calibration": [[1, 0, 0.0, 0.0, 1.0], [3, 2, 0.0, 0.0, 0.25]], "fit_options": options}
    assert describe_fit(down).startswith("lattice fit: 1 of 2 reflections weighted down (to 0.25-0.25)")
    assert "--scatter-limit 2" in describe_fit(down)
    offsets = {"reflection_calibration": [[1, 0, 0.001, 0.0, 1.0]], "fit_options": options}
    assert describe_fit(offsets) == "lattice fit: static offsets of 1 reflections taken off"

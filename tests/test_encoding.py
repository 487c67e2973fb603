"""The spot encoding of the network's outputs: targets rendered from spot lists, and the read-out back."""

from __future__ import annotations

import numpy as np
import torch

from stemstrain.config import ModelConfig
from stemstrain.detect.bragg import aperture_disk
from stemstrain.model import UNet, decode_spots, normalise_target, render_targets, spot_loss
from stemstrain.model.encoding import disk_counts
from stemstrain.simulate.targets import target_image

RNG = np.random.default_rng(7)


def lattice_spots(n_images: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Spots on a slightly sheared 11-px lattice at random sub-pixel offsets, NaN-padded to 96 rows."""
    spots = np.full((n_images, 96, 2), np.nan)
    amplitudes = np.zeros((n_images, 96))
    for i in range(n_images):
        h, k = np.meshgrid(np.arange(-4, 5), np.arange(-4, 5))
        g1, g2 = np.array([11.3, 0.7]), np.array([-1.1, 10.6])
        xy = 64 + RNG.uniform(-0.5, 0.5, 2) + h.ravel()[:, None] * g1 + k.ravel()[:, None] * g2
        xy = xy[np.all((xy > 3) & (xy < 124), axis=1)]
        spots[i, : len(xy)] = xy
        amplitudes[i, : len(xy)] = RNG.uniform(0.05, 1.0, len(xy))
    return torch.tensor(spots, dtype=torch.float32), torch.tensor(amplitudes, dtype=torch.float32)


def perfect_outputs(spots: torch.Tensor, amplitudes: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Network outputs equal to the rendered targets: a confident mask, the exact offsets, one σ [px]."""
    rendered = render_targets(spots, amplitudes, 128)
    log_sigma = torch.full_like(rendered.image, np.log(sigma_px))
    logit = torch.where(rendered.image > 0, 10.0, -10.0)
    return torch.cat([logit[:, None], rendered.image[:, None], rendered.offsets, log_sigma[:, None]], dim=1)


def test_rendered_image_is_the_normalised_target_image():
    spots, amplitudes = lattice_spots(1)
    rendered = render_targets(spots, amplitudes, 128, sigma_px=1.0, power=0.5)
    real = torch.isfinite(spots[0, :, 0])
    stored = target_image(spots[0][real].numpy(), amplitudes[0][real].numpy(), 128, 1.0)
    # Amplitudes are relative to the direct beam (1): rendering scales by them, where normalise_target
    # scales by the sampled maximum of the image.
    expected = torch.tensor(stored).clamp_min(0) ** 0.5
    np.testing.assert_allclose(rendered.image[0].numpy(), expected.numpy(), atol=2e-5)
    peak = float(torch.tensor(stored).max())
    np.testing.assert_allclose(
        normalise_target(torch.tensor(stored), 0.5).numpy(), expected.numpy() / peak**0.5, atol=1e-5
    )
    assert torch.equal(rendered.image[0] > 0, expected > 0)  # the same spot mask


def test_offsets_point_from_each_pixel_to_its_spot_centre():
    spots, amplitudes = lattice_spots(2)
    rendered = render_targets(spots, amplitudes, 128)
    n, rows, cols = torch.nonzero(rendered.offset_mask, as_tuple=True)
    centres = torch.stack([cols + rendered.offsets[n, 0, rows, cols], rows + rendered.offsets[n, 1, rows, cols]], -1)
    distance = torch.cdist(centres[:, None, :].double(), spots[n].double().nan_to_num(1e6))[:, 0]
    assert distance.min(dim=-1).values.max() < 1e-5  # every marked pixel names a true centre exactly
    assert torch.all(rendered.offsets[n, :, rows, cols].norm(dim=-1) <= 1.5 + 1e-6)
    assert rendered.offset_mask.sum(dim=(1, 2)).min() >= 5 * torch.isfinite(spots[:, :, 0]).sum(dim=1).min()


def test_read_out_of_perfect_outputs_returns_the_spot_centres():
    """Outputs equal to the targets (confident mask, σ = 0.05 px) decode to the sub-pixel centres."""
    spots, amplitudes = lattice_spots(3)
    outputs = perfect_outputs(spots, amplitudes, sigma_px=0.05)
    positions, weights = decode_spots(outputs.numpy(), max_peaks=100)
    for i in range(3):
        found = positions[i][np.isfinite(positions[i, :, 0])]
        truth = spots[i][torch.isfinite(spots[i, :, 0])].numpy()
        inside = truth[np.all((truth > 2) & (truth < 125), axis=1)]
        distance = np.linalg.norm(found[:, None] - inside[None], axis=-1).min(axis=1)
        assert len(found) >= len(inside) - 2
        assert np.max(distance) < 1e-4  # exact, where a 3×3 log-quadratic fit of σ√2 Gaussians is not
        np.testing.assert_allclose(weights[i][: len(found)], 1 / 0.05**2, rtol=1e-4)
    # A network without offset channels reads the spot image alone, as before.
    plain_positions, plain_weights = decode_spots(outputs[:, :2].numpy(), max_peaks=100)
    assert np.all(plain_weights[np.isfinite(plain_positions[..., 0])] > 0)


def test_weights_add_each_disks_counting_noise():
    """With the patterns, a spot's weight is 1/(σ² + r²/N): bright disks weigh more than faint ones."""
    spots, amplitudes = lattice_spots(2)
    outputs = perfect_outputs(spots, amplitudes, sigma_px=0.1)
    radius = 2.5  # [px]
    patterns = np.zeros((2, 128, 128))
    for i in range(2):
        for (x, y), a in zip(spots[i].numpy(), amplitudes[i].numpy(), strict=True):
            if np.isfinite(x):  # a disk of 1000 a counts centred on each spot
                disk = aperture_disk((128, 128), 1.0, (y, x), radius)
                patterns[i] += 1000 * a * disk / disk.sum()
    positions, weights = decode_spots(outputs.numpy(), max_peaks=100, patterns=patterns, disk_radius_px=radius)
    counts = disk_counts(patterns, positions, radius)
    found = np.isfinite(positions[..., 0])
    nearest = torch.cdist(torch.tensor(np.nan_to_num(positions, nan=1e6)), spots.nan_to_num(-1e6).double()).argmin(-1)
    expected_counts = 1000 * np.take_along_axis(amplitudes.numpy(), nearest.numpy(), axis=1)
    np.testing.assert_allclose(counts[found], expected_counts[found], rtol=0.02)  # the whole disk, nothing else
    np.testing.assert_allclose(weights[found], 1 / (0.1**2 + radius**2 / counts[found]), rtol=1e-6)
    bright, faint = np.argmax(np.where(found, counts, -1)[0]), np.argmin(np.where(found, counts, np.inf)[0])
    assert weights[0, bright] > 3 * weights[0, faint]
    # Without the patterns (or the radius) the weights are the network's 1/σ² alone.
    _, plain = decode_spots(outputs.numpy(), max_peaks=100)
    np.testing.assert_allclose(plain[found], 1 / 0.1**2, rtol=1e-4)


def test_offset_loss_rewards_the_right_offsets_and_trains():
    spots, amplitudes = lattice_spots(2)
    rendered = render_targets(spots, amplitudes, 128)
    outputs = torch.zeros(2, 5, 128, 128)
    right = outputs.clone()
    right[:, 2:4] = rendered.offsets
    args = (rendered.image, 1.0, rendered.offsets, rendered.offset_mask)
    assert spot_loss(right, *args).offset < spot_loss(outputs, *args).offset - 0.1
    # Seeded: a tiny unnormalised network's random start has dead ReLUs before the head about 1 in 30 times.
    torch.manual_seed(0)
    network = UNet(ModelConfig(base_channels=4, depth=2, norm="none", offsets=True))
    out = network(torch.rand(2, 1, 128, 128) * 100)
    assert out.shape == (2, 5, 128, 128)
    loss = spot_loss(out, *args)
    loss.total.backward()
    assert network.head.weight.grad[2:].abs().sum() > 0  # the offset channels get a gradient


def test_validation_lattice_error_is_the_strain_of_the_read_out():
    """The validation metric fits each pattern's lattice as inference does: zero for a perfect read-out, and
    the strain itself when the read-out reports a lattice strained against the truth."""
    from stemstrain.strain import deformation_from_strain
    from stemstrain.train.metrics import lattice_strain_errors

    spots, amplitudes = lattice_spots(3)
    spots, amplitudes = spots.numpy().astype(float), amplitudes.numpy().astype(float)
    amplitudes[:, 0] = 1.0  # the strongest spot is the lattice's origin (the direct beam)
    weights = np.where(amplitudes > 0, 1.0, 0.0)
    exact = lattice_strain_errors(spots, amplitudes, spots, weights)
    np.testing.assert_allclose(exact, 0.0, atol=1e-7)  # float32 spots weighted differently in the two fits
    # A read-out whose spots follow G' = F^-T G about the direct beam: the error is F's strain.
    deformation = deformation_from_strain(0.004, -0.002, 0.001, 0.003)
    origin = spots[:, :1]
    moved = origin + (spots - origin) @ np.linalg.inv(deformation)  # (x, y) rows: G^T -> G^T F^-1
    errors = lattice_strain_errors(spots, amplitudes, moved, weights)
    np.testing.assert_allclose(errors, np.tile([0.004, -0.002, 0.001, 0.003], (3, 1)), atol=2e-6)

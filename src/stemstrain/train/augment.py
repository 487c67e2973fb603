"""On-the-fly augmentation of training batches. Every draw comes from the generator of the step.

In order: random contrast inside the Bragg disks (their edges stay put); dose thinning (Poisson
statistics of a lower dose); what a real specimen and camera add (a diffuse halo, a wider
point-spread, saturation); one of the eight symmetries of the detector grid
about k = 0 (90° turns and mirrors, exact on the pixel grid: a mirror image of a crystal is a
crystal); a random affine map (a descan shift, and a symmetric stretch whose principal values lie
within ± ``augment.strain``, so that no fixed spot position, lattice spacing or angle is a safe
guess); the ellipticity of the projector. Stored spot lists move exactly with the pattern and the
targets are rendered from them (:func:`stemstrain.model.encoding.render_targets`); a training set
without spot lists moves its target images by the same bilinear warp as the patterns.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.nn import functional as F

from stemstrain.config import Augment
from stemstrain.model.encoding import SpotTargets, render_targets
from stemstrain.model.loss import normalise_target

__all__ = ["Batch", "augment_batch", "camera_effects", "disk_contrast", "symmetry", "thin_dose", "warp"]


class Batch(NamedTuple):
    """A batch of the training set (all on one device).

    Attributes
    ----------
    inputs : Tensor (N, 1, H, W)
        Raw patterns [counts].
    targets : Tensor (N, 1, H, W)
        Stored target images (Gaussian spots of σ ``target_sigma_px``, amplitude ≤ 1).
    spots : Tensor (N, M, 2) or None
        Target spot centres (x, y) [px], NaN-padded; None for a set without spot lists.
    amplitudes : Tensor (N, M) or None
        Target spot amplitudes (0 for padding).
    radii : Tensor (N,) or None
        Disk radius of each pattern [px]; None for a set that records no optics.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    spots: torch.Tensor | None = None
    amplitudes: torch.Tensor | None = None
    radii: torch.Tensor | None = None

    def to(self, device) -> Batch:
        return Batch(*(None if t is None else t.to(device, non_blocking=True) for t in self))


def _thin(inputs: torch.Tensor, keep: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Keep each count with probability ``keep`` (≤ 1): exact Poisson statistics of the thinned intensity.

    Integer counts are thinned binomially; non-integer ones (blurred counts) are resampled as Poisson of
    the scaled intensity.
    """
    counts = inputs.clamp_min(0.0)
    if torch.equal(counts, counts.round()):
        return torch.binomial(counts, keep, generator=generator)
    return torch.poisson(counts * keep, generator=generator)


def disk_contrast(
    inputs: torch.Tensor, spots: torch.Tensor, radii: torch.Tensor, contrast: float, generator: torch.Generator
) -> torch.Tensor:
    """Thin the counts inside each Bragg disk by a random smooth field; the disk's edge stays put.

    Inside the disk of spot c and radius R the counts are kept with probability
    (1 + a·u + b(|u|² - 1/2)) / (1 + |a| + |b|/2), u = (p - c) / R, with a uniform in the disk of radius
    ``contrast`` and b uniform in ± ``contrast`` / 2, drawn per disk, for half of the patterns. A disk's
    intensity-weighted centre moves by up to ~``contrast`` R / 4 while its rim does not, as dynamical
    contrast moves it: the network learns that the inside of a disk does not say where the disk is.

    Parameters
    ----------
    inputs : Tensor (N, 1, H, W)
        Raw patterns [counts].
    spots : Tensor (N, M, 2)
        Disk centres (x, y) [px], NaN-padded.
    radii : Tensor (N,)
        Disk radius of each pattern [px].
    contrast : float
        Largest gradient |a| of the field across one disk radius [1].
    """
    n, _, height, width = inputs.shape
    device = inputs.device

    def uniform(*shape):
        return torch.rand(shape, generator=generator, device=device)

    m = spots.shape[1]
    angle, size = 2 * math.pi * uniform(n, m), contrast * uniform(n, m).sqrt()
    gradient = torch.stack([size * torch.cos(angle), size * torch.sin(angle)], -1)  # (N, M, 2)
    curvature = contrast * (uniform(n, m) - 0.5)
    chosen = (uniform(n) < 0.5)[:, None] & torch.isfinite(spots).all(-1)  # (N, M)
    reach = math.ceil(float(radii.max())) + 1
    steps = torch.arange(-reach, reach + 1, device=device)
    window = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), -1).reshape(-1, 2)  # (P, 2) as (x, y)
    centres = torch.where(torch.isfinite(spots), spots, torch.zeros_like(spots))
    pixels = centres.round().long()[:, :, None, :] + window  # (N, M, P, 2)
    u = (pixels - centres[:, :, None, :]) / radii[:, None, None, None]
    r2 = (u**2).sum(-1)
    field = 1 + (u * gradient[:, :, None, :]).sum(-1) + curvature[..., None] * (r2 - 0.5)
    field = field / (1 + gradient.norm(dim=-1) + curvature.abs() / 2)[..., None]
    inside = (
        (r2 < 1)
        & chosen[..., None]
        & (pixels[..., 0] >= 0)
        & (pixels[..., 0] < width)
        & (pixels[..., 1] >= 0)
        & (pixels[..., 1] < height)
    )
    # log keep, summed where disks overlap; pixels outside every chosen disk keep all counts.
    log_keep = torch.zeros(n, height * width, device=device)
    rows = torch.arange(n, device=device)[:, None, None].expand_as(r2)
    flat = pixels[..., 1] * width + pixels[..., 0]
    log_keep.index_put_((rows[inside], flat[inside]), torch.log(field[inside].clamp_min(1e-6)), accumulate=True)
    return _thin(inputs, log_keep.exp().reshape(n, 1, height, width), generator)


def thin_dose(inputs: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Resample a fraction of the patterns to a lower dose.

    Binomial thinning of integer counts gives exactly the Poisson statistics of the lower dose;
    non-integer inputs (blurred counts) are resampled as Poisson of the scaled intensity.

    Parameters
    ----------
    inputs : Tensor (N, 1, H, W)
        Raw patterns [counts].
    """
    dose = inputs.sum(dim=(1, 2, 3)).clamp_min(1.0)
    uniform = torch.rand(dose.shape, generator=generator, device=inputs.device, dtype=dose.dtype)
    low = math.log(augment.min_dose)
    new_dose = torch.exp(low + uniform * (torch.log(dose) - low).clamp_min(0.0))
    picked = torch.rand(dose.shape, generator=generator, device=inputs.device, dtype=dose.dtype)
    keep = torch.where(picked < augment.dose_fraction, (new_dose / dose).clamp(max=1.0), torch.ones_like(dose))
    return _thin(inputs, keep[:, None, None, None].expand_as(inputs).contiguous(), generator)


def camera_effects(inputs: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Add what a real specimen and camera add to simulated counts: a halo, a point-spread, saturation.

    The halo's counts are Poisson (a sum of Poisson counts is Poisson) with the shape of a broad
    Lorentzian, (1 + r²/w²)^-1.5 with w of 15-60 px, elliptical by up to 30 % and off the beam by up
    to 8 px; its total is up to ``augment.halo`` times the pattern's counts. The point-spread is a
    Gaussian of σ up to ``augment.psf_px`` applied after the counting noise. Saturation clips a
    fraction ``augment.saturation`` of the patterns at 5-50 % of their brightest pixel.

    Parameters
    ----------
    inputs : Tensor (N, 1, H, W)
        Raw patterns [counts].
    """
    n, _, height, width = inputs.shape
    device = inputs.device

    def uniform(*shape):
        return torch.rand(shape, generator=generator, device=device)

    def half(values):
        return torch.where(uniform(n) < 0.5, values, torch.zeros_like(values))

    counts = inputs.clamp_min(0.0)
    if augment.halo > 0:
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device, dtype=torch.float32),
            torch.arange(width, device=device, dtype=torch.float32),
            indexing="ij",
        )
        centre = torch.tensor([width // 2, height // 2], device=device) + 8.0 * (2 * uniform(n, 2) - 1)
        widths = (15.0 + 45.0 * uniform(n, 1, 1, 1)) * (1 + 0.3 * (2 * uniform(n, 2, 1, 1) - 1))
        r2 = ((xs - centre[:, 0, None, None]) / widths[:, 0]) ** 2 + (
            (ys - centre[:, 1, None, None]) / widths[:, 1]
        ) ** 2
        shape = (1 + r2) ** -1.5
        total = half(augment.halo * uniform(n)) * counts.sum(dim=(1, 2, 3))
        counts = counts + torch.poisson(
            shape[:, None] * (total / shape.sum(dim=(1, 2)))[:, None, None, None], generator
        )
    if augment.psf_px > 0:
        sigma = half(augment.psf_px * uniform(n)).clamp_min(1e-3)
        radius = max(1, math.ceil(3 * augment.psf_px))
        offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True))[:, None, None, :]  # (N, 1, 1, K)
        image = F.conv2d(counts.transpose(0, 1), kernel, padding=(0, radius), groups=n)
        counts = F.conv2d(image, kernel.transpose(-1, -2), padding=(radius, 0), groups=n).transpose(0, 1)
    if augment.saturation > 0:
        level = counts.amax(dim=(1, 2, 3)) * (0.05 + 0.45 * uniform(n))
        clipped = uniform(n) < augment.saturation
        level = torch.where(clipped, level, torch.full_like(level, math.inf))
        counts = torch.minimum(counts, level[:, None, None, None])
    return counts


def symmetry(images: torch.Tensor, spots: torch.Tensor | None, ops: torch.Tensor, centre: int):
    """Apply one of the 8 symmetries of the square grid about pixel ``centre`` to each image and its spots.

    Parameters
    ----------
    images : Tensor (N, C, H, W)
        Square images; pixel ``centre`` is k = 0 on both axes.
    spots : Tensor (N, M, 2) or None
        Spot positions (x, y) [px].
    ops : Tensor of int (N,)
        Bits of each op: 1 mirrors x (x → 2c - x), 2 mirrors y, 4 swaps x and y (applied last).

    Returns
    -------
    images, spots
        Transformed. The mirror about pixel c maps the last pixel column onto the first; with the
        detector's k = 0 at index size // 2 that column has no partner and wraps around (one edge column).
    """
    images = images.clone()
    spots = None if spots is None else spots.clone()
    for bit, axis in ((1, -1), (2, -2)):
        chosen = (ops & bit) != 0
        if chosen.any():
            shift = 2 * centre - images.shape[axis] + 1
            images[chosen] = torch.roll(torch.flip(images[chosen], [axis]), shift, axis)
            if spots is not None:
                coordinate = 0 if axis == -1 else 1
                spots[chosen, :, coordinate] = 2 * centre - spots[chosen, :, coordinate]
    swapped = (ops & 4) != 0
    if swapped.any():
        images[swapped] = images[swapped].transpose(-1, -2)
        if spots is not None:
            spots[swapped] = spots[swapped].flip(-1)
    return images, spots


def warp(images: torch.Tensor, matrices: torch.Tensor, shifts: torch.Tensor, centre: float) -> torch.Tensor:
    """Apply p' = c + M (p - c) + s to images (bilinear), about the undiffracted beam c.

    Parameters
    ----------
    images : Tensor (N, C, H, W)
    matrices : Tensor (N, 2, 2)
        Linear maps acting on (x, y) pixel vectors.
    shifts : Tensor (N, 2)
        Shifts (x, y) [px].
    centre : float
        Pixel index of k = 0 on both axes.
    """
    n, _, height, width = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=images.device, dtype=torch.float32),
        torch.arange(width, device=images.device, dtype=torch.float32),
        indexing="ij",
    )
    out_xy = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2) - centre - shifts[:, None, :]
    source = out_xy @ torch.linalg.inv(matrices).transpose(1, 2) + centre
    size = torch.tensor([width - 1, height - 1], device=images.device, dtype=torch.float32)
    grid = (2 * source / size - 1).reshape(n, height, width, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _affine(n: int, augment: Augment, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random linear maps (the ellipticity, then a symmetric stretch within ± strain) and shifts (x, y) [px]."""

    def uniform(*shape):
        return torch.rand(shape, generator=generator, device=device)

    def about(angle: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        return rotation @ torch.diag_embed(principal) @ rotation.transpose(1, 2)

    shifts = (2 * uniform(n, 2) - 1) * augment.shift_px
    stretch = 1 + augment.ellipticity * uniform(n)
    matrices = about(math.pi * uniform(n), torch.stack([stretch, torch.ones_like(stretch)], -1))
    if augment.strain > 0:
        principal = 1 + augment.strain * (2 * uniform(n, 2) - 1)
        matrices = matrices @ about(math.pi * uniform(n), principal)
    return matrices, shifts


def augment_batch(
    batch: Batch, augment: Augment, generator: torch.Generator, power: float, sigma_px: float
) -> tuple[torch.Tensor, SpotTargets]:
    """Augment a batch; return the patterns and their rendered targets.

    Parameters
    ----------
    batch : Batch
        Patterns, stored targets and (where the set has them) spot lists.
    augment : Augment
        What to draw.
    generator : torch.Generator
        The step's random source.
    power : float
        Target power (``train.target_power``).
    sigma_px : float
        σ of the target spots [px] (the training set's ``target_sigma_px``).

    Returns
    -------
    inputs : Tensor (N, 1, H, W)
    targets : SpotTargets
        Image, offsets and their mask; from stored target images (no spot lists) the offsets are None.
    """
    inputs = batch.inputs
    n, device, size = inputs.shape[0], inputs.device, inputs.shape[-1]
    centre = size // 2
    if augment.disk_contrast > 0:  # check_training_set made sure the set has spot lists and radii
        inputs = disk_contrast(inputs, batch.spots, batch.radii, augment.disk_contrast, generator)
    if augment.dose_fraction > 0:
        inputs = thin_dose(inputs, augment, generator)
    if augment.halo > 0 or augment.psf_px > 0 or augment.saturation > 0:
        inputs = camera_effects(inputs, augment, generator)
    if batch.spots is None:
        return _augment_images(inputs, normalise_target(batch.targets, power), augment, generator)
    spots = batch.spots
    if augment.symmetries:
        ops = torch.randint(0, 8, (n,), generator=generator, device=device)
        inputs, spots = symmetry(inputs, spots, ops, centre)
    if augment.shift_px or augment.ellipticity or augment.strain:
        matrices, shifts = _affine(n, augment, generator, device)
        inputs = warp(inputs, matrices, shifts, float(centre))
        spots = (spots - centre) @ matrices.transpose(1, 2) + centre + shifts[:, None, :]
    return inputs, render_targets(spots, batch.amplitudes, size, sigma_px, power)


def _augment_images(inputs, targets, augment: Augment, generator) -> tuple[torch.Tensor, SpotTargets]:
    """A set without spot lists: the normalised target images move with the patterns (bilinear)."""
    n, device, size = inputs.shape[0], inputs.device, inputs.shape[-1]
    centre = size // 2
    if augment.symmetries:
        ops = torch.randint(0, 8, (n,), generator=generator, device=device)
        inputs, _ = symmetry(torch.cat([inputs, targets], dim=1), None, ops, centre)
        inputs, targets = inputs[:, :1], inputs[:, 1:]
    if augment.shift_px or augment.ellipticity or augment.strain:
        matrices, shifts = _affine(n, augment, generator, device)
        warped = warp(torch.cat([inputs, targets, (targets > 0).float()], dim=1), matrices, shifts, float(centre))
        # The bilinear mask > 0.5: the warped mask does not grow a ring of tiny interpolated values.
        inputs, targets = warped[:, 0:1], warped[:, 1:2] * (warped[:, 2:3] > 0.5)
    return inputs, SpotTargets(targets[:, 0], None, None)

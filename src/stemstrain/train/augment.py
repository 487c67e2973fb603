"""On-the-fly augmentation of training batches: dose thinning, and a shift and ellipticity that
move the target with the pattern. Every draw comes from the generator of the step."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from stemstrain.config import Augment

__all__ = ["augment_batch", "thin_dose", "warp"]


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
    keep = keep[:, None, None, None].expand_as(inputs).contiguous()
    counts = inputs.clamp_min(0.0)
    if torch.equal(counts, counts.round()):
        return torch.binomial(counts, keep, generator=generator)
    return torch.poisson(counts * keep, generator=generator)


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


def augment_batch(
    inputs: torch.Tensor, targets: torch.Tensor, augment: Augment, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dose thinning, then one random shift and ellipticity applied to pattern and target alike.

    Parameters
    ----------
    inputs : Tensor (N, 1, H, W)
        Raw patterns [counts].
    targets : Tensor (N, 1, H, W)
        Normalised targets; the warped spot mask is the bilinear mask > 0.5, so the mask does
        not grow a ring of tiny interpolated values.
    """
    n, device = inputs.shape[0], inputs.device
    if augment.dose_fraction > 0:
        inputs = thin_dose(inputs, augment, generator)
    if augment.shift_px == 0 and augment.ellipticity == 0:
        return inputs, targets

    def uniform(*shape):
        return torch.rand(shape, generator=generator, device=device)

    shifts = (2 * uniform(n, 2) - 1) * augment.shift_px
    stretch = 1 + augment.ellipticity * uniform(n)
    angle = math.pi * uniform(n)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    scale = torch.diag_embed(torch.stack([stretch, torch.ones_like(stretch)], -1))
    matrices = rotation @ scale @ rotation.transpose(1, 2)
    centre = float(inputs.shape[-1] // 2)
    warped = warp(torch.cat([inputs, targets, (targets > 0).float()], dim=1), matrices, shifts, centre)
    mask = warped[:, 2:3] > 0.5
    return warped[:, 0:1], warped[:, 1:2] * mask

"""The loss of the method, L = BCE(b_p, b_t) + MSE(p, t)^γ, and the target normalisation.

b_t = (target > 0) is the spot mask; the non-differentiable b_p = (p > 0) of the poster is
replaced by the mask logit of channel 0 through BCE-with-logits. p is channel 1, t the
normalised target image (:func:`normalise_target`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

# Below this MSE the term MSE^γ continues linearly (MSE · eps^(γ-1), same value at eps): it is
# 0 at a perfect prediction and its gradient stays finite at MSE = 0, where d/dx x^γ diverges
# for γ < 1. Above it the term is exactly MSE^γ.
_MSE_EPS = 1e-12


class SpotLoss(NamedTuple):
    """Total loss and its two terms (all scalar tensors)."""

    total: torch.Tensor
    bce: torch.Tensor
    mse: torch.Tensor


def normalise_target(targets: torch.Tensor, power: float) -> torch.Tensor:
    """Bring kinematic spot intensities, which span decades, to a comparable scale.

    Each target image is divided by its maximum and raised to ``power``. A monotone map of a
    Gaussian spot ``I exp(-r²/2σ²)`` gives ``I^a exp(-a r²/2σ²)``: still a Gaussian centred on
    the same position (width σ/√a), so the maxima of the predicted spot image stay at the
    spot positions, while weak reflections are no longer lost next to the strong ones.

    Parameters
    ----------
    targets : Tensor (..., H, W)
        Target spot images (zero outside the spots).
    power : float
        Exponent a in (0, 1] [1].

    Returns
    -------
    Tensor (..., H, W)
        Values in [0, 1]; zero exactly where ``targets`` is zero.
    """
    peak = targets.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    return (targets.clamp_min(0.0) / peak) ** power


def spot_loss(outputs: torch.Tensor, targets: torch.Tensor, gamma: float) -> SpotLoss:
    """L = BCE(mask logit, target > 0) + MSE(spot image, target)^γ, averaged over all pixels.

    Parameters
    ----------
    outputs : Tensor (N, 2, H, W)
        Network output: channel 0 mask logit, channel 1 spot image.
    targets : Tensor (N, H, W) or (N, 1, H, W)
        Normalised target images (:func:`normalise_target`); ``targets > 0`` is the spot mask.
    gamma : float
        Exponent γ > 0 of the MSE term.

    Returns
    -------
    SpotLoss
        ``total``, ``bce`` and ``mse`` (the MSE before the power γ), computed in float32.
    """
    outputs = outputs.float()
    targets = targets.float().reshape(outputs.shape[0], *outputs.shape[-2:])
    bce = F.binary_cross_entropy_with_logits(outputs[:, 0], (targets > 0).float())
    mse = F.mse_loss(outputs[:, 1], targets)
    safe = mse.clamp_min(_MSE_EPS)
    mse_term = torch.where(mse > _MSE_EPS, safe**gamma, mse * _MSE_EPS ** (gamma - 1))
    return SpotLoss(bce + mse_term, bce, mse)

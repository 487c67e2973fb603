"""The loss of the method, L = BCE(b_p, b_t) + MSE(p, t)^γ, and the target normalisation.

b_t = (target > 0) is the spot mask; the non-differentiable b_p = (p > 0) of the poster is
replaced by the mask logit of channel 0 through BCE-with-logits. p is channel 1, t the
normalised target image (:func:`normalise_target`). A network with offset channels adds
λ NLL: the Gaussian negative log-likelihood of the sub-pixel offsets to the spot centres under
their predicted σ (:mod:`stemstrain.model.encoding`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from stemstrain.model.encoding import LOG_SIGMA_RANGE

# Below this MSE the term MSE^γ continues linearly (MSE · eps^(γ-1), same value at eps): it is
# 0 at a perfect prediction and its gradient stays finite at MSE = 0, where d/dx x^γ diverges
# for γ < 1. Above it the term is exactly MSE^γ.
_MSE_EPS = 1e-12


class SpotLoss(NamedTuple):
    """Total loss and its terms (all scalar tensors; ``offset`` is 0 for a network without offsets)."""

    total: torch.Tensor
    bce: torch.Tensor
    mse: torch.Tensor
    offset: torch.Tensor


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


def spot_loss(
    outputs: torch.Tensor,
    targets: torch.Tensor,
    gamma: float,
    offsets: torch.Tensor | None = None,
    offset_mask: torch.Tensor | None = None,
    offset_weight: float = 1.0,
) -> SpotLoss:
    """L = BCE(mask logit, target > 0) + MSE(spot image, target)^γ [+ λ NLL(offsets)], averaged over pixels.

    Parameters
    ----------
    outputs : Tensor (N, C, H, W)
        Network output: channel 0 mask logit, channel 1 spot image; with C = 5 also the offsets (x, y)
        [px] and their log σ.
    targets : Tensor (N, H, W) or (N, 1, H, W)
        Normalised target images (:func:`normalise_target`); ``targets > 0`` is the spot mask.
    gamma : float
        Exponent γ > 0 of the MSE term.
    offsets : Tensor (N, 2, H, W), optional
        Offset (x, y) from each pixel to its spot centre [px] (:func:`stemstrain.model.encoding.render_targets`).
    offset_mask : Tensor of bool (N, H, W), optional
        Pixels where ``offsets`` is defined.
    offset_weight : float
        λ of the offset term: the Gaussian negative log-likelihood ``|d - d̂|² / 2σ² + 2 log σ`` of the
        predicted offset d̂ and log σ, averaged over the pixels of ``offset_mask``.

    Returns
    -------
    SpotLoss
        ``total``, ``bce``, ``mse`` (before the power γ) and ``offset`` (the NLL before λ), in float32.
    """
    outputs = outputs.float()
    targets = targets.float().reshape(outputs.shape[0], *outputs.shape[-2:])
    bce = F.binary_cross_entropy_with_logits(outputs[:, 0], (targets > 0).float())
    mse = F.mse_loss(outputs[:, 1], targets)
    safe = mse.clamp_min(_MSE_EPS)
    mse_term = torch.where(mse > _MSE_EPS, safe**gamma, mse * _MSE_EPS ** (gamma - 1))
    offset = torch.zeros((), device=outputs.device)
    if offsets is not None and outputs.shape[1] >= 5:
        offset = offset_nll(outputs[:, 2:5], offsets.float(), offset_mask)
    return SpotLoss(bce + mse_term + offset_weight * offset, bce, mse, offset)


def offset_nll(predicted: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood of 2-D offsets with an isotropic predicted σ.

    Parameters
    ----------
    predicted : Tensor (N, 3, H, W)
        Predicted offset (x, y) [px] and log σ [log px].
    offsets : Tensor (N, 2, H, W)
        True offsets [px].
    mask : Tensor of bool (N, H, W)
        Pixels where the true offset is defined; the mean runs over them (0 when there are none).
    """
    log_sigma = predicted[:, 2].clamp(*LOG_SIGMA_RANGE)
    squared = ((predicted[:, :2] - offsets) ** 2).sum(dim=1)
    nll = 0.5 * squared * torch.exp(-2.0 * log_sigma) + 2.0 * log_sigma
    weight = mask.float()
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)

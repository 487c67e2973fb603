"""Validation during training: the loss, and the spots scored the way inference reads them.

Predicted spots are read out of the network's output by :func:`stemstrain.model.encoding.decode_spots`,
the read-out of the ``unet`` detector; true spots are the local maxima of the targets. Both are
located by the one subpixel peak finder, :func:`stemstrain.peaks.find_peaks`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from stemstrain.config import TrainConfig
from stemstrain.model import normalise_target, spot_loss
from stemstrain.model.encoding import decode_spots
from stemstrain.peaks import find_peaks
from stemstrain.runtime import autocast
from stemstrain.train.ddp import summed

__all__ = ["match_spots", "spot_counts", "spot_positions", "validate"]


def spot_positions(images, valid) -> list[np.ndarray]:
    """Every local maximum (3×3) of images inside ``valid``, located to subpixel, listed per image.

    Parameters
    ----------
    images : Tensor or ndarray (N, H, W)
    valid : Tensor or ndarray of bool (N, H, W)

    Returns
    -------
    list of ndarray (m_i, 2)
        Spot positions (x, y) [px] per image.
    """
    images = _numpy(images)
    positions, _ = find_peaks(
        images, threshold_rel=0.0, min_distance=1, max_peaks=images[0].size, mask=_numpy(valid).astype(bool)
    )
    return _listed(positions)


def match_spots(true: np.ndarray, predicted: np.ndarray, radius: float) -> np.ndarray:
    """Distances [px] of mutually nearest true/predicted spot pairs closer than ``radius``."""
    if len(true) == 0 or len(predicted) == 0:
        return np.empty(0)
    distance = np.linalg.norm(true[:, None, :] - predicted[None, :, :], axis=-1)
    nearest_pred = distance.argmin(axis=1)
    nearest_true = distance.argmin(axis=0)
    rows = np.flatnonzero(nearest_true[nearest_pred] == np.arange(len(true)))
    pairs = distance[rows, nearest_pred[rows]]
    return pairs[pairs < radius]


def spot_counts(outputs: torch.Tensor, targets: torch.Tensor, radius: float) -> tuple[int, int, list[float]]:
    """Spots in targets, spots read out of the outputs, and position errors [px] of the matched ones."""
    true = spot_positions(targets, targets > 0)
    predicted = _listed(decode_spots(_numpy(outputs))[0])
    errors = [match_spots(t, p, radius) for t, p in zip(true, predicted, strict=True)]
    return sum(map(len, true)), sum(map(len, predicted)), [float(e) for err in errors for e in err]


def validate(model, dataset, indices, train: TrainConfig, precision: str, device, rank: int, world: int) -> dict:
    """Validation loss and spot recall, precision and median position error, over every rank's share.

    The bare module runs (not the DDP wrapper): a DDP forward is a collective, and the ranks'
    shares may differ in their number of batches.
    """
    model.eval()
    share = indices[rank::world]
    sums = torch.zeros(4, dtype=torch.float64)  # loss, bce and mse summed over patterns; patterns
    n_true = n_predicted = 0
    errors: list[float] = []
    with torch.no_grad():
        for start in range(0, len(share), train.batch_size):
            inputs, targets = dataset[share[start : start + train.batch_size]]
            inputs = inputs.to(device).contiguous(memory_format=torch.channels_last)
            targets = normalise_target(targets.to(device), train.target_power)[:, 0]
            with autocast(device, precision):
                outputs = model(inputs)
            outputs = outputs.float()
            loss = spot_loss(outputs, targets, train.gamma)
            b = len(inputs)
            sums[:4] += torch.tensor([loss.total.item() * b, loss.bce.item() * b, loss.mse.item() * b, b])
            true, predicted, matched = spot_counts(outputs, targets, train.match_radius_px)
            n_true, n_predicted = n_true + true, n_predicted + predicted
            errors += matched
    counts = torch.tensor([n_true, n_predicted, len(errors)], dtype=torch.float64)
    gathered: list[list[float]] = [[] for _ in range(world)]
    sums, counts = summed(sums, device), summed(counts, device)
    dist.all_gather_object(gathered, errors)
    all_errors = [e for part in gathered for e in part]
    model.train()
    n = max(sums[3].item(), 1.0)
    n_true, n_predicted, n_matched = counts.tolist()
    return {
        "val_loss": sums[0].item() / n,
        "val_bce": sums[1].item() / n,
        "val_mse": sums[2].item() / n,
        "val_median_error_px": float(np.median(all_errors)) if all_errors else float("nan"),
        "val_recall": n_matched / n_true if n_true else float("nan"),
        "val_precision": n_matched / n_predicted if n_predicted else float("nan"),
    }


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy() if array.is_floating_point() else array.cpu().numpy()
    return np.asarray(array)


def _listed(positions: np.ndarray) -> list[np.ndarray]:
    """NaN-padded positions (n, m, 2) as a list of the found ones per image."""
    return [found[np.isfinite(found[:, 0])] for found in positions]

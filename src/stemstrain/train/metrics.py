"""Validation during training: the loss, and the spots and lattices scored the way inference reads them.

Predicted spots are read out of the network's output by :func:`stemstrain.model.encoding.decode_spots`,
the read-out of the ``unet`` detector. True spots are the training set's spot lists (or, for a set
without them, the local maxima of the target images, located by the one peak finder
:func:`stemstrain.peaks.find_peaks`). Each validation pattern's lattice is then fitted as inference fits
it (:func:`stemstrain.lattice.fit_patterns`), to the predicted spots and to the true ones: the strain of
one relative to the other is the error a strain map would carry, compression towards a prior included.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from stemstrain.config import Augment, TrainConfig
from stemstrain.lattice import FitOptions, fit_patterns, reduced_basis
from stemstrain.model import spot_loss
from stemstrain.model.encoding import decode_spots
from stemstrain.peaks import find_peaks
from stemstrain.runtime import autocast
from stemstrain.strain import STRAIN_COMPONENTS, strain_from_lattice
from stemstrain.train.augment import augment_batch
from stemstrain.train.ddp import summed

__all__ = ["lattice_strain_errors", "match_spots", "spot_positions", "validate"]


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


def validate(model, dataset, indices, train: TrainConfig, precision: str, device, rank: int, world: int) -> dict:
    """Validation loss, spot recall, precision and median position error, and the lattice strain error.

    The bare module runs (not the DDP wrapper): a DDP forward is a collective, and the ranks'
    shares may differ in their number of batches.
    """
    model.eval()
    share = indices[rank::world]
    sums = torch.zeros(5, dtype=torch.float64)  # loss, bce, mse and offset summed over patterns; patterns
    n_true = n_predicted = 0
    errors: list[float] = []
    strain_errors: list[np.ndarray] = []
    # The read-out adds each spot's counting noise, as inference does, with each pattern's disk radius [px].
    with torch.no_grad():
        for start in range(0, len(share), train.batch_size):
            chosen = share[start : start + train.batch_size]
            batch = dataset[chosen].to(device)
            _, targets = augment_batch(batch, NO_AUGMENT, None, train.target_power, dataset.target_sigma_px)
            with autocast(device, precision):
                outputs = model(batch.inputs.contiguous(memory_format=torch.channels_last))
            outputs = outputs.float()
            image, offsets, offset_mask = targets
            loss = spot_loss(outputs, image, train.gamma, offsets, offset_mask, train.offset_weight)
            b = len(outputs)
            values = [loss.total.item(), loss.bce.item(), loss.mse.item(), loss.offset.item()]
            sums += torch.tensor([*(v * b for v in values), b], dtype=torch.float64)
            radius = None if batch.radii is None else _numpy(batch.radii)
            predicted, weights = decode_spots(
                _numpy(outputs), patterns=_numpy(batch.inputs[:, 0]), disk_radius_px=radius
            )
            if batch.spots is None:
                true = spot_positions(targets.image, targets.image > 0)
            else:
                true = _listed(_inside(_numpy(batch.spots), _numpy(batch.amplitudes), outputs.shape[-1]))
                strain_errors.append(
                    lattice_strain_errors(_numpy(batch.spots), _numpy(batch.amplitudes), predicted, weights)
                )
            matched = [match_spots(t, p, train.match_radius_px) for t, p in zip(true, _listed(predicted), strict=True)]
            n_true += sum(map(len, true))
            n_predicted += int(np.isfinite(predicted[..., 0]).sum())
            errors += [float(e) for pairs in matched for e in pairs]
    counts = torch.tensor([n_true, n_predicted, len(errors)], dtype=torch.float64)
    sums, counts = summed(sums, device), summed(counts, device)
    all_errors = _gathered(errors, world)
    strain = _gathered([e for part in strain_errors for e in part.tolist()], world)
    model.train()
    n = max(sums[4].item(), 1.0)
    n_true, n_predicted, n_matched = counts.tolist()
    return {
        "val_loss": sums[0].item() / n,
        "val_bce": sums[1].item() / n,
        "val_mse": sums[2].item() / n,
        "val_offset": sums[3].item() / n,
        "val_median_error_px": float(np.median(all_errors)) if all_errors else float("nan"),
        "val_recall": n_matched / n_true if n_true else float("nan"),
        "val_precision": n_matched / n_predicted if n_predicted else float("nan"),
        **_strain_summary(np.asarray(strain, dtype=float).reshape(-1, 4)),
    }


NO_AUGMENT = Augment(shift_px=0.0, ellipticity=0.0, dose_fraction=0.0)


def lattice_strain_errors(
    true: np.ndarray, amplitudes: np.ndarray, predicted: np.ndarray, weights: np.ndarray, options=FitOptions()
) -> np.ndarray:
    """Strain of the lattice fitted to predicted spots relative to the lattice of the true spots.

    Parameters
    ----------
    true : ndarray (n, M, 2)
        True spot centres (x, y) [px], NaN-padded.
    amplitudes : ndarray (n, M)
        Their amplitudes (0 for padding); the strongest is the direct beam, the lattice's origin.
    predicted : ndarray (n, m, 2)
        Spots read out of the network [px], NaN-padded.
    weights : ndarray (n, m)
        Their fit weights.
    options : FitOptions
        Indexing and fit settings (inference's defaults).

    Returns
    -------
    ndarray (n, 4)
        e_xx, e_yy, e_xy [1] and theta [rad] of each pattern's predicted lattice relative to its true
        lattice: zero for a perfect read-out; NaN where either fit is not valid.
    """
    n = len(true)
    lattice0, origin0 = np.full((n, 2, 2), np.nan), np.full((n, 2), np.nan)
    for i in range(n):
        real = amplitudes[i] > 0
        if real.sum() >= 3:
            lattice0[i] = reduced_basis(true[i][real], amplitudes[i][real])
            origin0[i] = true[i][np.argmax(amplitudes[i])]
    errors = np.full((n, 4), np.nan)
    usable = np.all(np.isfinite(lattice0), axis=(-2, -1))
    if not usable.any():
        return errors
    reference = fit_patterns(true[usable], amplitudes[usable], lattice0[usable], origin0[usable], True, options)
    measured = fit_patterns(
        predicted[usable], weights[usable], reference["lattice"], reference["origin"], True, options
    )
    valid = reference["valid"] & measured["valid"]
    strain = strain_from_lattice(
        np.where(valid[:, None, None], measured["lattice"], np.nan),
        np.where(valid[:, None, None], reference["lattice"], lattice0[usable]),
    )
    errors[usable] = np.stack([strain[name] for name in STRAIN_COMPONENTS], axis=-1)
    return errors


def _strain_summary(errors: np.ndarray) -> dict:
    """RMS and median of the strain-component errors (e_xx, e_yy, e_xy) and the valid fraction."""
    if not len(errors):
        return {"val_strain_rmse": float("nan"), "val_strain_median": float("nan"), "val_strain_valid": float("nan")}
    valid = np.all(np.isfinite(errors), axis=-1)
    strain = errors[valid, :3]
    return {
        "val_strain_rmse": float(np.sqrt(np.mean(strain**2))) if len(strain) else float("nan"),
        "val_strain_median": float(np.median(np.abs(strain))) if len(strain) else float("nan"),
        "val_strain_valid": float(valid.mean()),
    }


def _gathered(values: list[float], world: int) -> list[float]:
    parts: list[list[float]] = [[] for _ in range(world)]
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def _inside(spots: np.ndarray, amplitudes: np.ndarray, size: int) -> np.ndarray:
    """True spots that the read-out can find: real, off the outermost pixel rows and columns."""
    inside = (amplitudes > 0) & np.all((spots >= 1) & (spots <= size - 2), axis=-1)
    return np.where(inside[..., None], spots, np.nan)


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy() if array.is_floating_point() else array.cpu().numpy()
    return np.asarray(array)


def _listed(positions: np.ndarray) -> list[np.ndarray]:
    """NaN-padded positions (n, m, 2) as a list of the found ones per image."""
    return [found[np.isfinite(found[:, 0])] for found in positions]

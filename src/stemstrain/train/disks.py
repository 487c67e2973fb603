"""Training of the disk-centre correction (:mod:`stemstrain.model.disks`) on a simulated training set.

Each training pattern's disks are placed by the template read-out, started within ±0.4 px of their
true centres (as the network's spots start it), and the corrector learns the offset from the placed
to the true centre. The template is the aperture disk at the pattern's optics, blurred as the
pattern's detector blurred it: the vacuum probe a user would record on that detector.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from scipy import ndimage

from stemstrain.detect.bragg import TemplateRefiner, aperture_disk, disk_radius
from stemstrain.errors import StemstrainInputError
from stemstrain.model.disks import MATRICES, PERMUTATIONS, DiskCorrector, disk_patches

__all__ = ["fit_disk_corrector", "residual_pairs"]

MIN_RADIUS_PX = 1.2
"""Disks smaller than this [px] are left out: their template is a point and has no edge to fit."""
MIN_AMPLITUDE = 0.05
"""Disks whose kinematic amplitude relative to the strongest is below this are left out."""
MAX_RESIDUAL_PX = 1.0
"""Offsets beyond this [px] are failed placements (a neighbour's disk), not a bias to learn."""
READ_BLOCK = 256
"""Patterns read from the store at a time."""


def residual_pairs(
    store: str, samples: slice | None = None, seed: int = 0, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Patches of template-placed disks and their offsets to the true centres.

    Parameters
    ----------
    store : path
        Training set (contract of docs/DESIGN.md: ``inputs``, ``spots``, ``spot_amplitudes`` and the
        per-pattern optics ``energy_eV``, ``semiangle_mrad``, ``blur_px``).
    samples : slice, optional
        Patterns used (default: all).
    seed : int
        Seed of the starting positions' jitter.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``patches`` (n, PATCH²), ``scalars`` (n, 2), ``offsets`` (n, 2) [px], ``amplitude`` (n,) (kinematic,
        relative to the strongest reflection), ``dose`` (n,) [e-] and ``sample`` (n,) of each kept disk.
    """
    data = xr.open_zarr(store)
    needed = {"inputs", "spots", "spot_amplitudes", "energy_eV", "semiangle_mrad", "blur_px", "dose"}
    if missing := sorted(needed - set(data.data_vars)):
        raise StemstrainInputError(f"training set {store} lacks the variables {missing}")
    data = data.isel(sample=samples or slice(None))
    k_sampling = float(data.attrs["k_sampling"])
    shape = (data.sizes["k_y"], data.sizes["k_x"])
    optics = {name: data[name].values for name in ("energy_eV", "semiangle_mrad", "blur_px", "dose")}
    radii = np.array([disk_radius(*pair) for pair in zip(optics["energy_eV"], optics["semiangle_mrad"], strict=True)])
    radii /= k_sampling  # [px]
    rng = np.random.default_rng(seed)
    refiners: dict[tuple[float, float], TemplateRefiner] = {}
    kept = {"patches": [], "scalars": [], "offsets": [], "amplitude": [], "dose": [], "sample": []}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(radii), desc="disk residuals", unit="pattern")
    for first in range(0, len(radii), READ_BLOCK):
        block = data[["inputs", "spots", "spot_amplitudes"]].isel(sample=slice(first, first + READ_BLOCK)).load()
        for offset in range(block.sizes["sample"]):
            index = first + offset
            if radii[index] < MIN_RADIUS_PX:
                continue
            key = (round(float(radii[index]), 2), round(float(optics["blur_px"][index]), 1))
            if key not in refiners:
                disk = aperture_disk(shape, k_sampling, (shape[0] // 2, shape[1] // 2), key[0] * k_sampling)
                refiners[key] = TemplateRefiner(ndimage.gaussian_filter(disk, key[1], mode="constant"), key[0])
            pattern = block["inputs"].values[offset].astype(np.float32)[None]
            spots, amplitude = block["spots"].values[offset], block["spot_amplitudes"].values[offset]
            pairs = _pattern_pairs(refiners[key], radii[index], pattern, spots, amplitude, rng)
            for name, values in zip(("patches", "scalars", "offsets", "amplitude"), pairs, strict=True):
                kept[name].append(values)
            kept["dose"].append(torch.full((len(pairs[2]),), float(optics["dose"][index])))
            kept["sample"].append(torch.full((len(pairs[2]),), index))
        if bar is not None:
            bar.update(block.sizes["sample"])
    if bar is not None:
        bar.close()
    if not kept["patches"]:
        raise StemstrainInputError(f"training set {store}: no disk of radius >= {MIN_RADIUS_PX} px to learn from")
    return {name: torch.cat(values) for name, values in kept.items()}


def _pattern_pairs(
    refiner: TemplateRefiner,
    radius_px: float,
    pattern: np.ndarray,
    spots: np.ndarray,
    amplitude: np.ndarray,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pattern's kept disks: patches, scalars, offsets to the true centres [px] and amplitudes.

    ``pattern`` (1, k_y, k_x) [counts], ``spots`` (m, 2) true centres (x, y) [px] NaN-padded, ``amplitude``
    (m,) their kinematic amplitudes, ``radius_px`` the disk radius [px].
    """
    truth = np.asarray(spots, dtype=np.float64)
    strong = np.isfinite(truth[:, 0]) & (amplitude > MIN_AMPLITUDE)
    truth, amplitude = truth[strong][None], amplitude[strong]
    placed, _ = refiner(pattern, truth + rng.uniform(-0.4, 0.4, truth.shape))
    offsets = (truth - placed)[0]
    good = np.isfinite(offsets).all(axis=1) & (np.hypot(*offsets.T) < MAX_RESIDUAL_PX)
    patches, scalars = disk_patches(pattern, placed[:, good], radius_px)
    offsets = torch.as_tensor(offsets[good], dtype=torch.float32)
    return patches, scalars, offsets, torch.as_tensor(amplitude[good], dtype=torch.float32)


def fit_disk_corrector(
    pairs: dict[str, torch.Tensor], epochs: int = 6, batch_size: int = 256, lr: float = 3e-3, seed: int = 0
) -> tuple[DiskCorrector, list[float]]:
    """Train a :class:`~stemstrain.model.disks.DiskCorrector` on :func:`residual_pairs`.

    Each batch is turned by one random symmetry of the pixel grid (patch and offset together). The
    loss is a smooth L1 (quadratic below 0.3 px): the offsets at low dose are mostly counting noise.

    Returns
    -------
    corrector : DiskCorrector
    losses : list of float
        Mean training loss per epoch [px].
    """
    torch.manual_seed(seed)
    corrector = DiskCorrector()
    optimiser = torch.optim.AdamW(corrector.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(pairs["offsets"]) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    losses = []
    for _ in range(epochs):
        order, total = torch.randperm(len(pairs["offsets"])), 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            k = int(torch.randint(8, ()))
            patches = pairs["patches"][batch][:, PERMUTATIONS[k]]
            target = pairs["offsets"][batch] @ MATRICES[k].T
            loss = torch.nn.functional.smooth_l1_loss(corrector(patches, pairs["scalars"][batch]), target, beta=0.3)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(order))
    return corrector.eval(), losses

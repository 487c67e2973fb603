"""Training of the disk-centre correction (:mod:`stemstrain.model.disks`) on a simulated training set.

A corrector learns the offset from where a read-out places each disk to the disk's true centre, for
one of two read-outs (``placement``):

- ``template``: each training pattern's disks are placed by the template read-out, started within
  ±0.4 px of their true centres (as the network's spots start it). The template is the aperture disk
  at the pattern's optics, blurred as the pattern's detector blurred it: the vacuum probe a user would
  record on that detector.
- ``offsets``: each disk's patch is centred at its true centre moved by an isotropic Gaussian offset
  (``jitter_px`` per axis, about the network's own spot error). The corrector then learns no direction
  from any read-out's errors: where a patch holds too few counts to place its disk it stays near the
  position it was given, which in a strain run is the network's spot (its offsets read-out).

A strain map only sees what changes with strain: a bias a reflection keeps at every strain cancels
against the reference region. On a training set of strain series (``simulate.strain_series``),
:func:`series_cells` groups each reflection's disks across a series and :func:`fit_disk_corrector`
weighs the error less its group's mean in full and the error itself by ``absolute_weight``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import xarray as xr
from scipy import ndimage, sparse
from scipy.spatial.distance import cdist

from stemstrain.detect.bragg import TemplateRefiner, aperture_disk, disk_radius
from stemstrain.errors import StemstrainInputError
from stemstrain.model.disks import MATRICES, PATCH, DiskCorrector, disk_patches, grid_permutations
from stemstrain.strain import deformation_from_strain

__all__ = ["PLACEMENTS", "fit_disk_corrector", "less_cell_mean", "residual_pairs", "series_cells", "series_layout"]

MIN_RADIUS_PX = 1.2
"""Disks smaller than this [px] are left out: their template is a point and has no edge to fit."""
MIN_AMPLITUDE = 0.05
"""Disks whose kinematic amplitude relative to the strongest is below this are left out."""
MAX_RESIDUAL_PX = 1.0
"""Offsets beyond this [px] are failed placements (a neighbour's disk), not a bias to learn."""
READ_BLOCK = 256
"""Patterns read from the store at a time."""
MATCH_TOLERANCE = 0.05
"""Largest distance [1/angstrom] between one reflection's unstrained positions in a strain series (the
detector's ellipticity, at most 1 %, moves them by up to 0.02 1/angstrom; reflections lie >= 0.2 apart)."""


PLACEMENTS = ("template", "offsets")
"""Read-outs a corrector can learn to correct (:func:`residual_pairs`)."""


def residual_pairs(
    store: str,
    samples: slice | None = None,
    seed: int = 0,
    progress: bool = False,
    placement: str = "template",
    jitter_px: float = 0.3,
    patch: int = PATCH,
) -> dict[str, torch.Tensor]:
    """Patches of placed disks and their offsets to the true centres.

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
    placement : {"template", "offsets"}
        How the disks are placed (module docstring): by the template read-out, or at their true centres
        moved by a random isotropic offset.
    jitter_px : float
        Spread (standard deviation per axis) of that offset with ``placement="offsets"`` [px].
    patch : int
        Samples per side of the patches (:func:`~stemstrain.model.disks.disk_patches`).

    Returns
    -------
    dict
        ``patches`` (n, patch²), ``scalars`` (n, 2), ``offsets`` (n, 2) [px], ``amplitude`` (n,) (kinematic,
        relative to the strongest reflection), ``centre`` (n, 2) (its true centre (x, y) [px]), ``dose`` (n,)
        [e-] and ``sample`` (n,) of each kept disk.
    """
    if placement not in PLACEMENTS:
        raise StemstrainInputError(f"disk corrector placement: expected one of {PLACEMENTS}, found {placement!r}")
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
    kept = {"patches": [], "scalars": [], "offsets": [], "amplitude": [], "centre": [], "dose": [], "sample": []}
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
            place = float(jitter_px)
            if placement == "template":
                key = (round(float(radii[index]), 2), round(float(optics["blur_px"][index]), 1))
                if key not in refiners:
                    disk = aperture_disk(shape, k_sampling, (shape[0] // 2, shape[1] // 2), key[0] * k_sampling)
                    refiners[key] = TemplateRefiner(ndimage.gaussian_filter(disk, key[1], mode="constant"), key[0])
                place = refiners[key]
            pattern = block["inputs"].values[offset].astype(np.float32)[None]
            spots, amplitude = block["spots"].values[offset], block["spot_amplitudes"].values[offset]
            pairs = _pattern_pairs(place, radii[index], pattern, spots, amplitude, rng, patch)
            for name, values in zip(("patches", "scalars", "offsets", "amplitude", "centre"), pairs, strict=True):
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


def series_layout(store: str) -> tuple[int, int]:
    """Strain states per series and patterns per state (probe positions x thicknesses) of a training set.

    Raises
    ------
    StemstrainInputError
        If the store holds no strain series (``simulate.strain_series`` < 2).
    """
    simulate = json.loads(xr.open_zarr(store).attrs.get("simulate_config", "{}"))
    length = int(simulate.get("strain_series", 1))
    if length < 2:
        raise StemstrainInputError(
            f"training set {store} holds no strain series (simulate.strain_series is {length}, at least 2 needed)"
        )
    return length, int(simulate.get("positions_per_state", 1)) * len(simulate["thicknesses_nm"])


def series_cells(store: str, pairs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which kept disks are one reflection of one strain series at one thickness.

    A strain series (``simulate.strain_series`` > 1) is one crystal at one orientation, mistilt, optics and
    thickness series under several strains. A reflection is recognised across it by its unstrained
    position: the true centre, shifted back and undeformed, ``Dᵀ k`` with ``D = R(θ)(I + ε)`` of the
    sample's strain, is the same for every strain (the crystal's orientation is common to the series).

    Parameters
    ----------
    store : path
        The training set :func:`residual_pairs` read.
    pairs : dict
        Its result (``sample`` and ``centre`` are used).

    Returns
    -------
    Tensor (n,) int64
        A cell number per disk; the disks of one cell differ only in strain, noise and frozen phonons.

    Raises
    ------
    StemstrainInputError
        If the store holds no strain series.
    """
    data = xr.open_zarr(store)
    length, per_state = series_layout(store)
    sample = pairs["sample"].numpy().astype(np.int64)
    strain, shift = data["strain"].values[sample], data["shift_px"].values[sample]
    k = (pairs["centre"].numpy() - data.sizes["k_x"] // 2 - shift) * float(data.attrs["k_sampling"])
    unstrained = np.einsum("nji,nj->ni", deformation_from_strain(*strain.T), k)  # Dᵀ k [1/angstrom]
    group = (sample // per_state // length) * per_state + sample % per_state
    cells = np.empty(len(sample), dtype=np.int64)
    first = 0
    for members in np.split(np.argsort(group, kind="stable"), np.flatnonzero(np.diff(np.sort(group))) + 1):
        close = sparse.csr_matrix(cdist(unstrained[members], unstrained[members]) < MATCH_TOLERANCE)
        count, labels = sparse.csgraph.connected_components(close, directed=False)
        cells[members] = first + labels
        first += count
    return torch.as_tensor(cells)


def less_cell_mean(values: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``values`` (n, d) less the mean of their cell's values (``cells`` (n,), :func:`series_cells`)."""
    _, member = torch.unique(cells, return_inverse=True)
    size = torch.zeros(int(member.max()) + 1, dtype=values.dtype).index_add_(0, member, torch.ones_like(values[:, 0]))
    mean = torch.zeros(len(size), values.shape[1], dtype=values.dtype).index_add_(0, member, values) / size[:, None]
    return values - mean[member]


def _pattern_pairs(
    place: TemplateRefiner | float,
    radius_px: float,
    pattern: np.ndarray,
    spots: np.ndarray,
    amplitude: np.ndarray,
    rng: np.random.Generator,
    patch: int = PATCH,
) -> tuple[torch.Tensor, ...]:
    """One pattern's kept disks: patches, scalars, offsets to the true centres [px], amplitudes, true centres [px].

    ``pattern`` (1, k_y, k_x) [counts], ``spots`` (m, 2) true centres (x, y) [px] NaN-padded, ``amplitude``
    (m,) their kinematic amplitudes, ``radius_px`` the disk radius [px]; ``place`` the template read-out
    that places the disks, or the spread [px] of the random offset from their true centres; ``patch`` the
    samples per side of the patches.
    """
    truth = np.asarray(spots, dtype=np.float64)
    strong = np.isfinite(truth[:, 0]) & (amplitude > MIN_AMPLITUDE)
    truth, amplitude = truth[strong][None], amplitude[strong]
    if isinstance(place, TemplateRefiner):
        placed, _ = place(pattern, truth + rng.uniform(-0.4, 0.4, truth.shape))
    else:  # the true centres moved by an isotropic Gaussian offset of ``place`` px per axis
        placed = truth + rng.normal(0.0, place, truth.shape)
    offsets = (truth - placed)[0]
    good = np.isfinite(offsets).all(axis=1) & (np.hypot(*offsets.T) < MAX_RESIDUAL_PX)
    patches, scalars = disk_patches(pattern, placed[:, good], radius_px, patch)
    offsets = torch.as_tensor(offsets[good], dtype=torch.float32)
    amplitude, centres = (torch.as_tensor(values[good], dtype=torch.float32) for values in (amplitude, truth[0]))
    return patches, scalars, offsets, amplitude, centres


def fit_disk_corrector(
    pairs: dict[str, torch.Tensor],
    epochs: int = 6,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    cells: torch.Tensor | None = None,
    absolute_weight: float = 0.2,
    width: int = 32,
    start: DiskCorrector | None = None,
) -> tuple[DiskCorrector, list[float]]:
    """Train a :class:`~stemstrain.model.disks.DiskCorrector` on :func:`residual_pairs`.

    Each batch is turned by one random symmetry of the pixel grid (patch and offset together). The
    loss is a smooth L1 (quadratic below 0.3 px): the offsets at low dose are mostly counting noise.

    With ``cells`` (:func:`series_cells`), batches hold whole cells and the loss is on each disk's error
    less its cell's mean error, plus ``absolute_weight`` times the loss on the error itself. A bias common
    to a reflection at every strain cancels against the reference region in a strain map, so only what
    changes with strain is paid for in full. ``width``: channels of the corrector's first convolutions;
    ``start``: a corrector whose weights the fit starts from (its width is kept). The corrector's patch
    size is that of the pairs' patches.

    Returns
    -------
    corrector : DiskCorrector
    losses : list of float
        Mean training loss per epoch [px].
    """
    torch.manual_seed(seed)
    patch = math.isqrt(pairs["patches"].shape[1])
    if start is not None and start.patch != patch:
        raise StemstrainInputError(f"disk corrector: the start's patches are {start.patch}², the pairs' {patch}²")
    corrector = DiskCorrector(start.width if start is not None else width, patch)
    permutations = grid_permutations(patch)
    if start is not None:
        corrector.load_state_dict(start.state_dict())
    corrector = corrector.train()
    optimiser = torch.optim.AdamW(corrector.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(pairs["offsets"]) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    losses = []
    for _ in range(epochs):
        if cells is None:
            order = torch.randperm(len(pairs["offsets"]))
        else:  # whole cells in turn, in a random order of cells
            order = torch.argsort(torch.randperm(int(cells.max()) + 1)[cells], stable=True)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            k = int(torch.randint(8, ()))
            patches = pairs["patches"][batch][:, permutations[k]]
            target = pairs["offsets"][batch] @ MATRICES[k].T
            error = corrector(patches, pairs["scalars"][batch]) - target
            loss = torch.nn.functional.smooth_l1_loss(error, torch.zeros_like(error), beta=0.3)
            if cells is not None:
                relative = less_cell_mean(error, cells[batch])
                loss = absolute_weight * loss + torch.nn.functional.smooth_l1_loss(
                    relative, torch.zeros_like(relative), beta=0.3
                )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(order))
    return corrector.eval(), losses

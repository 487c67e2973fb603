"""The training set: read batch by batch through a chunk cache, checked once, split by strain state.

Contract (docs/DESIGN.md): Zarr with ``inputs`` and ``targets`` (n, k_y, k_x) float32 and per-sample
labels (``strain``, ``thickness_nm``, ``material``, ``dose``, ...); ``target > 0`` is the spot mask.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import zarr

from stemstrain.config import Config
from stemstrain.detect.bragg import disk_radius
from stemstrain.errors import StemstrainInputError
from stemstrain.io import check_counts
from stemstrain.train.augment import Batch

__all__ = ["TrainingSet", "check_training_set", "data_hash", "open_training_group", "split_indices", "trained_on"]


class TrainingSet(torch.utils.data.Dataset):
    """Batches read from a training-set Zarr store (contract of docs/DESIGN.md), never loaded whole.

    ``dataset[indices]`` returns a :class:`~stemstrain.train.augment.Batch` in the order of
    ``indices``: ``inputs`` and ``targets`` as float32 tensors (b, 1, H, W), and the target spot
    lists ``spots`` (b, M, 2) [px], ``amplitudes`` (b, M) and the disk radii (b,) [px] where the
    store has them (None for a set written before they existed, or without its optics). Whole Zarr
    chunks are decoded and kept in a least-recently-used cache of ``cache_mb`` per process, so
    shuffled batches do not decode the same chunk again and again.

    Parameters
    ----------
    path : path
        Training-set store with ``inputs`` and ``targets`` (n, k_y, k_x).
    cache_mb : float
        Decoded chunks kept [MiB].
    """

    def __init__(self, path: str | Path, cache_mb: float = 256.0):
        self.path = Path(path)
        self.cache_bytes = int(cache_mb * 2**20)
        self._group = None
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        group = self._open()
        self.shape = tuple(group["inputs"].shape)
        self.chunk = int(group["inputs"].chunks[0])
        self.has_spots = all(name in group for name in ("spots", "spot_amplitudes"))
        self.target_sigma_px = float(group.attrs.get("target_sigma_px", 1.0))
        self.k_sampling = float(group.attrs["k_sampling"]) if group.attrs.get("k_sampling") else None
        radii = disk_radii(self) if self.k_sampling else None
        self.radii_px = None if radii is None else (radii / self.k_sampling).astype(np.float32)

    def _open(self):
        if self._group is None:
            self._group = open_training_group(self.path)
        return self._group

    def __getstate__(self):
        # DataLoader workers open their own store handle and cache.
        return {**self.__dict__, "_group": None, "_cache": OrderedDict(), "_cached_bytes": 0}

    def __len__(self) -> int:
        return self.shape[0]

    def labels(self, name: str) -> np.ndarray | None:
        """A small per-sample label array (``strain``, ``dose``, ...) or None if absent."""
        group = self._open()
        return np.asarray(group[name][...]) if name in group else None

    def _chunk(self, name: str, index: int) -> np.ndarray:
        key = (name, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        array = self._open()[name]
        block = np.asarray(array[index * self.chunk : (index + 1) * self.chunk], dtype=np.float32)
        self._cache[key] = block
        self._cached_bytes += block.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped.nbytes
        return block

    def read(self, name: str, indices) -> np.ndarray:
        """Samples ``indices`` of array ``name`` as float32, e.g. (b, H, W) for the patterns."""
        out = np.empty((len(indices), *self._open()[name].shape[1:]), np.float32)
        for row, index in enumerate(indices):
            out[row] = self._chunk(name, int(index) // self.chunk)[int(index) % self.chunk]
        return out

    def __getitem__(self, indices) -> Batch:
        inputs = torch.from_numpy(self.read("inputs", indices))[:, None]
        targets = torch.from_numpy(self.read("targets", indices))[:, None]
        radii = None if self.radii_px is None else torch.from_numpy(self.radii_px[np.asarray(indices, dtype=int)])
        if not self.has_spots:
            return Batch(inputs, targets, radii=radii)
        spots = torch.from_numpy(self.read("spots", indices))
        amplitudes = torch.from_numpy(self.read("spot_amplitudes", indices))
        return Batch(inputs, targets, spots, amplitudes, radii)


def open_training_group(path: str | Path):
    """Open a training-set store and check the arrays training needs.

    Raises
    ------
    StemstrainInputError
        If the store is missing, unreadable, or ``inputs``/``targets`` are absent or malformed.
    """
    path = Path(path)
    if not path.exists():
        raise StemstrainInputError(f"{path}: training-set store not found")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises many types for foreign stores
        raise StemstrainInputError(f"{path}: cannot be read as a Zarr training set ({type(err).__name__})") from None
    for name in ("inputs", "targets"):
        if name not in group:
            raise StemstrainInputError(
                f"{path}: variable '{name}' is missing (found {sorted(group.array_keys())}); "
                "expected a training set written by `stemstrain simulate`"
            )
        if group[name].ndim != 3:
            raise StemstrainInputError(
                f"{path}: variable '{name}' has shape {group[name].shape}, expected (n, k_y, k_x)"
            )
    if group["inputs"].shape != group["targets"].shape:
        raise StemstrainInputError(
            f"{path}: 'inputs' {group['inputs'].shape} and 'targets' {group['targets'].shape} differ in shape"
        )
    if group["inputs"].shape[0] < 2:
        raise StemstrainInputError(f"{path}: {group['inputs'].shape[0]} pattern(s); training needs at least 2")
    return group


def _check_values(array, path: Path, name: str) -> None:
    """Every chunk of a training array decodes and holds finite patterns of non-negative total.

    NaN inputs crashed the Poisson dose thinning with a traceback; inf targets or sign-flipped
    inputs trained silently into a useless model. One pass over the set costs far less than an epoch.
    """
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise StemstrainInputError(f"{path}: variable '{name}' has dtype {array.dtype}, expected float32")
    step = array.chunks[0]
    for start in range(0, array.shape[0], step):
        where = f" in samples {start}:{min(start + step, array.shape[0])}"
        try:
            block = np.asarray(array[start : start + step])
        except Exception as err:  # codecs raise RuntimeError, ValueError, OSError ... for damaged chunks
            raise StemstrainInputError(
                f"{path}: variable '{name}' cannot be read{where}: damaged or truncated Zarr chunk "
                f"({type(err).__name__}: {err})"
            ) from None
        check_counts(block, str(path), name, where)


def check_training_set(path: str | Path, config: Config) -> tuple[int, int]:
    """Validate a training set against the configuration; return (patterns, pixels)."""
    group = open_training_group(path)
    n, height, width = group["inputs"].shape
    divisor = 2 ** (config.model.depth - 1)
    if height != width or height != config.detector.pixels:
        raise StemstrainInputError(
            f"{path}: patterns are {height}x{width} px, expected {config.detector.pixels}x{config.detector.pixels} "
            "(detector.pixels of the configuration)"
        )
    if height % divisor:
        raise StemstrainInputError(
            f"{path}: pattern size {height} px is not a multiple of 2**(model.depth - 1) = {divisor}"
        )
    # A set drawn over a range of optics records the ranges (energy_eV_range, ...) instead of one value.
    expected = {
        "k_sampling": ("detector.k_sampling", config.detector.k_sampling),
        "energy_eV": ("optics.energy_eV", config.optics.energy_eV),
        "semiangle_mrad": ("optics.semiangle_mrad", config.optics.semiangle_mrad),
    }
    for attr, (option, value) in expected.items():
        found = group.attrs.get(attr)
        if found is not None and not np.isclose(float(found), value, rtol=1e-6):
            raise StemstrainInputError(
                f"{path}: attribute '{attr}' is {found}, but the configuration has {option} = {value}; "
                "the exported model must carry the calibration it was trained at"
            )
    if config.train.augment.disk_contrast > 0:
        dataset = TrainingSet(path, cache_mb=0)
        if not dataset.has_spots or dataset.radii_px is None:
            raise StemstrainInputError(
                f"{path}: train.augment.disk_contrast needs the spot lists (spots, spot_amplitudes) and the optics "
                "(energy_eV, semiangle_mrad, k_sampling) of each pattern, and this set lacks some; set "
                "disk_contrast to 0 or simulate the set again with this version"
            )
    for name in ("inputs", "targets"):
        _check_values(group[name], Path(path), name)
    return n, height


def data_hash(path: str | Path) -> str:
    """sha256 over every file of a store (relative path and content) [hex]."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def split_indices(strain: np.ndarray | None, n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole strain states (all their thicknesses and crystals) for validation.

    Patterns of one strain state share their spot positions, so splitting by pattern would
    validate on positions the network was trained on.

    Returns
    -------
    train, validation : ndarray of int
        Sorted sample indices; validation is empty when ``val_fraction`` is 0.
    """
    if strain is None:
        groups = np.arange(n)
    else:
        _, groups = np.unique(np.round(np.asarray(strain, float).reshape(n, -1), 9), axis=0, return_inverse=True)
        groups = groups.reshape(n)
    n_groups = groups.max() + 1
    n_val = min(n_groups - 1, max(1, round(val_fraction * n_groups))) if val_fraction > 0 and n_groups > 1 else 0
    held = np.random.default_rng(seed).permutation(n_groups)[:n_val]
    is_val = np.isin(groups, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def trained_on(dataset: TrainingSet) -> dict:
    """What a training set covers, for the model's metadata and the warnings of inference.

    Returns
    -------
    dict
        ``patterns``; ``crystals``; ranges ``[low, high]`` of ``thickness_nm``, ``dose`` [e-],
        ``energy_eV``, ``semiangle_mrad`` and ``disk_radius_inv_angstrom`` (α/λ, the disk radius in
        the diffraction plane [1/angstrom]); ``orientation`` (fixed or random); ``frozen_phonon_fraction``.
    """
    group = dataset._open()
    attrs = dict(group.attrs)
    settings = json.loads(attrs.get("simulate_config", "{}"))

    def span(name: str, fallback: float | None = None) -> list[float] | None:
        values = dataset.labels(name)
        if values is None:
            return None if fallback is None else [float(fallback)] * 2
        return [float(np.min(values)), float(np.max(values))]

    energy = span("energy_eV", attrs.get("energy_eV"))
    semiangle = span("semiangle_mrad", attrs.get("semiangle_mrad"))
    summary = {
        "patterns": len(dataset),
        "crystals": sorted({str(name) for name in _first(dataset.labels("material"), attrs.get("crystals", []))}),
        "thickness_nm": span("thickness_nm"),
        "dose": span("dose"),
        "energy_eV": energy,
        "semiangle_mrad": semiangle,
        "orientation": settings.get("orientation", "fixed"),
    }
    phonons = dataset.labels("frozen_phonons")
    summary["frozen_phonon_fraction"] = float(np.mean(phonons > 0)) if phonons is not None else None
    radius = disk_radii(dataset)
    if radius is not None:
        summary["disk_radius_inv_angstrom"] = [float(radius.min()), float(radius.max())]
    return summary


def disk_radii(dataset: TrainingSet) -> np.ndarray | None:
    """Disk radius α/λ of every pattern of a training set [1/angstrom], or None when it records no optics.

    Per-pattern ``energy_eV`` and ``semiangle_mrad`` labels where the set has them, else its one
    ``energy_eV`` and ``semiangle_mrad`` attributes.
    """
    attrs = dict(dataset._open().attrs)
    energies, semiangles = dataset.labels("energy_eV"), dataset.labels("semiangle_mrad")
    if energies is None or semiangles is None:
        if not (attrs.get("energy_eV") and attrs.get("semiangle_mrad")):
            return None
        energies = np.full(len(dataset), float(attrs["energy_eV"]))
        semiangles = np.full(len(dataset), float(attrs["semiangle_mrad"]))
    return np.vectorize(disk_radius)(np.asarray(energies, dtype=float), np.asarray(semiangles, dtype=float))


def _first(values, fallback):
    return fallback if values is None else np.unique(values)

"""Strain maps from 4D scans: spot detection, lattice fit and strain, chunk by chunk.

The analysis of a block of patterns is one pure step, :func:`fit_patterns` after a spot detector;
how blocks are scheduled is separate (a loop with read-ahead in this process, or a dask
distributed cluster: ``LocalCluster`` here, ``dask_jobqueue.SLURMCluster`` on a cluster).

Two passes over the output store:

1. every work unit (a block of whole patterns aligned with the input chunks) is read, its spots
   detected and indexed to the initial lattice (g1, g2 from the reference region's mean pattern)
   and its lattice fitted; the lattices, fit errors and peak counts are written by region into
   ``<out>.partial`` (:class:`stemstrain.io.ResumableStore`), so an interrupted run resumes from the
   units it finished;
2. the reference lattice is the median over the reference region, and the strain of every
   position is written by region; the store is then renamed to ``<out>``.

Nothing holds the whole 4D array: memory is bounded by a couple of work units.

Detectors (interface 6 of the team notes): ``detector(patterns (n, H, W)) -> (positions (n, m, 2),
weights (n, m))`` with ``space = "reciprocal"`` (positions (x, y) [1/angstrom] relative to k = 0)
or ``space = "real"`` (cepstral peaks, (x, y) [angstrom]).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from stemstrain.errors import StemstrainInputError
from stemstrain.io import (
    SCAN_DIMS,
    ResumableStore,
    check_counts,
    check_reference_roi,
    k_calibration,
    open_4d,
    read_values,
    strain_map_dataset,
)
from stemstrain.lattice import fit_lattice_robust, index_peaks, reciprocal_vectors
from stemstrain.peaks import find_peaks
from stemstrain.strain import STRAIN_COMPONENTS, reference_lattice, strain_from_lattice

__all__ = [
    "METHODS",
    "FitOptions",
    "PeakDetector",
    "UNetDetector",
    "fit_patterns",
    "initial_lattice",
    "make_detector",
    "material_lattice",
    "parse_detector_options",
    "reduced_basis",
    "strain_map",
]

METHODS = ("unet", "bragg", "cepstrum", "cepstrum-multi", "peaks")
# Options that only the network uses; the other methods ignore them (baselines batch on their own).
_NETWORK_OPTIONS = {"precision", "compile", "allow_calibration_mismatch"}
# Data sampled this many times coarser than the model's calibration are refused unless overridden.
CALIBRATION_FACTOR = 1.5


# ---------------------------------------------------------------- lattice from peaks (pure)


def reduced_basis(points: np.ndarray, weights: np.ndarray | None = None, max_points: int = 32) -> np.ndarray:
    """The two shortest non-collinear lattice vectors of a set of spots.

    Candidate bases are pairs of the shortest difference vectors between spots; the one that
    indexes the most spots wins, and among equals the one with the largest cell (a finer lattice
    indexes everything too, but only spurious close spots produce it). The winner is
    Lagrange-reduced and made right-handed (det > 0) with g1 pointing to +x.

    Parameters
    ----------
    points : ndarray, shape (n, 2)
        Spot positions (x, y); NaN rows are ignored.
    weights : ndarray, shape (n,), optional
        Spot strengths; the ``max_points`` strongest are used.
    max_points : int
        Most spots considered.

    Returns
    -------
    ndarray, shape (2, 2)
        Basis vectors as columns, in the units of ``points``; NaN when fewer than three spots
        or no two non-collinear differences exist.
    """
    points = np.asarray(points, dtype=float)
    finite = np.all(np.isfinite(points), axis=-1)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(-np.where(finite, weights, -np.inf))[: min(max_points, int(finite.sum()))]
    points = points[order]
    nan_basis = np.full((2, 2), np.nan)
    if len(points) < 3:
        return nan_basis
    diffs = (points[:, None, :] - points[None, :, :])[np.triu_indices(len(points), k=1)]
    length = np.linalg.norm(diffs, axis=-1)
    scale = np.median(length)
    diffs, length = diffs[length > 1e-3 * scale], length[length > 1e-3 * scale]
    # The same lattice vector appears between many pairs of spots: keep one per vector (up to sign).
    diffs = np.where((diffs[:, :1] < 0) | ((diffs[:, :1] == 0) & (diffs[:, 1:] < 0)), -diffs, diffs)
    diffs = diffs[np.argsort(length)]
    candidates: list[np.ndarray] = []
    for vector in diffs:
        if all(np.linalg.norm(vector - known) > 0.05 * np.linalg.norm(known) for known in candidates):
            candidates.append(vector)
            if len(candidates) == 8:
                break
    best, best_score = nan_basis, (-1, -np.inf)
    for i in range(len(candidates)):
        for j in range(i + 1, len(candidates)):
            basis = np.stack([candidates[i], candidates[j]], axis=-1)
            area = abs(np.linalg.det(basis))
            if area < 0.2 * np.linalg.norm(candidates[i]) * np.linalg.norm(candidates[j]):
                continue  # (nearly) collinear
            _, indexed = index_peaks(points - points[0], basis, tolerance=0.15)
            score = (int(indexed.sum()), area)
            if score > best_score:
                best, best_score = basis, score
    if not np.all(np.isfinite(best)):
        return nan_basis
    return _lagrange_reduce(best)


def _lagrange_reduce(basis: np.ndarray) -> np.ndarray:
    g1, g2 = basis[:, 0].copy(), basis[:, 1].copy()
    for _ in range(32):
        if g2 @ g2 < g1 @ g1:
            g1, g2 = g2, g1
        shift = np.round((g1 @ g2) / (g1 @ g1))
        if shift == 0:
            break
        g2 = g2 - shift * g1
    if g1[0] < 0 or (g1[0] == 0 and g1[1] < 0):
        g1 = -g1
    if g1[0] * g2[1] - g1[1] * g2[0] < 0:
        g2 = -g2
    return np.stack([g1, g2], axis=-1)


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """Indexing and lattice-fit settings.

    Attributes
    ----------
    tolerance : float
        Largest distance of a peak from a lattice point, in fractions of the cell, to be indexed.
    min_peaks : int or None
        Fewest inlier peaks for a valid fit; default: unknowns + 2 (5 with origin, 4 without).
    max_fit_error : float
        Largest RMS residual for a valid fit, as a fraction of the shorter lattice vector [1].
    rejection : float
        Outlier threshold of the robust fit, in robust standard deviations.
    n_iterations : int
        Index-and-fit rounds (the second indexes with the first fit, for strong strain).
    """

    tolerance: float = 0.25
    min_peaks: int | None = None
    max_fit_error: float = 0.05
    rejection: float = 3.0
    n_iterations: int = 2


def fit_patterns(
    positions: np.ndarray,
    weights: np.ndarray,
    lattice0: np.ndarray,
    origin0: np.ndarray,
    fit_origin: bool = True,
    options: FitOptions = FitOptions(),
) -> dict[str, np.ndarray]:
    """Index the peaks of many patterns to an initial lattice and fit each lattice robustly.

    Parameters
    ----------
    positions : ndarray, shape (n, m, 2)
        Peak positions (x, y), NaN-padded.
    weights : ndarray, shape (n, m)
        Peak weights (zero for padding).
    lattice0 : ndarray, shape (2, 2)
        Initial basis vectors as columns, units of ``positions``.
    origin0 : ndarray, shape (2,)
        Initial position of the (0, 0) point.
    fit_origin : bool
        Fit the (0, 0) position per pattern (reciprocal space: descan) or hold it at zero.
    options : FitOptions
        Indexing and validity settings.

    Returns
    -------
    dict of ndarray
        ``lattice`` (n, 2, 2) columns g1, g2; ``origin`` (n, 2); ``fit_error`` (n,) RMS residual of
        the inliers (units of ``positions``); ``n_peaks`` (n,) inliers; ``valid`` (n,) bool.
    """
    positions = np.asarray(positions, dtype=float)
    weights = np.asarray(weights, dtype=float)
    n = positions.shape[0]
    lattice = np.broadcast_to(np.asarray(lattice0, dtype=float), (n, 2, 2))
    origin = np.broadcast_to(np.asarray(origin0, dtype=float) if fit_origin else np.zeros(2), (n, 2))
    min_peaks = options.min_peaks if options.min_peaks is not None else (5 if fit_origin else 4)
    inliers = np.zeros(positions.shape[:2], dtype=bool)
    residual = np.full(positions.shape[:2], np.nan)
    for _ in range(max(1, options.n_iterations)):
        # A failed fit falls back to the initial lattice for the next round's indexing.
        usable = np.all(np.isfinite(lattice), axis=(-2, -1)) & np.all(np.isfinite(origin), axis=-1)
        lattice_guess = np.where(usable[:, None, None], lattice, lattice0)
        origin_guess = np.where(usable[:, None], origin, origin0 if fit_origin else 0.0)
        hk, indexed = index_peaks(positions, lattice_guess, origin_guess, options.tolerance)
        fit_weights = np.where(indexed, weights, 0.0)
        lattice, origin, residual, inliers = fit_lattice_robust(
            positions, hk, fit_weights, fit_origin=fit_origin, rejection=options.rejection
        )
    n_peaks = inliers.sum(axis=-1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)  # no inliers: NaN error
        fit_error = np.sqrt(np.nanmean(np.where(inliers, residual, np.nan) ** 2, axis=-1))
    shortest = np.min(np.linalg.norm(np.asarray(lattice0, dtype=float), axis=0))
    finite = np.all(np.isfinite(lattice), axis=(-2, -1))
    valid = finite & (n_peaks >= min_peaks) & (np.nan_to_num(fit_error, nan=np.inf) <= options.max_fit_error * shortest)
    return {"lattice": lattice, "origin": origin, "fit_error": fit_error, "n_peaks": n_peaks, "valid": valid}


def material_lattice(attrs: dict, space: str) -> np.ndarray | None:
    """Lattice basis of the crystal that a scan's ``material`` / ``zone_axis`` attrs name, if known.

    Parameters
    ----------
    attrs : dict
        Scan attributes; ``material`` is a crystal name of :mod:`stemstrain.simulate.crystals`
        (e.g. ``"Si_110"``) or an element/compound (``"Si"``) completed by ``zone_axis`` (``"[110]"``).
    space : {"reciprocal", "real"}
        Reciprocal basis [1/angstrom] or the projected real-space cell [angstrom].

    Returns
    -------
    ndarray (2, 2) or None
        Lagrange-reduced basis as columns, right-handed; None for an unknown or absent material.
    """
    material = attrs.get("material")
    if not material:
        return None
    try:
        from stemstrain.simulate.crystals import CRYSTALS, projected_cell
    except ImportError:
        return None
    zone = "".join(ch for ch in str(attrs.get("zone_axis", "")) if ch.isdigit() or ch == "-")
    name = next((n for n in (str(material), f"{material}_{zone}") if n in CRYSTALS), None)
    if name is None:
        return None
    cell = projected_cell(name)
    return _lagrange_reduce(cell if space == "real" else reciprocal_vectors(cell))


def initial_lattice(
    positions: np.ndarray,
    weights: np.ndarray,
    space: str,
    options: FitOptions = FitOptions(),
    fallback: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Initial lattice and origin from the spots of one (mean) pattern.

    Parameters
    ----------
    positions : ndarray, shape (m, 2)
        Spots (x, y), NaN-padded.
    weights : ndarray, shape (m,)
        Spot strengths.
    space : {"reciprocal", "real"}
        In real space (cepstral peaks) the lattice is centred on r = 0, which is added as a point.
    options : FitOptions
        Indexing and fit settings.
    fallback : ndarray (2, 2), optional
        Basis to start from when the spots do not define a lattice (too few, or collinear), e.g.
        the material's projected cell (:func:`material_lattice`); it is then refined by a fit
        to the spots there are.

    Returns
    -------
    lattice : ndarray (2, 2)
        Basis g1, g2 as columns, refined by a fit to all indexed spots.
    origin : ndarray (2,)
        Fitted position of the (0, 0) point (zero in real space).

    Raises
    ------
    StemstrainInputError
        If no lattice can be found (too few spots).
    """
    positions = np.asarray(positions, dtype=float)
    weights = np.asarray(weights, dtype=float)
    finite = np.all(np.isfinite(positions), axis=-1) & (weights > 0)
    points, point_weights = positions[finite], weights[finite]
    if space == "real":
        points = np.vstack([np.zeros((1, 2)), points])
        point_weights = np.concatenate([[np.inf], point_weights])
    basis = reduced_basis(points, point_weights)
    if not np.all(np.isfinite(basis)):
        if fallback is None or not len(points):
            raise StemstrainInputError(
                f"found {int(finite.sum())} spots in the reference region's mean pattern, too few for a lattice "
                "(at least 3 not on one line are needed, or a known `material` attr): "
                "are the patterns empty or all zero?"
            )
        basis = np.asarray(fallback, dtype=float)
    fit_origin = space == "reciprocal"
    origin0 = points[np.argmin(np.linalg.norm(points, axis=-1))] if fit_origin else np.zeros(2)
    fit = fit_patterns(positions[None], weights[None], basis, origin0, fit_origin, options)
    if not fit["valid"][0]:
        return basis, origin0
    return fit["lattice"][0], fit["origin"][0]


# ---------------------------------------------------------------- detectors


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise StemstrainInputError(f"--device: expected cpu, cuda or auto, found {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StemstrainInputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return device


def parse_detector_options(items: list[str] | tuple[str, ...] | None, flag: str = "--detector-option") -> dict:
    """Detector options from ``KEY=VALUE`` strings (the CLI's repeated ``--detector-option``).

    Values are typed: ``true``/``false`` -> bool, ``none`` -> None, integers -> int, other numbers
    -> float, anything else stays a string (e.g. ``template=probe``).

    Parameters
    ----------
    items : list of str
        ``KEY=VALUE`` strings; dashes in keys become underscores.
    flag : str
        Option named in error messages.

    Raises
    ------
    StemstrainInputError
        For an item without ``=`` or with an empty key, or a key given twice.
    """
    options: dict = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise StemstrainInputError(f"{flag}: expected KEY=VALUE (e.g. upsample=32), found {item!r}")
        if key in options:
            raise StemstrainInputError(f"{flag}: {key} given twice")
        options[key] = _typed(text.strip())
    return options


def _typed(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _native_bf16(device: str) -> bool:
    """Whether bf16 matrix products run in hardware (CUDA with bf16, or a CPU with AVX-512-BF16/AMX)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    # Without AVX-512-BF16/AMX oneDNN emulates bf16 convolutions: measured 4-5x SLOWER than fp32 on
    # the AVX2-only EPYC of this project's CI (bench/results/infer.json).
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 where the hardware computes bf16 natively, fp32 elsewhere."""
    if precision not in ("auto", "fp32", "bf16"):
        raise StemstrainInputError(f"--precision: expected auto, fp32 or bf16, found {precision!r}")
    if precision == "auto":
        return "bf16" if _native_bf16(device) else "fp32"
    if precision == "bf16" and not _native_bf16(device):
        warnings.warn(
            f"--precision bf16: {device} has no native bf16 (AVX-512-BF16/AMX); emulated bf16 is slower than fp32",
            stacklevel=3,
        )
    return precision


def default_batch_size(device: str) -> int:
    """Patterns per network call: enough to keep a GPU busy, small enough for CPU caches."""
    return 1024 if device.startswith("cuda") else 128


def fold_batchnorm(network):
    """A copy of an eval-mode network with every BatchNorm2d that follows a Conv2d folded into it.

    In eval mode a batch norm is an affine map per channel, so it merges into the preceding
    convolution's weights and bias: the same function with one pass over memory less per layer
    (measured 1.3-1.5x faster for the default U-Net on CPU). Other modules are kept as they are.
    """
    import copy

    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    network = copy.deepcopy(network).eval()
    for module in network.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = torch.nn.Identity()
    return network


def model_hash(path: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of a checkpoint file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class _Timings(dict):
    """Seconds spent per stage (read, network, peaks, fit, write)."""

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - start


class PeakDetector:
    """Spots as local maxima of the raw patterns, refined to subpixel (no network).

    For sharp, well separated spots (small convergence angle, target images); it is also the
    fast method of the scale benchmark. Positions are in 1/angstrom relative to k = 0 from the
    scan's k coordinates.

    Parameters
    ----------
    scan : xr.Dataset
        4D data; its k coords calibrate positions.
    threshold_rel, min_distance, max_peaks
        As in :func:`stemstrain.peaks.find_peaks`.
    """

    space = "reciprocal"

    def __init__(self, scan: xr.Dataset, threshold_rel: float = 0.02, min_distance: int = 2, max_peaks: int = 64):
        self.k_sampling, self.centre = k_calibration(scan)
        self.threshold_rel, self.min_distance, self.max_peaks = threshold_rel, min_distance, max_peaks
        self.timings = _Timings()

    def __call__(self, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.timings.measure("peaks"):
            positions, weights = find_peaks(
                patterns, threshold_rel=self.threshold_rel, min_distance=self.min_distance, max_peaks=self.max_peaks
            )
        centre_xy = np.array([self.centre[1], self.centre[0]])
        return (positions - centre_xy) * self.k_sampling, weights


class UNetDetector:
    """Spots from the network's spot image, refined to subpixel, in 1/angstrom.

    Patterns are resampled from the scan's k coords to the model's calibration when they differ.
    The network runs in inference mode, channels_last, optionally under bf16 autocast and
    ``torch.compile``.

    Parameters
    ----------
    model : path or (torch.nn.Module, dict)
        Exported model file (``stemstrain train``) or a loaded (model, metadata) pair.
    scan : xr.Dataset
        4D data whose k coords are mapped onto the model's.
    device : {"auto", "cpu", "cuda"}
        Where the network runs.
    precision : {"auto", "fp32", "bf16"}
        Autocast precision of the network; ``auto``: bf16 where the hardware has native bf16
        (CUDA, CPUs with AVX-512-BF16/AMX), fp32 elsewhere (emulated bf16 is slower).
    compile : bool
        Compile the network with ``torch.compile`` (pays off on long runs).
    batch_size : int, optional
        Patterns per network call; default 128 on CPU, 1024 on CUDA (keeps a GPU busy).
    threshold_rel, min_distance, max_peaks
        Peak finding in the spot image (:func:`stemstrain.peaks.find_peaks`); peaks are accepted
        only where the mask logit is positive.
    allow_calibration_mismatch : bool
        Warn instead of failing when the scan's k-sampling is more than ``CALIBRATION_FACTOR``
        times coarser than the model's, or its detector reaches less than half the model's k range.
    """

    space = "reciprocal"

    def __init__(
        self,
        model,
        scan: xr.Dataset,
        device: str = "auto",
        precision: str = "auto",
        compile: bool = False,
        batch_size: int | None = None,
        threshold_rel: float = 0.01,
        min_distance: int = 2,
        max_peaks: int = 64,
        allow_calibration_mismatch: bool = False,
    ):
        import torch

        from stemstrain.model import load_model

        self.device = _device(device)
        precision = resolve_precision(precision, self.device)
        if isinstance(model, (str, Path)):
            self.model_hash = model_hash(model)
            network, self.metadata = load_model(model, device=self.device)
        else:
            network, self.metadata = model
            network = network.to(self.device).eval()
            self.model_hash = self.metadata.get("data_hash", "in-memory")
        self.network = fold_batchnorm(network).to(memory_format=torch.channels_last)
        if compile:
            self.network = torch.compile(self.network)
        self.precision = precision
        self.batch_size = int(batch_size or default_batch_size(self.device))
        self.threshold_rel, self.min_distance, self.max_peaks = threshold_rel, min_distance, max_peaks
        self.pixels = int(self.metadata["pixels"])
        self.k_sampling = float(self.metadata["k_sampling"])
        self._grid = self._resampling_grid(scan, allow_calibration_mismatch)
        self.timings = _Timings()

    def _resampling_grid(self, scan: xr.Dataset, allow_mismatch: bool):
        """Sampling grid from the model's pixels to the scan's (None when they coincide)."""
        import torch

        k_sampling, (centre_y, centre_x) = k_calibration(scan)
        ratio = k_sampling / self.k_sampling
        n_y, n_x = scan.sizes["k_y"], scan.sizes["k_x"]
        # Finer data are averaged down without loss; coarser data would be interpolated up, giving
        # blurred spots the network never saw; a small detector hides most spots.
        extent = min(centre_y, n_y - 1 - centre_y, centre_x, n_x - 1 - centre_x) * k_sampling
        model_extent = (self.pixels // 2 - 1) * self.k_sampling
        problems = []
        if ratio > CALIBRATION_FACTOR:
            problems.append(
                f"scan k-sampling {k_sampling:.5g} 1/angstrom per pixel is {ratio:.3g} times coarser than the model's "
                f"{self.k_sampling:.5g}; the network never saw such patterns"
            )
        if extent < 0.5 * model_extent:
            problems.append(
                f"the scan's detector reaches |k| = {extent:.3g} 1/angstrom, less than half of the model's "
                f"{model_extent:.3g}; the network never saw such patterns"
            )
        if problems:
            message = "; ".join(problems)
            if not allow_mismatch:
                raise StemstrainInputError(message + " (pass --allow-calibration-mismatch to run anyway)")
            warnings.warn(message, stacklevel=3)
        half = self.pixels // 2
        same = n_y == n_x == self.pixels and abs(ratio - 1) < 1e-4 and centre_y == half and centre_x == half
        if same:
            return None
        k_model = (np.arange(self.pixels) - half) * self.k_sampling
        index_x = centre_x + k_model / k_sampling
        index_y = centre_y + k_model / k_sampling
        # grid_sample's normalised coordinates with align_corners=True: -1 and 1 are the centres of
        # the first and last input pixels.
        grid_x = 2 * index_x / (n_x - 1) - 1
        grid_y = 2 * index_y / (n_y - 1) - 1
        gy, gx = np.meshgrid(grid_y, grid_x, indexing="ij")
        self._intensity_scale = (self.k_sampling / k_sampling) ** 2
        return torch.as_tensor(np.stack([gx, gy], axis=-1)[None], dtype=torch.float32, device=self.device)

    def resample(self, patterns):
        """Patterns (n, H, W) at the scan's calibration -> tensor (n, 1, pixels, pixels) at the model's.

        Bilinear interpolation from the scan's k coords; intensities are scaled by the pixel-area
        ratio so that counts per pixel stay comparable. Outside the scan's detector the value is 0.
        """
        import torch
        import torch.nn.functional as F

        batch = torch.as_tensor(patterns, dtype=torch.float32, device=self.device)[:, None]
        if self._grid is None:
            return batch
        grid = self._grid.expand(len(batch), -1, -1, -1)
        return self._intensity_scale * F.grid_sample(
            batch, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )

    def predict(self, patterns: np.ndarray) -> np.ndarray:
        """Network output (n, 2, pixels, pixels) float32 at the model calibration: mask logit, spot image."""
        import torch

        outputs = []
        autocast = torch.autocast(
            device_type="cuda" if self.device.startswith("cuda") else "cpu",
            dtype=torch.bfloat16,
            enabled=self.precision == "bf16",
        )
        cuda = self.device.startswith("cuda")
        with torch.inference_mode(), autocast:
            for start in range(0, len(patterns), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(patterns[start : start + self.batch_size], np.float32))
                if cuda:
                    # Page-locked host memory lets the copy run asynchronously to the GPU.
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                batch = self.resample(batch).contiguous(memory_format=torch.channels_last)
                outputs.append(self.network(batch).float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, 2, self.pixels, self.pixels), np.float32)

    def __call__(self, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.timings.measure("network"):
            output = self.predict(patterns)
        with self.timings.measure("peaks"):
            positions, weights = find_peaks(
                output[:, 1],
                threshold_rel=self.threshold_rel,
                min_distance=self.min_distance,
                max_peaks=self.max_peaks,
                mask=output[:, 0] > 0,
            )
        return (positions - self.pixels // 2) * self.k_sampling, weights


def make_detector(method: str, scan: xr.Dataset, model=None, **options) -> Callable:
    """Spot detector of a method, calibrated for a scan.

    Parameters
    ----------
    method : {"unet", "bragg", "cepstrum", "cepstrum-multi", "peaks"}
        ``unet``: the network (:class:`UNetDetector`, needs ``model``); ``bragg``, ``cepstrum``,
        ``cepstrum-multi``: classical baselines from :mod:`stemstrain.baselines`; ``peaks``:
        maxima of the raw patterns (:class:`PeakDetector`).
    scan : xr.Dataset
        4D data (contract of DESIGN.md).
    model : path or (torch.nn.Module, dict), optional
        The exported network, for ``unet``.
    **options
        Options of the detector class (unet: device, precision, compile, batch_size, ...).

    Raises
    ------
    StemstrainInputError
        Unknown method, missing model, or a method not available in this installation.
    """
    if method == "unet":
        if model is None:
            raise StemstrainInputError("--model: the unet method needs a model checkpoint (CKPT_DIR/model.pt)")
        _check_options(method, UNetDetector.__init__, options)
        return UNetDetector(model, scan, **options)
    if method == "peaks":
        peak_options = {k: v for k, v in options.items() if k not in _NETWORK_OPTIONS | {"device", "batch_size"}}
        _check_options(method, PeakDetector.__init__, peak_options)
        return PeakDetector(scan, **peak_options)
    if method in ("bragg", "cepstrum", "cepstrum-multi"):
        try:
            from stemstrain.baselines import make_detector as make_baseline
        except ImportError:
            raise StemstrainInputError(f"--method {method}: not available in this installation") from None
        baseline_options = {k: v for k, v in options.items() if k not in _NETWORK_OPTIONS}
        if "device" in baseline_options:
            baseline_options["device"] = _device(baseline_options["device"])
        return make_baseline(method, scan, **baseline_options)
    raise StemstrainInputError(f"--method: expected one of {METHODS}, found {method!r}")


def _check_options(method: str, init: Callable, options: dict) -> None:
    import inspect

    known = set(inspect.signature(init).parameters) - {"self", "model", "scan"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise StemstrainInputError(
            f"--detector-option: method {method!r} has no option(s) {unknown}; it takes {sorted(known)}"
        )


# ---------------------------------------------------------------- work units and the store


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """A block of whole patterns ``[y0:y1, x0:x1]`` of the scan; its key names it in the store."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def key(self) -> str:
        return f"fit-{self.y0}-{self.x0}"

    @property
    def region(self) -> dict[str, slice]:
        return {"scan_y": slice(self.y0, self.y1), "scan_x": slice(self.x0, self.x1)}

    @property
    def size(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def plan_units(data: xr.DataArray, target_patterns: int) -> tuple[tuple[int, int], list[WorkUnit]]:
    """Split the scan into blocks of whole input chunks holding about ``target_patterns`` patterns.

    Returns the block shape (the output chunks, so that units write disjoint Zarr chunks) and the units.
    """
    n_y, n_x = data.shape[:2]
    if data.chunks is not None:
        chunk_y, chunk_x = data.chunks[0][0], data.chunks[1][0]
    else:
        chunk_y, chunk_x = 1, n_x
    per_chunk = chunk_y * chunk_x
    factor_x = max(1, min(math.ceil(n_x / chunk_x), target_patterns // per_chunk))
    unit_x = min(n_x, chunk_x * factor_x)
    factor_y = max(1, target_patterns // (chunk_y * unit_x)) if unit_x >= n_x else 1
    unit_y = min(n_y, chunk_y * factor_y)
    units = [
        WorkUnit(y0, min(y0 + unit_y, n_y), x0, min(x0 + unit_x, n_x))
        for y0 in range(0, n_y, unit_y)
        for x0 in range(0, n_x, unit_x)
    ]
    return (unit_y, unit_x), units


def _template(scan: xr.Dataset, unit_shape: tuple[int, int], attrs: dict, fit_units: str) -> xr.Dataset:
    """Lazy output store: the strain-map contract plus the fitted lattice and origin per position."""
    shape = (scan.sizes["scan_y"], scan.sizes["scan_x"])
    nan = np.broadcast_to(np.nan, shape)
    ds = strain_map_dataset(
        {name: nan for name in STRAIN_COMPONENTS},
        scan["scan_y"].values,
        scan["scan_x"].values,
        fit_error=nan,
        n_peaks=np.broadcast_to(np.int32(0), shape),
        mask=np.broadcast_to(False, shape),
        **attrs,
    )
    ds["fit_error"].attrs["units"] = fit_units
    ds["lattice"] = (
        SCAN_DIMS + ("axis", "vector"),
        np.broadcast_to(np.nan, shape + (2, 2)),
        {"units": "1/angstrom", "long_name": "fitted reciprocal basis, g1 and g2 as columns (x, y)"},
    )
    ds["origin"] = (
        SCAN_DIMS + ("axis",),
        np.broadcast_to(np.nan, shape + (2,)),
        {"units": fit_units, "long_name": "fitted position of the (0, 0) spot"},
    )
    return ds.chunk({"scan_y": unit_shape[0], "scan_x": unit_shape[1], "axis": 2, "vector": 2})


def _read(scan: xr.Dataset, unit: WorkUnit) -> np.ndarray:
    """Patterns of a unit (n, k_y, k_x); a damaged chunk, NaN/inf or negative patterns are bad input."""
    source, where = (
        scan.encoding.get("source", "4D data"),
        f" at scan_y {unit.y0}:{unit.y1}, scan_x {unit.x0}:{unit.x1}",
    )
    block = read_values(
        scan["data"].isel(scan_y=slice(unit.y0, unit.y1), scan_x=slice(unit.x0, unit.x1)), source, where
    )
    check_counts(block, source, "data", where)
    return block.reshape((-1,) + block.shape[2:])


def _fit_unit(patterns: np.ndarray, unit: WorkUnit, detector, lattice0, origin0, options: FitOptions, timings):
    """Detect, index and fit one unit; returns the region Dataset to write."""
    positions, weights = detector(np.asarray(patterns, dtype=np.float32))
    with timings.measure("fit"):
        fit_origin = getattr(detector, "space", "reciprocal") == "reciprocal"
        fit = fit_patterns(positions, weights, lattice0, origin0, fit_origin, options)
        lattice = fit["lattice"] if fit_origin else reciprocal_vectors(fit["lattice"])
        shape = (unit.y1 - unit.y0, unit.x1 - unit.x0)
        return xr.Dataset(
            {
                "lattice": (SCAN_DIMS + ("axis", "vector"), lattice.reshape(shape + (2, 2))),
                "origin": (SCAN_DIMS + ("axis",), fit["origin"].reshape(shape + (2,))),
                "fit_error": (SCAN_DIMS, fit["fit_error"].reshape(shape)),
                "n_peaks": (SCAN_DIMS, fit["n_peaks"].reshape(shape).astype(np.int32)),
                "mask": (SCAN_DIMS, fit["valid"].reshape(shape)),
            }
        )


# ---------------------------------------------------------------- distributed execution


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything a worker needs to fit units (picklable)."""

    scan_path: str
    out: str
    method: str
    model: str | None
    detector_options: tuple
    lattice0: tuple
    origin0: tuple
    options: FitOptions


_WORKER_CACHE: dict = {}


def _worker_state(job: _Job):
    """Scan and detector of a job, built once per worker process."""
    key = (job.scan_path, job.method, job.model, job.detector_options)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        scan = open_4d(job.scan_path)
        _WORKER_CACHE[key] = (scan, make_detector(job.method, scan, model=job.model, **dict(job.detector_options)))
    return _WORKER_CACHE[key]


def _run_unit_on_worker(unit: WorkUnit, job: _Job) -> int:
    scan, detector = _worker_state(job)
    lattice0, origin0 = np.array(job.lattice0), np.array(job.origin0)
    result = _fit_unit(_read(scan, unit), unit, detector, lattice0, origin0, job.options, _Timings())
    ResumableStore(job.out).write_region(result, unit.region, unit.key)
    return unit.size


@contextlib.contextmanager
def dask_client(scheduler: str, workers: int | None = None, **cluster_options) -> Iterator:
    """A dask distributed Client on a LocalCluster or a dask-jobqueue SLURMCluster.

    Parameters
    ----------
    scheduler : {"local", "slurm"}
        ``local``: processes on this machine; ``slurm``: one Slurm job per worker.
    workers : int, optional
        Number of workers (default: 2 local, 1 on Slurm).
    **cluster_options
        Passed to ``SLURMCluster`` (queue, account, cores, memory, walltime,
        job_extra_directives such as ``["--gpus=1"]`` for one GPU per worker).
    """
    from dask.distributed import Client, LocalCluster

    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=None)
    elif scheduler == "slurm":
        import dask
        from dask_jobqueue import SLURMCluster

        # cores and memory of a site's ~/.config/dask/jobqueue.yaml win over these fallbacks (dask's own
        # walltime default, 30 min, is too short for a long scan); explicit options win over both.
        options = {"walltime": "01:00:00"}
        options |= {
            k: v
            for k, v in {"cores": 1, "memory": "8GB"}.items()
            if dask.config.get(f"jobqueue.slurm.{k}", None) is None
        }
        options |= cluster_options
        cluster = SLURMCluster(**options)
        cluster.scale(jobs=workers or 1)
    else:
        raise StemstrainInputError(f"--scheduler: expected local, slurm or none, found {scheduler!r}")
    client = Client(cluster)
    try:
        if scheduler == "slurm":
            client.wait_for_workers(workers or 1, timeout=600)
        yield client
    finally:
        client.close()
        cluster.close()


# ---------------------------------------------------------------- the whole run


def _progress(total: int, initial: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="pattern", unit_scale=True, disable=not show, desc="strain")


def _reference_mean(scan: xr.Dataset, roi, max_patterns: int = 4096) -> np.ndarray:
    """Mean pattern of the reference region, from at most ``max_patterns`` positions."""
    y0, y1, x0, x1 = roi
    stride = max(1, int(math.ceil(math.sqrt((y1 - y0) * (x1 - x0) / max_patterns))))
    block = scan["data"].isel(scan_y=slice(y0, y1, stride), scan_x=slice(x0, x1, stride))
    source, where = scan.encoding.get("source", "4D data"), f" in the reference region {list(roi)}"
    mean = read_values(block.astype(np.float64).mean(dim=("scan_y", "scan_x")), source, where)
    check_counts(mean[None], source, "data", where)
    return mean.astype(np.float32)


def strain_map(
    scan_path: str | Path,
    out: str | Path,
    method: str = "unet",
    model=None,
    reference_roi: tuple[int, int, int, int] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    scheduler: str = "none",
    workers: int | None = None,
    cluster_options: dict | None = None,
    client=None,
    unit_patterns: int = 1024,
    fit_options: FitOptions = FitOptions(),
    detector_options: dict | None = None,
    allow_calibration_mismatch: bool = False,
    fresh: bool = False,
    progress: bool = True,
    timings: dict | None = None,
    stop_after: int | None = None,
) -> Path:
    """Measure the strain map of a 4D scan and write it in the strain-map contract.

    Parameters
    ----------
    scan_path : path
        4D-data Zarr store (contract of DESIGN.md).
    out : path
        Strain-map Zarr store to write (via ``<out>.partial``; an earlier partial run resumes).
    method : {"unet", "bragg", "cepstrum", "cepstrum-multi", "peaks"}
        Spot detector.
    model : path or (torch.nn.Module, dict), optional
        Exported network, for ``unet`` (a path when running on a cluster).
    reference_roi : (y0, y1, x0, x1), optional
        Half-open scan indices of the unstrained reference region; default: the scan's
        ``reference_roi`` attr, else the whole scan.
    batch_size : int, optional
        Patterns per network call; default 128 on CPU, 1024 on CUDA.
    device : {"auto", "cpu", "cuda"}
        Where the network runs (each worker's own GPU on a cluster).
    precision : {"auto", "fp32", "bf16"}
        Network precision; ``auto``: bf16 where the hardware has native bf16, else fp32.
    compile : bool
        ``torch.compile`` the network.
    scheduler : {"none", "local", "slurm"}
        ``none``: this process, reading ahead in a thread; ``local``: a dask LocalCluster;
        ``slurm``: a dask-jobqueue SLURMCluster.
    workers : int, optional
        Dask workers for ``local``/``slurm``.
    cluster_options : dict, optional
        Options of the ``SLURMCluster`` (queue, account, cores, memory, walltime,
        job_extra_directives such as ``["--gpus=1"]``).
    client : dask.distributed.Client, optional
        Use this running client instead of starting a cluster.
    unit_patterns : int
        Patterns per work unit (rounded to whole input chunks); bounds the memory.
    fit_options : FitOptions
        Indexing and fit validity settings.
    detector_options : dict, optional
        Further options of the method's detector (unet: threshold_rel, min_distance, max_peaks;
        peaks: the same; bragg/cepstrum: see :func:`stemstrain.baselines.make_detector`), e.g.
        from :func:`parse_detector_options`.
    allow_calibration_mismatch : bool
        Run the network on data whose k-sampling is far from the model's (with a warning).
    fresh : bool
        Discard a partial store from an earlier run instead of resuming it.
    progress : bool
        Show a progress bar with patterns/s.
    timings : dict, optional
        Filled with seconds per stage (read, network, peaks, fit, write, total) and pattern count.
    stop_after : int, optional
        Stop after this many units of pass 1 (to test resuming), leaving the partial store.

    Returns
    -------
    Path
        ``out``.
    """
    start_time = time.perf_counter()
    scan_path, out = Path(scan_path), Path(out)
    scan = open_4d(scan_path)
    scan_shape = (scan.sizes["scan_y"], scan.sizes["scan_x"])
    if reference_roi is None:
        reference_roi = scan.attrs.get("reference_roi")
    if reference_roi is None:
        reference_roi = (0, scan_shape[0], 0, scan_shape[1])
        warnings.warn(f"{scan_path}: no reference region given; the whole scan is the reference", stacklevel=2)
    reference_roi = check_reference_roi(reference_roi, scan_shape, "--ref-roi")
    if scheduler not in ("none", "local", "slurm"):
        raise StemstrainInputError(f"--scheduler: expected none, local or slurm, found {scheduler!r}")
    distributed = client is not None or scheduler in ("local", "slurm")
    if distributed and model is not None and not isinstance(model, (str, Path)):
        raise StemstrainInputError("model: a distributed run needs the model as a checkpoint path")

    # Network settings go to the network only: a baseline gets the device and its own options.
    options: dict = {"device": device} if method != "peaks" else {}
    if method == "unet":
        options |= {"batch_size": batch_size, "precision": precision, "compile": compile}
        options["allow_calibration_mismatch"] = allow_calibration_mismatch
    options.update(detector_options or {})
    detector = make_detector(method, scan, model=model, **options)
    space = getattr(detector, "space", "reciprocal")
    stage = _Timings() if timings is None else timings
    if not isinstance(stage, _Timings):
        stage = _Timings(stage)

    with stage.measure("read"):
        mean_pattern = _reference_mean(scan, reference_roi)
    if not np.any(mean_pattern > 0):
        raise StemstrainInputError(
            f"{scan_path}: the patterns of the reference region {list(reference_roi)} are all zero"
        )
    positions, weights = detector(mean_pattern[None])
    lattice0, origin0 = initial_lattice(
        positions[0], weights[0], space, fit_options, fallback=material_lattice(scan.attrs, space)
    )

    unit_shape, units = plan_units(scan["data"], max(unit_patterns, 1))
    store = ResumableStore(out)
    settings = {
        "method": method,
        "model_hash": getattr(detector, "model_hash", None),
        "reference_roi": list(reference_roi),
        "initial_g1": lattice0[:, 0].tolist(),
        "initial_g2": lattice0[:, 1].tolist(),
        "initial_origin": origin0.tolist(),
        "lattice_space": space,
        "source": str(scan_path),
        "precision": getattr(detector, "precision", None),
    }
    if store.started and not fresh:
        previous = xr.open_zarr(store.partial).attrs
        if any(previous.get(k) != v for k, v in settings.items() if k not in ("initial_g1", "initial_g2")):
            warnings.warn(f"{store.partial}: left by a run with other settings; starting afresh", stacklevel=2)
            fresh = True
        else:
            # Resume with exactly the initial lattice the finished units were indexed with.
            lattice0 = np.stack([previous["initial_g1"], previous["initial_g2"]], axis=-1)
            origin0 = np.asarray(previous["initial_origin"])
    fit_units = "1/angstrom" if space == "reciprocal" else "angstrom"
    store.start(_template(scan, unit_shape, {k: v for k, v in settings.items() if v is not None}, fit_units), fresh)

    try:
        todo = [unit for unit in units if not store.is_done(unit.key)]
        if stop_after is not None:
            todo = todo[:stop_after]
        total = sum(unit.size for unit in units)
        bar = _progress(total, total - sum(u.size for u in units if not store.is_done(u.key)), progress)
        try:
            if distributed:
                job = _Job(
                    str(scan_path.resolve()),
                    str(out.resolve()),
                    method,
                    str(Path(model).resolve()) if model is not None else None,
                    tuple(sorted(options.items())),
                    tuple(map(tuple, lattice0)),
                    tuple(origin0),
                    fit_options,
                )
                with contextlib.ExitStack() as stack:
                    if client is None:
                        client = stack.enter_context(dask_client(scheduler, workers, **(cluster_options or {})))
                    _run_distributed(client, todo, job, bar)
            else:
                _run_local(scan, todo, store, detector, lattice0, origin0, fit_options, stage, bar)
        finally:
            bar.close()
        if stop_after is not None and any(not store.is_done(unit.key) for unit in units):
            return out

        with stage.measure("write"):
            try:
                reference = _write_strain(store, units, reference_roi)
            except StemstrainInputError as err:
                raise StemstrainInputError(f"{scan_path} (--method {method}): {err}") from None
            _finish_attrs(store.partial, reference)
            store.finalize()
    except StemstrainInputError:
        # the input is bad (a damaged chunk, NaN, no reference lattice): a resume would fail the same way
        store.discard()
        raise
    stage["total"] = time.perf_counter() - start_time
    stage["patterns"] = total
    if timings is not None and timings is not stage:
        timings.update(stage)
    return out


def _run_local(scan, todo, store, detector, lattice0, origin0, options, timings, bar) -> None:
    """Fit units in order, reading the next unit in a thread while this one is computed."""
    detector_timings = getattr(detector, "timings", None)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as reader:

        def timed_read(unit):
            start = time.perf_counter()
            block = _read(scan, unit)
            return block, time.perf_counter() - start

        pending = reader.submit(timed_read, todo[0]) if todo else None
        for index, unit in enumerate(todo):
            patterns, read_seconds = pending.result()
            timings["read"] = timings.get("read", 0.0) + read_seconds
            if index + 1 < len(todo):
                pending = reader.submit(timed_read, todo[index + 1])
            result = _fit_unit(patterns, unit, detector, lattice0, origin0, options, timings)
            with timings.measure("write"):
                store.write_region(result, unit.region, unit.key)
            bar.update(unit.size)
    for stage, seconds in (detector_timings or {}).items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    if detector_timings is not None:
        detector_timings.clear()


def _run_distributed(client, todo, job: _Job, bar) -> None:
    from dask.distributed import as_completed

    futures = client.map(_run_unit_on_worker, todo, job=job, pure=False)
    for future in as_completed(futures):
        bar.update(future.result())


def _write_strain(store: ResumableStore, units: list[WorkUnit], reference_roi) -> np.ndarray:
    """Pass 2: reference lattice (median over the region) and strain of every unit."""
    fitted = xr.open_zarr(store.partial)
    y0, y1, x0, x1 = reference_roi
    region = fitted.isel(scan_y=slice(y0, y1), scan_x=slice(x0, x1))
    reference = reference_lattice(region["lattice"].values, None, valid=region["mask"].values)
    for unit in units:
        block = fitted.isel(unit.region)
        lattice = block["lattice"].values
        valid = block["mask"].values
        components = strain_from_lattice(np.where(valid[..., None, None], lattice, np.nan), reference)
        finite = np.all([np.isfinite(components[name]) for name in STRAIN_COMPONENTS], axis=0)
        result = xr.Dataset({name: (SCAN_DIMS, components[name]) for name in STRAIN_COMPONENTS})
        result["mask"] = (SCAN_DIMS, valid & finite)
        store.write_region(result, unit.region, unit.key.replace("fit-", "strain-"))
    return reference


def _finish_attrs(partial: Path, reference: np.ndarray) -> None:
    """Record the reference lattice g1, g2 in the store's attributes."""
    import zarr

    group = zarr.open_group(str(partial), mode="r+")
    group.attrs.update({"g1": reference[:, 0].tolist(), "g2": reference[:, 1].tolist()})
    zarr.consolidate_metadata(str(partial))

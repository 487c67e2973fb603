"""Data contracts of docs/DESIGN.md: reading and validating 4D data, writing strain maps, atomic writes.

Writes never leave a half-made store at the output path: a whole store is written to a temporary
sibling and renamed (:func:`atomic_output`); a store filled chunk by chunk lives at
``<out>.partial`` with one marker file per finished chunk, so an interrupted run resumes from the
chunks it finished (:class:`ResumableStore`), and is renamed to ``<out>`` when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from stemstrain import __version__
from stemstrain.errors import StemstrainInputError
from stemstrain.strain import STRAIN_COMPONENTS

SCAN_DIMS = ("scan_y", "scan_x")
K_DIMS = ("k_y", "k_x")
DATA_DIMS = SCAN_DIMS + K_DIMS

STRAIN_VARIABLES = {
    "e_xx": ("1", "normal strain along x"),
    "e_yy": ("1", "normal strain along y"),
    "e_xy": ("1", "shear strain (tensor component xy)"),
    "theta": ("rad", "lattice rotation, counter-clockwise positive"),
    "fit_error": ("1/angstrom", "rms distance of fitted peaks from the lattice"),
    "n_peaks": ("1", "number of peaks used in the lattice fit"),
    "mask": ("1", "lattice fit valid"),
}

# xarray/zarr warn about zarr-v3 consolidated metadata, which we write on purpose for fast opening.
warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")


# ---------------------------------------------------------------- atomic writes


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def _replace(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, replacing a previous ``target`` only after the move is possible."""
    if target.exists():
        old = _temporary_sibling(target)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        os.replace(source, target)


def discard_temporaries(path: str | Path) -> list[Path]:
    """Remove temporaries of ``path`` left by a killed writer (``.NAME.tmp-*`` beside it).

    Call it where a single writer owns ``path`` and starts or resumes (e.g. rank 0 of training),
    never while another process may be writing the same file.

    Returns
    -------
    list of Path
        The temporaries removed.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.tmp-*")) if path.parent.is_dir() else []
    for tmp in stale:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    On an exception the temporary file or directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)


class ResumableStore:
    """A Zarr store filled chunk by chunk, resumable after an interruption.

    The store is built at ``<out>.partial``; ``<out>.partial.done/<key>`` marks a finished chunk.
    :meth:`finalize` renames the store to ``<out>`` and drops the markers.

    Parameters
    ----------
    out : path
        Final store path.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.markers = self.out.with_name(self.out.name + ".partial.done")

    @property
    def started(self) -> bool:
        """True when a partial store from an earlier run exists."""
        return self.partial.exists()

    def start(self, template: xr.Dataset, fresh: bool = False) -> None:
        """Create the partial store from a lazy template unless an earlier run left one.

        Parameters
        ----------
        template : xr.Dataset
            Dataset with the final shapes, dtypes, chunks, coords and attrs; its data variables
            should be lazy (dask) so that nothing is computed here.
        fresh : bool
            Discard a partial store left by an earlier run.
        """
        if fresh:
            self.discard()
        if self.started:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.partial) as tmp:
            template.to_zarr(tmp, compute=False, mode="w")
        self.markers.mkdir(exist_ok=True)

    def is_done(self, key: str) -> bool:
        """True when chunk ``key`` was written completely."""
        return (self.markers / key).exists()

    def mark_done(self, key: str) -> None:
        """Record that chunk ``key`` is written (call only after its data are on disk)."""
        self.markers.mkdir(parents=True, exist_ok=True)
        (self.markers / key).touch()

    def write_region(self, dataset: xr.Dataset, region: dict, key: str) -> None:
        """Write ``dataset`` into ``region`` of the partial store and mark ``key`` done."""
        dataset.to_zarr(self.partial, region=region, mode="r+")
        self.mark_done(key)

    def finalize(self) -> Path:
        """Rename the complete store to its final path and remove the markers."""
        _replace(self.partial, self.out)
        shutil.rmtree(self.markers, ignore_errors=True)
        return self.out

    def discard(self) -> None:
        """Remove the partial store and markers."""
        shutil.rmtree(self.partial, ignore_errors=True)
        shutil.rmtree(self.markers, ignore_errors=True)


# ---------------------------------------------------------------- opening stores


def open_store(path: str | Path, what: str = "Zarr store") -> xr.Dataset:
    """Open a Zarr store lazily as an xarray Dataset, with a clear error if it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise StemstrainInputError(f"{path}: {what} not found")
    try:
        return xr.open_zarr(path)
    except Exception as err:  # zarr and xarray raise many types for unreadable stores
        raise StemstrainInputError(f"{path}: cannot be read as a Zarr {what} ({type(err).__name__}: {err})") from None


def read_values(array: xr.DataArray, source: str, where: str = "") -> np.ndarray:
    """Load a (lazy) variable, naming the file and variable when a Zarr chunk cannot be decoded.

    Parameters
    ----------
    array : xr.DataArray
        Variable of a store opened with :func:`open_store` (or a selection of it).
    source : str
        The store path, for the message.
    where : str
        Where the selection lies, e.g. ``" at scan_y 0:4, scan_x 0:4"``.
    """
    try:
        return np.asarray(array.values)
    except Exception as err:  # codecs raise RuntimeError, ValueError, OSError ... for damaged chunks
        raise StemstrainInputError(
            f"{source}: variable '{array.name}' cannot be read{where}: damaged or truncated Zarr chunk "
            f"({type(err).__name__}: {err})"
        ) from None


def check_counts(patterns: np.ndarray, source: str, variable: str = "data", where: str = "") -> None:
    """Refuse NaN or inf values and patterns of negative total intensity in a block of patterns.

    Single negative pixels are allowed (dark-subtracted detectors give them); a whole pattern
    summing below zero is no measurement of electrons.

    Parameters
    ----------
    patterns : ndarray (..., k_y, k_x)
        Intensities [counts].
    source, variable, where : str
        File, variable and location named in the message.
    """
    if np.issubdtype(patterns.dtype, np.floating):
        bad = ~np.isfinite(patterns)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise StemstrainInputError(
                f"{source}: variable '{variable}' holds {int(bad.sum())} NaN or inf value(s){where} "
                f"(first at block index {first}); a lost Zarr chunk of float data reads as NaN"
            )
    totals = patterns.sum(axis=(-2, -1), dtype=np.float64)
    if np.any(totals < 0):
        first = tuple(int(i) for i in np.argwhere(totals < 0)[0])
        raise StemstrainInputError(
            f"{source}: variable '{variable}' holds {int((totals < 0).sum())} pattern(s) of negative total "
            f"intensity{where} (first at block index {first}); expected counts >= 0"
        )


def _require_units(ds: xr.Dataset, names: tuple[str, ...], expected: str, source: str) -> None:
    for name in names:
        if name not in ds.coords:
            raise StemstrainInputError(f"{source}: coordinate '{name}' is missing (expected {expected})")
        units = ds[name].attrs.get("units")
        if units is None:
            raise StemstrainInputError(
                f"{source}: coordinate '{name}' has no 'units' attribute (expected {expected!r})"
            )


def validate_4d(ds: xr.Dataset, source: str = "4D data") -> xr.Dataset:
    """Check a Dataset against the 4D-data contract of docs/DESIGN.md.

    Parameters
    ----------
    ds : xr.Dataset
        Candidate 4D dataset.
    source : str
        Name used in error messages (the file path).

    Returns
    -------
    xr.Dataset
        ``ds`` itself.

    Raises
    ------
    StemstrainInputError
        Naming the missing or malformed variable, dimension, coordinate or attribute.
    """
    if "data" not in ds.data_vars:
        raise StemstrainInputError(
            f"{source}: variable 'data' is missing (found variables {sorted(ds.data_vars)}); "
            "run `stemstrain ingest` on detector files first"
        )
    data = ds["data"]
    if data.dims != DATA_DIMS:
        raise StemstrainInputError(f"{source}: variable 'data' has dims {data.dims}, expected {DATA_DIMS}")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise StemstrainInputError(f"{source}: variable 'data' has dtype {data.dtype}, expected float32 or uint16")
    if any(size == 0 for size in data.shape):
        raise StemstrainInputError(f"{source}: variable 'data' is empty (shape {data.shape})")
    _require_units(ds, SCAN_DIMS, "nm", source)
    _require_units(ds, K_DIMS, "1/angstrom", source)
    for axis in K_DIMS:
        k = np.asarray(ds[axis].values, dtype=float)
        steps = np.diff(k)
        if k.size < 2 or not np.all(np.isfinite(k)) or np.any(steps <= 0) or np.ptp(steps) > 1e-3 * abs(steps[0]):
            raise StemstrainInputError(f"{source}: coordinate '{axis}' must increase in uniform steps [1/angstrom]")
    for attr in ("energy_eV", "semiangle_mrad"):
        value = ds.attrs.get(attr)
        if value is None or not np.isfinite(float(value)) or float(value) <= 0:
            raise StemstrainInputError(f"{source}: attribute '{attr}' is missing or not positive (found {value!r})")
    roi = ds.attrs.get("reference_roi")
    if roi is not None:
        check_reference_roi(roi, data.shape[:2], f"{source}: attribute 'reference_roi'")
    return ds


def check_reference_roi(roi, scan_shape: tuple[int, int], name: str = "reference region") -> tuple[int, int, int, int]:
    """Validate a reference region ``[y0, y1, x0, x1]`` (half-open scan indices) against a scan shape."""
    try:
        y0, y1, x0, x1 = (int(v) for v in roi)
    except (TypeError, ValueError):
        raise StemstrainInputError(f"{name}: expected four integers [y0, y1, x0, x1], found {roi!r}") from None
    n_y, n_x = scan_shape
    if not (0 <= y0 < y1 <= n_y and 0 <= x0 < x1 <= n_x):
        raise StemstrainInputError(
            f"{name}: [y0, y1, x0, x1] = {[y0, y1, x0, x1]} must lie inside the scan of {n_y} x {n_x} "
            "positions with y0 < y1 and x0 < x1"
        )
    return y0, y1, x0, x1


def open_4d(path: str | Path) -> xr.Dataset:
    """Open and validate a 4D-data store lazily (nothing is loaded)."""
    return validate_4d(open_store(path, "4D-data store"), str(path))


def k_calibration(ds: xr.Dataset) -> tuple[float, tuple[float, float]]:
    """Reciprocal-space calibration of a 4D dataset.

    Returns
    -------
    k_sampling : float
        Pixel size [1/angstrom], the mean over both axes.
    centre : (float, float)
        Fractional pixel index (y, x) of k = 0.
    """
    k_y = np.asarray(ds["k_y"].values, dtype=float)
    k_x = np.asarray(ds["k_x"].values, dtype=float)
    step_y, step_x = np.mean(np.diff(k_y)), np.mean(np.diff(k_x))
    if abs(step_y - step_x) > 1e-3 * step_x:
        raise StemstrainInputError(f"k-sampling differs between k_y ({step_y}) and k_x ({step_x}) [1/angstrom]")
    return float(0.5 * (step_y + step_x)), (float(-k_y[0] / step_y), float(-k_x[0] / step_x))


def at_calibration(ds: xr.Dataset, pixels: int, k_sampling: float) -> bool:
    """Whether a 4D dataset's detector is ``pixels``² px at ``k_sampling`` with k = 0 at pixel ``pixels // 2``.

    Data at a network's calibration are read as they are; other data (every real camera) are resampled
    to it (:class:`stemstrain.detect.network.UNetDetector`).

    Parameters
    ----------
    ds : xr.Dataset
        4D data (contract of docs/DESIGN.md).
    pixels : int
        Detector side of the calibration [px].
    k_sampling : float
        Its pixel size [1/angstrom].
    """
    step, (centre_y, centre_x) = k_calibration(ds)
    half = pixels // 2
    # k = 0 read from float coordinates is 64.00000000000001, not 64: compare within a micro-pixel.
    centred = abs(centre_y - half) < 1e-6 and abs(centre_x - half) < 1e-6
    return ds.sizes["k_y"] == ds.sizes["k_x"] == pixels and abs(step / k_sampling - 1) < 1e-4 and centred


def reference_k(pixels: int, k_sampling: float) -> np.ndarray:
    """Reciprocal coordinates of the reference calibration: ``(arange(n) - n // 2) * k_sampling``."""
    return (np.arange(pixels) - pixels // 2) * k_sampling


def make_4d_dataset(
    data,
    scan_step_nm: float | tuple[float, float],
    k_sampling: float,
    energy_eV: float,
    semiangle_mrad: float,
    probe: np.ndarray | None = None,
    **attrs,
) -> xr.Dataset:
    """Wrap a (scan_y, scan_x, k_y, k_x) array in the 4D-data contract.

    Parameters
    ----------
    data : array_like (numpy or dask)
        Patterns, k = 0 at index ``n // 2`` on both detector axes.
    scan_step_nm : float or (float, float)
        Scan step (y, x) [nm].
    k_sampling : float
        Detector pixel size [1/angstrom].
    energy_eV, semiangle_mrad : float
        Beam energy [eV] and convergence semiangle [mrad].
    probe : ndarray (k_y, k_x), optional
        Vacuum probe image at the same optics.
    **attrs
        Further Dataset attrs (material, zone_axis, thickness_nm, dose_e_per_pattern, reference_roi).
    """
    step_y, step_x = np.broadcast_to(np.asarray(scan_step_nm, dtype=float), (2,))
    n_y, n_x, n_ky, n_kx = data.shape
    coords = {
        "scan_y": ("scan_y", np.arange(n_y) * step_y, {"units": "nm", "long_name": "scan position y"}),
        "scan_x": ("scan_x", np.arange(n_x) * step_x, {"units": "nm", "long_name": "scan position x"}),
        "k_y": ("k_y", reference_k(n_ky, k_sampling), {"units": "1/angstrom", "long_name": "scattering vector y"}),
        "k_x": ("k_x", reference_k(n_kx, k_sampling), {"units": "1/angstrom", "long_name": "scattering vector x"}),
    }
    variables = {"data": (DATA_DIMS, data, {"units": "counts", "long_name": "diffraction intensity"})}
    if probe is not None:
        variables["probe"] = (
            K_DIMS,
            np.asarray(probe, dtype=np.float32),
            {"units": "counts", "long_name": "vacuum probe"},
        )
    clean = {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.items() if v is not None}
    return xr.Dataset(
        variables,
        coords=coords,
        attrs={"energy_eV": float(energy_eV), "semiangle_mrad": float(semiangle_mrad), **clean},
    )


# ---------------------------------------------------------------- strain maps


def strain_map_dataset(
    components: dict[str, np.ndarray],
    scan_y: np.ndarray,
    scan_x: np.ndarray,
    fit_error: np.ndarray | None = None,
    n_peaks: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    **attrs,
) -> xr.Dataset:
    """Build a strain-map Dataset in the contract of docs/DESIGN.md.

    Parameters
    ----------
    components : dict of ndarray (scan_y, scan_x)
        ``e_xx``, ``e_yy``, ``e_xy`` [1] and ``theta`` [rad].
    scan_y, scan_x : ndarray
        Scan coordinates [nm].
    fit_error : ndarray, optional
        RMS lattice-fit residual [1/angstrom]; zeros when omitted.
    n_peaks : ndarray, optional
        Peaks used per fit; zeros when omitted.
    mask : ndarray of bool, optional
        Valid fits; finite strain when omitted.
    **attrs
        Dataset attrs: method, model_hash, reference_roi, g1, g2, ... (``software_version`` is added).
    """
    shape = (len(scan_y), len(scan_x))
    finite = np.all([np.isfinite(np.asarray(components[c])) for c in STRAIN_COMPONENTS], axis=0)
    values = {name: np.asarray(components[name], dtype=np.float64) for name in STRAIN_COMPONENTS}
    values["fit_error"] = np.zeros(shape) if fit_error is None else np.asarray(fit_error, dtype=np.float64)
    values["n_peaks"] = np.zeros(shape, np.int32) if n_peaks is None else np.asarray(n_peaks, dtype=np.int32)
    values["mask"] = finite if mask is None else np.asarray(mask, dtype=bool)
    variables = {
        name: (SCAN_DIMS, values[name], {"units": units, "long_name": long_name})
        for name, (units, long_name) in STRAIN_VARIABLES.items()
    }
    coords = {
        "scan_y": ("scan_y", np.asarray(scan_y, dtype=float), {"units": "nm", "long_name": "scan position y"}),
        "scan_x": ("scan_x", np.asarray(scan_x, dtype=float), {"units": "nm", "long_name": "scan position x"}),
    }
    clean = {k: (np.asarray(v).tolist() if isinstance(v, (tuple, np.ndarray)) else v) for k, v in attrs.items()}
    return xr.Dataset(variables, coords=coords, attrs={"software_version": __version__, **clean})


def write_strain_map(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a strain map atomically (temporary store, then rename)."""
    with atomic_output(path) as tmp:
        ds.to_zarr(tmp, mode="w")
    return Path(path)


def validate_strain_map(ds: xr.Dataset, source: str = "strain map", require_valid: bool = True) -> xr.Dataset:
    """Check a Dataset against the strain-map contract.

    Raises
    ------
    StemstrainInputError
        If a strain variable is missing, has other dims than (scan_y, scan_x), or, with
        ``require_valid``, no position holds a finite value.
    """
    for name in STRAIN_COMPONENTS:
        if name not in ds.data_vars:
            raise StemstrainInputError(
                f"{source}: variable '{name}' is missing "
                f"(found {sorted(ds.data_vars)}; expected {list(STRAIN_COMPONENTS)})"
            )
        if ds[name].dims != SCAN_DIMS:
            raise StemstrainInputError(f"{source}: variable '{name}' has dims {ds[name].dims}, expected {SCAN_DIMS}")
        if not np.issubdtype(ds[name].dtype, np.number):
            raise StemstrainInputError(f"{source}: variable '{name}' has dtype {ds[name].dtype}, expected float64")
        units, expected = ds[name].attrs.get("units"), STRAIN_VARIABLES[name][0]
        # a theta in degrees read as radians would be silently wrong by a factor 57
        if units is not None and units != expected:
            raise StemstrainInputError(f"{source}: variable '{name}' has units {units!r}, expected {expected!r}")
    _require_units(ds, SCAN_DIMS, "nm", source)
    roi = ds.attrs.get("reference_roi")
    if roi is not None:
        check_reference_roi(roi, tuple(ds.sizes[d] for d in SCAN_DIMS), f"{source}: attribute 'reference_roi'")
    if require_valid:
        finite = np.all([np.isfinite(ds[name].values) for name in STRAIN_COMPONENTS], axis=0)
        if "mask" in ds:
            finite &= ds["mask"].values.astype(bool)
        if not finite.any():
            raise StemstrainInputError(f"{source}: no scan position holds a finite, valid strain value")
    return ds


def open_strain_map(path: str | Path, require_valid: bool = True) -> xr.Dataset:
    """Open and validate a strain-map store (loaded into memory: maps are small)."""
    ds = open_store(path, "strain-map store")
    loaded = {name: (ds[name].dims, read_values(ds[name], str(path)), ds[name].attrs) for name in ds.data_vars}
    return validate_strain_map(ds.assign(loaded).load(), str(path), require_valid)

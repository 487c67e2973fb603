"""Detector files converted into the 4D-data contract (docs/DESIGN.md), streamed block by block.

Storage
    uint8 and uint16 counts are stored as native uint16; every other dtype (24-bit Merlin ``>u4``, ARINA
    uint32, floats) as float32, exact for integer counts below 2**24. ARINA pixels flagged in its
    ``pixel_mask`` are set to 0. The store is built at ``<out>.partial`` (:class:`io.ResumableStore`):
    an interrupted run resumes from finished blocks, a file found unreadable or truncated removes the
    partial store, and ``<out>`` appears only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from stemstrain.errors import StemstrainInputError
from stemstrain.ingest.readers import BLOCK_BYTES, RawScan, read_raw
from stemstrain.io import DATA_DIMS, ResumableStore, check_counts, make_4d_dataset, validate_4d

__all__ = ["CENTRES", "CHUNK_BYTES", "beam_centre", "default_chunks", "ingest", "iter_blocks", "read_probe"]

CHUNK_BYTES = 16 * 2**20
"""Target size of one Zarr chunk of the output store [bytes] when ``chunks`` is not given."""

CENTRES = ("middle", "com")


def storage_dtype(dtype) -> np.dtype:
    """Stored dtype: uint16 for 8/16-bit unsigned counts (and bool), float32 for everything else."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b" or (dtype.kind == "u" and dtype.itemsize <= 2):
        return np.dtype(np.uint16)
    return np.dtype(np.float32)


def default_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """Square-ish (cy, cx) chunk of whole patterns of about :data:`CHUNK_BYTES`."""
    pattern_bytes = itemsize * shape[2] * shape[3]
    side = max(1, int(math.isqrt(max(1, CHUNK_BYTES // pattern_bytes))))
    return min(side, shape[0]), min(side, shape[1])


def iter_blocks(
    shape: tuple[int, ...], chunks: tuple[int, int], itemsize: int, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[slice, slice]]:
    """(scan_y, scan_x) slices of whole output chunks, each block at most about ``block_bytes`` (or one chunk)."""
    n_y, n_x = shape[:2]
    c_y, c_x = chunks
    chunk_bytes = c_y * c_x * shape[2] * shape[3] * itemsize
    per_block = max(1, block_bytes // max(1, chunk_bytes))
    chunks_x = math.ceil(n_x / c_x)
    group = min(per_block, chunks_x)
    for y0 in range(0, n_y, c_y):
        for gx in range(0, chunks_x, group):
            yield slice(y0, min(y0 + c_y, n_y)), slice(gx * c_x, min((gx + group) * c_x, n_x))


def _read_block(data: da.Array, block: tuple[slice, slice], raw: Path) -> np.ndarray:
    try:
        return np.asarray(data[block].compute(scheduler="threads"))
    except StemstrainInputError:
        raise
    except Exception as err:  # a damaged chunk surfaces here as OSError, ValueError, ...
        rows, cols = block
        raise StemstrainInputError(
            f"{raw}: unreadable data at scan rows {rows.start}-{rows.stop - 1}, columns {cols.start}-{cols.stop - 1} "
            f"({type(err).__name__}: {err})"
        ) from None


def beam_centre(
    data: da.Array,
    method: str,
    raw: Path,
    chunks: tuple[int, int],
    progress: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[float, float]:
    """Pixel index (row, column) of the undiffracted beam.

    Parameters
    ----------
    data : dask.array.Array (scan_y, scan_x, k_y, k_x)
        Patterns.
    method : {"middle", "com"}
        ``middle``: index ``n // 2`` on each axis (the reference calibration's convention);
        ``com``: centre of mass of the mean pattern (one extra streamed pass over the file).
    """
    n_ky, n_kx = data.shape[2:]
    if method == "middle":
        return float(n_ky // 2), float(n_kx // 2)
    if method != "com":
        raise StemstrainInputError(f"--centre {method}: expected one of {list(CENTRES)}")
    total = summed_pattern(data, raw, chunks, "centre of mass", progress, block_bytes)
    mass = total.sum()
    if not mass > 0 or not np.isfinite(mass):
        raise StemstrainInputError(
            f"{raw}: --centre com needs a mean pattern with positive total intensity (found {mass}); "
            "use --centre middle"
        )
    return (
        float((total.sum(axis=1) * np.arange(n_ky)).sum() / mass),
        float((total.sum(axis=0) * np.arange(n_kx)).sum() / mass),
    )


def summed_pattern(
    data: da.Array,
    raw: Path,
    chunks: tuple[int, int],
    description: str,
    progress: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> np.ndarray:
    """Sum (k_y, k_x) of every pattern of ``data`` (scan_y, scan_x, k_y, k_x) [counts], float64.

    Streamed block by block (:func:`iter_blocks`), so memory stays at one block; a damaged block names
    ``raw`` and its scan rows and columns.
    """
    total = np.zeros(data.shape[2:])
    blocks = list(iter_blocks(data.shape, chunks, data.dtype.itemsize, block_bytes))
    for block in _progress(blocks, description, progress):
        total += _read_block(data, block, raw).sum(axis=(0, 1), dtype=np.float64)
    return total


def _progress(items, description: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="block")


def _fingerprint(raw: Path, options: dict) -> str:
    # a directory store (ZSpy) changes in its files, not in the directory entry
    files = [p for p in raw.rglob("*") if p.is_file()] if raw.is_dir() else [raw]
    status = [p.stat() for p in files]
    size, mtime = sum(s.st_size for s in status), max((s.st_mtime_ns for s in status), default=0)
    return json.dumps({"file": str(raw.resolve()), "size": size, "mtime_ns": mtime, **options})


def _partial_fingerprint(store: ResumableStore) -> str | None:
    import zarr

    with contextlib.suppress(Exception):
        return zarr.open_group(store.partial, mode="r").attrs.get("ingest_fingerprint")
    return None


def missing_calibration(scan: RawScan, energy_eV, semiangle_mrad, k_sampling) -> list[str]:
    """Options the user must pass because neither they nor the file give the value."""
    missing = []
    if energy_eV is None and scan.energy_eV is None:
        missing.append("--energy-ev E (beam energy [eV])")
    if semiangle_mrad is None and scan.semiangle_mrad is None:
        missing.append("--semiangle-mrad A (probe convergence semiangle [mrad])")
    if k_sampling is None and scan.k_sampling is None:
        missing.append("--k-sampling S (detector pixel size [1/angstrom])")
    return missing


def ingest(
    raw: str | Path,
    out: str | Path,
    *,
    fmt: str | None = None,
    scan_shape: tuple[int, int] | None = None,
    energy_eV: float | None = None,
    semiangle_mrad: float | None = None,
    k_sampling: float | None = None,
    scan_step_nm: float | None = None,
    chunks: tuple[int, int] | None = None,
    centre: str = "middle",
    dataset: str | None = None,
    probe: str | Path | None = None,
    progress: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> Path:
    """Convert a detector file into a 4D-data Zarr store, streaming block by block.

    Parameters
    ----------
    raw : path
        Detector file (see :data:`FORMATS`).
    out : path
        Zarr store to write (contract of docs/DESIGN.md).
    fmt : str, optional
        Format name; detected from the file when omitted.
    scan_shape : (int, int), optional
        Scan positions (scan_y, scan_x); needed for flat frame stacks without a scan shape in the file.
    energy_eV : float, optional
        Beam energy [eV]; overrides the file.
    semiangle_mrad : float, optional
        Probe convergence semiangle [mrad]; overrides the file (only ZSpy records it).
    k_sampling : float, optional
        Detector pixel size [1/angstrom]; overrides the file.
    scan_step_nm : float, optional
        Scan step [nm]; overrides the file. Without either, 1 nm is written and the attr
        ``scan_step_source`` says it is uncalibrated (strain does not depend on it).
    chunks : (int, int), optional
        Zarr chunk (cy, cx) in scan positions; default about 16 MiB of whole patterns.
    centre : {"middle", "com"}
        Undiffracted-beam position defining k = 0: detector middle (index n // 2) or the centre
        of mass of the mean pattern.
    dataset : str, optional
        Dataset path inside an HDF5 file.
    probe : path, optional
        Vacuum probe recorded at the scan's optics and detector (:func:`read_probe`), stored as the
        variable ``probe``: bragg's template and the network's tilted read-out then use the measured
        disk instead of an aperture disk simulated from the energy and semiangle.
    progress : bool
        Show a progress bar.
    block_bytes : int
        Largest block read and written at once [bytes] (at least one chunk): the memory bound.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    StemstrainInputError
        For an unknown, unreadable, truncated or corrupt file (no store is left behind), a scan
        shape that does not fit, or missing calibration (one message listing every option to pass).
    """
    raw, out = Path(raw), Path(out)
    _check_options(centre, energy_eV, semiangle_mrad, k_sampling, scan_step_nm)
    scan = read_raw(raw, fmt, scan_shape, dataset)
    with scan.resources:
        dtype, chunks = _checked_layout(scan, raw, energy_eV, semiangle_mrad, k_sampling, chunks)
        energy, sampling, step, sources = _calibration(scan, energy_eV, k_sampling, scan_step_nm)
        semiangle = semiangle_mrad if semiangle_mrad is not None else scan.semiangle_mrad
        sources["semiangle_mrad"] = "--semiangle-mrad" if semiangle_mrad is not None else sources.get("semiangle_mrad")
        probe_image = None if probe is None else read_probe(probe, scan.data.shape[2:])
        settings = {
            "format": scan.format,
            "shape": list(scan.data.shape),
            "chunks": list(chunks),
            "centre": centre,
            "energy_eV": energy,
            "semiangle_mrad": semiangle,
            "k_sampling": sampling,
            "step": list(step),
            # a partial store made with another probe (or none) is not resumed
            "probe": None if probe_image is None else hashlib.sha256(probe_image.tobytes()).hexdigest(),
        }
        store = ResumableStore(out)
        fingerprint = _fingerprint(raw, settings)
        fresh = store.started and _partial_fingerprint(store) != fingerprint
        centre_px = beam_centre(scan.data, centre, raw, chunks, progress, block_bytes)
        template = _template(scan, raw, dtype, settings, centre_px, sources, fingerprint, probe_image)
        validate_4d(template, str(out))
        store.start(template, fresh=fresh)
        try:
            _copy_blocks(scan.data, store, raw, chunks, dtype, progress, block_bytes)
        except StemstrainInputError:
            # the input is bad: a resume would fail the same way, so leave nothing behind
            store.discard()
            raise
    return store.finalize()


def _template(
    scan: RawScan,
    raw: Path,
    dtype: np.dtype,
    settings: dict,
    centre_px: tuple[float, float],
    sources: dict,
    fingerprint: str,
    probe: np.ndarray | None = None,
) -> xr.Dataset:
    """Lazy output store in the 4D-data contract, k = 0 at the beam centre, with where the calibration came from."""
    data = scan.data
    sampling = settings["k_sampling"]
    template = make_4d_dataset(
        da.zeros(data.shape, dtype=dtype, chunks=(*settings["chunks"], *data.shape[2:])),
        settings["step"],
        sampling,
        settings["energy_eV"],
        settings["semiangle_mrad"],
        source_file=raw.name,
        source_format=scan.format,
        orientation="k_y increases with the row index in the detector's file row order; k_x with the column",
        beam_centre_px=list(centre_px),
        beam_centre_method=settings["centre"],
        calibration_sources=json.dumps({k: v for k, v in sources.items() if v}),
        ingest_fingerprint=fingerprint,
        probe=probe,
    )
    n_ky, n_kx = data.shape[2:]
    return template.assign_coords(
        k_y=("k_y", (np.arange(n_ky) - centre_px[0]) * sampling, template["k_y"].attrs),
        k_x=("k_x", (np.arange(n_kx) - centre_px[1]) * sampling, template["k_x"].attrs),
    )


def read_probe(path: str | Path, detector_shape: tuple[int, int]) -> np.ndarray:
    """The vacuum probe image (k_y, k_x) [counts] given to ``ingest --probe``.

    Parameters
    ----------
    path : path
        A ``.npy`` image (k_y, k_x), or a stack of them (..., k_y, k_x) whose mean is taken, in the
        orientation ingest writes (the detector's file row order); or a vacuum scan in any format
        ingest reads (:func:`~stemstrain.ingest.readers.read_raw`, oriented as the scan), whose mean
        frame is taken.
    detector_shape : (int, int)
        The scan's pattern shape (k_y, k_x) [px].

    Returns
    -------
    ndarray (k_y, k_x) float32

    Raises
    ------
    StemstrainInputError
        A missing or unreadable file, or an image of another shape, not finite or without counts.
    """
    path = Path(path)
    if not path.exists():
        raise StemstrainInputError(f"--probe {path}: file not found")
    if path.suffix == ".npy":
        try:
            image = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise StemstrainInputError(f"--probe {path}: not a readable .npy array ({err})") from err
        if image.ndim < 2:
            raise StemstrainInputError(f"--probe {path}: expected an image (k_y, k_x), found shape {image.shape}")
        image = np.asarray(image, dtype=np.float64).reshape(-1, *image.shape[-2:]).mean(axis=0)
    else:
        try:
            vacuum = read_raw(path)
        except StemstrainInputError as err:
            raise StemstrainInputError(f"--probe {path}: {err}") from err
        with vacuum.resources:
            data = vacuum.data
            chunks = default_chunks(data.shape, data.dtype.itemsize)
            image = summed_pattern(data, path, chunks, "vacuum probe") / (data.shape[0] * data.shape[1])
    if image.shape != tuple(detector_shape):
        raise StemstrainInputError(
            f"--probe {path}: image of shape {image.shape}, expected the scan's patterns' {tuple(detector_shape)} "
            "(k_y, k_x): record the probe on the same detector and binning"
        )
    if not np.all(np.isfinite(image)) or image.max() <= 0:
        raise StemstrainInputError(f"--probe {path}: the probe image must be finite with positive counts")
    return image.astype(np.float32)


def _check_options(centre: str, energy_eV, semiangle_mrad, k_sampling, scan_step_nm) -> None:
    if centre not in CENTRES:
        raise StemstrainInputError(f"--centre {centre}: expected one of {list(CENTRES)}")
    for name, value in (
        ("--energy-ev", energy_eV),
        ("--semiangle-mrad", semiangle_mrad),
        ("--k-sampling", k_sampling),
        ("--scan-step", scan_step_nm),
    ):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise StemstrainInputError(f"{name}: expected a positive number, found {value}")


def _checked_layout(
    scan: RawScan, raw: Path, energy_eV, semiangle_mrad, k_sampling, chunks
) -> tuple[np.dtype, tuple[int, int]]:
    """The stored dtype and the output chunks, after the checks that need no pass over the file.

    A truncated or damaged file fails here, on its first and last pattern, before any output exists.
    """
    missing = missing_calibration(scan, energy_eV, semiangle_mrad, k_sampling)
    if missing:
        raise StemstrainInputError(
            f"{raw}: calibration missing from the {scan.format} file; pass " + ", ".join(missing)
        )
    data = scan.data
    if data.dtype.kind not in "buif":
        # complex values lost their imaginary part and text was parsed as numbers, silently
        raise StemstrainInputError(
            f"{raw}: patterns have dtype {data.dtype}, expected real detector counts (integer or float)"
        )
    dtype = storage_dtype(data.dtype)
    if chunks is None:
        chunks = default_chunks(data.shape, dtype.itemsize)
    if len(chunks) != 2 or min(chunks) < 1:
        raise StemstrainInputError(f"--chunks: expected two positive integers CY CX, found {chunks}")
    chunks = (min(int(chunks[0]), data.shape[0]), min(int(chunks[1]), data.shape[1]))
    n_y, n_x = data.shape[:2]
    _read_block(data, (slice(n_y - 1, n_y), slice(n_x - 1, n_x)), raw)
    _read_block(data, (slice(0, 1), slice(0, 1)), raw)
    return dtype, chunks


def _calibration(scan: RawScan, energy_eV, k_sampling, scan_step_nm) -> tuple[float, float, tuple, dict]:
    """Beam energy [eV], k-sampling [1/angstrom], scan step (y, x) [nm] and where each came from.

    Options win over the file; a scan step found nowhere is 1 nm, marked uncalibrated.
    """
    sources = dict(scan.sources)
    energy = energy_eV if energy_eV is not None else scan.energy_eV
    sources["energy_eV"] = "--energy-ev" if energy_eV is not None else sources.get("energy_eV")
    sampling = k_sampling if k_sampling is not None else scan.k_sampling
    sources["k_sampling"] = "--k-sampling" if k_sampling is not None else sources.get("k_sampling")
    if scan_step_nm is not None:
        step, sources["scan_step_nm"] = (scan_step_nm, scan_step_nm), "--scan-step"
    elif scan.scan_step_nm is not None:
        step = scan.scan_step_nm
    else:
        step, sources["scan_step_nm"] = (1.0, 1.0), "default 1 nm (uncalibrated)"
    return energy, sampling, step, sources


def _copy_blocks(
    data: da.Array, store: ResumableStore, raw: Path, chunks, dtype: np.dtype, progress: bool, block_bytes: int
) -> None:
    """Copy the blocks not done yet into the partial store, each checked for NaN and negative patterns."""
    for rows, cols in _progress(
        list(iter_blocks(data.shape, chunks, dtype.itemsize, block_bytes)), f"ingest {raw.name}", progress
    ):
        key = f"{rows.start}_{cols.start}"
        if store.is_done(key):
            continue
        values = _read_block(data, (rows, cols), raw)
        where = f" at scan rows {rows.start}-{rows.stop - 1}, columns {cols.start}-{cols.stop - 1}"
        check_counts(values, str(raw), "patterns", where)
        block = xr.Dataset({"data": (DATA_DIMS, values.astype(dtype, copy=False))})
        store.write_region(block, {"scan_y": rows, "scan_x": cols}, key)

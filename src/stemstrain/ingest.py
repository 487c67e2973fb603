"""Detector files in, the 4D-data contract of DESIGN.md out, streamed block by block.

Formats (``--format`` name: files)
    ``merlin``: Quantum Detectors Merlin ``.mib`` (+ ``.hdr``), through rosettasciio (lazy).
    ``arina``: Dectris ARINA NeXus master ``*_master.h5`` (bitshuffle-LZ4 data files), read
    directly with h5py + hdf5plugin frame block by frame block, because rosettasciio 0.15 has no
    lazy ARINA reader (``lazy=True`` raises NotImplementedError).
    ``empad``: EMPAD ``.xml`` + ``.raw``, through rosettasciio (lazy).
    ``mrc``: Direct Electron DE-Server 4D ``.mrc`` (+ ``_info.txt``), through rosettasciio (lazy).
    ``blockfile``: NanoMegas ASTAR ``.blo``, through rosettasciio (lazy).
    ``emd``: py4DSTEM / EMD 1.0 ``.h5``/``.emd`` DataCube, through rosettasciio (lazy).
    ``npy``: a plain numpy ``.npy`` array, through rosettasciio (lazy, memory-mapped).
    ``hdf5``: a plain HDF5 file holding one 4D (or 3D with ``scan_shape``) dataset, read with h5py.
    ``zspy``: HyperSpy/pyxem ZSpy ``.zspy`` (a zarr v2 directory or zip file), through rosettasciio (lazy).

Orientation convention
    Every pattern is stored in the detector's file row order: row 0 is the first row the detector
    wrote to the file and k_y increases with the row index (downwards in an image shown with the
    origin at the top left), k_x increases with the column index. This is the order py4DSTEM keeps.
    rosettasciio flips Merlin frames vertically (``np.flip(data, axis=-2)``); we flip them back, so
    that a Merlin file and its py4DSTEM conversion give identical stores and the Merlin hot pixel
    named ``52x_39y`` lands at (k_y row 39, k_x column 52). The other readers keep the file row order
    and are not flipped. The first frame in the file is scan position (scan_y 0, scan_x 0) and
    scan_x runs fastest. py4DSTEM calls its array axes (Rx, Ry, Qx, Qy): they are our
    (scan_y, scan_x, k_y, k_x) in array order. A rotation between scan and detector is not applied.

Calibration
    Options given by the user win over file metadata. Beam energy comes from Merlin (never), ARINA
    (``photon_energy``), EMPAD (``source.get_voltage``), DE MRC (``Instrument Accelerating Voltage``),
    blockfile (``Beam_energy``), ZSpy (HyperSpy ``Acquisition_instrument.TEM.beam_energy`` [kV]). The
    k-sampling comes only from reciprocal axes we can trust: EMD/py4DSTEM and ZSpy axes in 1/angstrom or
    1/nm, and EMPAD's ``calibrated_diffraction_angle`` divided by the electron wavelength. rosettasciio's
    DE-MRC reciprocal axes always have scale 1 (a placeholder), so they are ignored. The convergence
    semiangle is recorded only by ZSpy (``Acquisition_instrument.TEM.convergence_angle`` [mrad]).
    Whatever is missing is reported in one :class:`~stemstrain.errors.StemstrainInputError` listing the
    options to pass.

Storage
    uint8 and uint16 counts are stored as native uint16; every other dtype (24-bit Merlin ``>u4``, ARINA
    uint32, floats) as float32, exact for integer counts below 2**24. ARINA pixels flagged in its
    ``pixel_mask`` are set to 0. The store is built at ``<out>.partial`` (:class:`io.ResumableStore`):
    an interrupted run resumes from finished blocks, a file found unreadable or truncated removes the
    partial store, and ``<out>`` appears only when complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from stemstrain.errors import StemstrainInputError
from stemstrain.io import ResumableStore, check_counts, make_4d_dataset, validate_4d

BLOCK_BYTES = 64 * 2**20
"""Largest block of patterns read and written at once [bytes]: the memory bound of ingest."""

CHUNK_BYTES = 16 * 2**20
"""Target size of one Zarr chunk of the output store [bytes] when ``chunks`` is not given."""

INPUT_CHUNK_BYTES = 4 * 2**20
"""Size of the lazy input chunks (dask ``array.chunk-size`` while a reader runs) [bytes]."""

CENTRES = ("middle", "com")

_LENGTH_TO_NM = {"nm": 1.0, "µm": 1e3, "um": 1e3, "μm": 1e3, "å": 0.1, "a": 0.1, "angstrom": 0.1, "pm": 1e-3, "m": 1e9}
_RECIPROCAL_TO_PER_ANGSTROM = {
    "1/å": 1.0,
    "1/a": 1.0,
    "å^-1": 1.0,
    "a^-1": 1.0,
    "1/angstrom": 1.0,
    "1/nm": 0.1,
    "nm^-1": 0.1,
}

# rosettasciio logs warnings about optional side files (ARINA metadata file, DE info) at import and read;
# ingest reports what it uses in the store's attrs instead
logging.getLogger("rsciio").setLevel(logging.ERROR)


@dataclass
class RawScan:
    """A detector file opened lazily, in our orientation, with what its metadata tell.

    Attributes
    ----------
    data : dask.array.Array (scan_y, scan_x, k_y, k_x)
        Patterns in the orientation convention of this module, native dtype of the file.
    format : str
        Format name (a key of :data:`FORMATS`).
    energy_eV : float or None
        Beam energy [eV] from the file.
    k_sampling : float or None
        Detector pixel size [1/angstrom] from the file.
    scan_step_nm : (float, float) or None
        Scan step (y, x) [nm] from the file.
    semiangle_mrad : float or None
        Probe convergence semiangle [mrad] from the file.
    sources : dict
        Where each calibration value came from (metadata key), for the store's attrs.
    resources : contextlib.ExitStack
        Open file handles the lazy array reads from; closed by :func:`ingest`.
    """

    data: da.Array
    format: str
    energy_eV: float | None = None
    k_sampling: float | None = None
    scan_step_nm: tuple[float, float] | None = None
    semiangle_mrad: float | None = None
    sources: dict = field(default_factory=dict)
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


# ---------------------------------------------------------------- small helpers


def electron_wavelength(energy_eV: float) -> float:
    """Relativistic electron wavelength [angstrom] at beam energy ``energy_eV`` [eV]."""
    return 12.2642598 / math.sqrt(energy_eV * (1.0 + 0.978475e-6 * energy_eV))


def _unit_key(units) -> str:
    if isinstance(units, bytes):
        units = units.decode()
    # HyperSpy writes units as LaTeX, e.g. "$A^{-1}$"
    return str(units or "").strip().lower().translate(str.maketrans("", "", " ${}"))


def _scan_step_from_axes(axes: list[dict], source: str) -> tuple[tuple[float, float] | None, str | None]:
    """Scan step (y, x) [nm] from the two leading rosettasciio axes when they are lengths."""
    steps = []
    for axis in axes[:2]:
        factor = _LENGTH_TO_NM.get(_unit_key(axis.get("units")))
        scale = axis.get("scale")
        if factor is None or scale is None or not float(scale) > 0:
            return None, None
        steps.append(float(scale) * factor)
    return (steps[0], steps[1]), f"{source} scan axes"


def _k_sampling_from_axes(axes: list[dict], source: str) -> tuple[float | None, str | None]:
    """Detector pixel size [1/angstrom] from the two trailing rosettasciio axes in reciprocal units."""
    steps = []
    for axis in axes[-2:]:
        factor = _RECIPROCAL_TO_PER_ANGSTROM.get(_unit_key(axis.get("units")))
        if factor is None or not float(axis.get("scale") or 0) > 0:
            return None, None
        steps.append(abs(float(axis["scale"])) * factor)
    if abs(steps[0] - steps[1]) > 1e-3 * steps[1]:
        raise StemstrainInputError(
            f"{source}: detector axes have different pixel sizes {steps} [1/angstrom]; "
            "stemstrain expects square pixels (resample first)"
        )
    return float(np.mean(steps)), f"{source} detector axes"


def _to_4d(data, scan_shape: tuple[int, int] | None, source: str) -> da.Array:
    """Give a pattern stack the shape (scan_y, scan_x, k_y, k_x), reshaping a flat frame stack lazily."""
    data = data if isinstance(data, da.Array) else da.from_array(data)
    if data.ndim == 2:
        data = data[None, None]
    if data.ndim not in (3, 4):
        raise StemstrainInputError(f"{source}: expected a 3D or 4D stack of patterns, found shape {data.shape}")
    frames = math.prod(data.shape[:-2])
    if scan_shape is None:
        if data.ndim == 4:
            return data
        raise StemstrainInputError(
            f"{source}: holds a flat stack of {frames} patterns and no scan shape; pass --scan-shape Y X"
        )
    n_y, n_x = scan_shape
    if n_y * n_x != frames:
        raise StemstrainInputError(
            f"{source}: --scan-shape {n_y} {n_x} needs {n_y * n_x} patterns, the file holds {frames} "
            f"(array shape {data.shape})"
        )
    if data.shape[:2] == (n_y, n_x) and data.ndim == 4:
        return data
    flat = data.reshape((frames, *data.shape[-2:]))
    # whole scan rows per chunk, so that the reshape below never merges chunks
    rows = max(1, BLOCK_BYTES // max(1, n_x * flat.dtype.itemsize * math.prod(flat.shape[1:])))
    flat = flat.rechunk((min(rows, n_y) * n_x, -1, -1))
    return flat.reshape((n_y, n_x, *data.shape[-2:]))


def _read_lazy(reader: Callable, raw: Path, fmt: str, **kwargs) -> dict:
    """Call a rosettasciio reader lazily; any failure becomes a StemstrainInputError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            signals = reader(str(raw), lazy=True, **kwargs)
    except StemstrainInputError:
        raise
    except NotImplementedError as err:
        raise StemstrainInputError(f"{raw}: {fmt} variant not supported ({err})") from None
    except Exception as err:  # readers raise many types for damaged files
        raise StemstrainInputError(f"{raw}: cannot be read as {fmt} ({type(err).__name__}: {err})") from None
    return signals[0]


# ---------------------------------------------------------------- readers


def _read_merlin(raw: Path, scan_shape, dataset) -> RawScan:
    from rsciio.quantumdetector import file_reader
    from rsciio.quantumdetector._api import MIBProperties, parse_hdr_file

    properties = MIBProperties()
    try:
        properties.parse_file(str(raw))
    except Exception as err:
        raise StemstrainInputError(f"{raw}: no valid Merlin MIB frame header ({type(err).__name__}: {err})") from None
    if properties.raw:
        raise StemstrainInputError(f"{raw}: RAW (undecoded R64) MIB data are not supported; save in processed mode")
    if properties.dtype is None or properties.head_size is None:
        raise StemstrainInputError(f"{raw}: unrecognised Merlin header (pixel type or header size)")
    frame_bytes = properties.head_size + math.prod(properties.merlin_size) * np.dtype(properties.dtype).itemsize
    frames, remainder = divmod(properties.file_size, frame_bytes)
    if remainder or frames == 0:
        raise StemstrainInputError(
            f"{raw}: truncated Merlin file: {properties.file_size} bytes is not a whole number of "
            f"{frame_bytes}-byte frames ({properties.file_size / frame_bytes:.2f} frames)"
        )
    hdr_path = raw.with_suffix(".hdr")
    expected = 0
    if hdr_path.exists():
        with contextlib.suppress(Exception):  # a damaged .hdr is optional information, not an error
            expected = int(parse_hdr_file(str(hdr_path))["Frames in Acquisition (Number)"])
    if frames < expected:
        raise StemstrainInputError(
            f"{raw}: truncated Merlin file: {hdr_path.name} announces {expected} frames, the file holds {frames}"
        )
    kwargs = {"navigation_shape": tuple(scan_shape[::-1])} if scan_shape is not None else {}
    signal = _read_lazy(file_reader, raw, "Merlin MIB", **kwargs)
    # undo rosettasciio's vertical flip: our frames keep the file row order (as py4DSTEM)
    data = da.flip(signal["data"], axis=-2)
    return RawScan(_to_4d(data, scan_shape, str(raw)), "merlin", sources={"orientation": "file row order"})


def _arina_number(group, path: str):
    with contextlib.suppress(KeyError, TypeError, ValueError):
        return np.asarray(group[path][()]).reshape(-1)[0]
    return None


def _read_arina(raw: Path, scan_shape, dataset) -> RawScan:
    import h5py
    import hdf5plugin  # noqa: F401  registers the bitshuffle-LZ4 filter with HDF5

    scan = RawScan(da.zeros(0), "arina")
    try:
        master = scan.resources.enter_context(h5py.File(raw, "r"))
        links = sorted(name for name in master["entry/data"] if name.startswith("data_"))
        stacks = [master[f"entry/data/{name}"] for name in links]
    except (OSError, KeyError) as err:
        scan.resources.close()
        raise StemstrainInputError(
            f"{raw}: cannot be read as an ARINA NeXus master with /entry/data/data_NNNNNN "
            f"(and its data files beside it) ({type(err).__name__}: {err})"
        ) from None
    if not stacks or any(stack.ndim != 3 for stack in stacks):
        scan.resources.close()
        raise StemstrainInputError(f"{raw}: expected 3D frame stacks under /entry/data, found {links}")
    detector = "entry/instrument/detector/detectorSpecific"
    mask = None
    with contextlib.suppress(KeyError):
        mask = np.asarray(master[f"{detector}/pixel_mask"][()]) != 0
    frames = da.concatenate([da.from_array(stack, chunks=(64, *stack.shape[1:])) for stack in stacks], axis=0)
    if mask is not None and mask.any():
        frames = da.where(mask, 0, frames)
    energy = _arina_number(master, f"{detector}/photon_energy")
    scan.sources["energy_eV"] = f"{detector}/photon_energy"
    scan.energy_eV = float(energy) if energy is not None and energy > 0 else None
    metadata_file = raw.with_name(raw.name.replace("_master", ""))
    file_shape = None
    if metadata_file != raw and metadata_file.exists():
        with contextlib.suppress(Exception), h5py.File(metadata_file, "r") as extra:
            stem = extra["STEM Metadata"].attrs
            file_shape = (int(np.ravel(stem["NumPixelsY"])[0]), int(np.ravel(stem["NumPixelsX"])[0]))
            step = float(np.ravel(stem["Pixel Size"])[0])
            if step > 0:
                scan.scan_step_nm = (step, step)
                scan.sources["scan_step_nm"] = f"{metadata_file.name} STEM Metadata/Pixel Size"
    scan.data = _to_4d(frames, scan_shape or file_shape, str(raw))
    scan.sources["orientation"] = "file row order"
    return scan


def _read_empad(raw: Path, scan_shape, dataset) -> RawScan:
    from rsciio.empad import file_reader

    signal = _read_lazy(file_reader, raw, "EMPAD xml/raw")
    frames = math.prod(signal["data"].shape[:-2])
    height, width = signal["data"].shape[-2:]
    # each frame carries 2 trailing metadata rows that rosettasciio drops
    expected = frames * (height + 2) * width * 4
    raw_name = signal["original_metadata"].get("root", {}).get("raw_file", {}).get("filename")
    payload = raw.with_name(raw_name) if raw_name else None
    if payload is not None and payload.exists() and payload.stat().st_size < expected:
        raise StemstrainInputError(
            f"{payload}: truncated EMPAD raw file: {payload.stat().st_size} bytes, {raw.name} announces {expected}"
        )
    root = signal["original_metadata"].get("root", {})
    iom = root.get("iom_measurements", {}) if isinstance(root, dict) else {}
    scan = RawScan(_to_4d(signal["data"], scan_shape, str(raw)), "empad", sources={"orientation": "file row order"})
    with contextlib.suppress(KeyError, TypeError, ValueError):
        scan.energy_eV = float(iom["source"]["get_voltage"])
        scan.sources["energy_eV"] = "xml iom_measurements/source.get_voltage"
    with contextlib.suppress(KeyError, TypeError, ValueError):
        angle = float(iom["calibrated_diffraction_angle"])
        if angle > 0 and scan.energy_eV:
            scan.k_sampling = angle / electron_wavelength(scan.energy_eV)
            scan.sources["k_sampling"] = "xml calibrated_diffraction_angle / electron wavelength"
    if signal["data"].ndim == 4:
        scan.scan_step_nm, scan.sources["scan_step_nm"] = _scan_step_from_axes(signal["axes"], "EMPAD")
    return scan


def _read_mrc(raw: Path, scan_shape, dataset) -> RawScan:
    from rsciio.mrc import file_reader

    kwargs = {"navigation_shape": tuple(scan_shape[::-1])} if scan_shape is not None else {}
    signal = _read_lazy(file_reader, raw, "MRC", **kwargs)
    header = signal["original_metadata"].get("std_header", {})
    expected = 0
    with contextlib.suppress(KeyError, TypeError, ValueError):
        mode_bytes = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}[int(header["MODE"])]
        expected = 1024 + int(header["NEXT"]) + int(header["NX"]) * int(header["NY"]) * int(header["NZ"]) * mode_bytes
    if raw.stat().st_size < expected:
        raise StemstrainInputError(
            f"{raw}: truncated MRC file: {raw.stat().st_size} bytes, its header announces {expected}"
        )
    scan = RawScan(_to_4d(signal["data"], scan_shape, str(raw)), "mrc", sources={"orientation": "file row order"})
    info = signal["original_metadata"].get("de_metadata", {})
    with contextlib.suppress(KeyError, TypeError, ValueError):
        energy = float(info["Instrument Accelerating Voltage (V)"])
        if energy > 0:
            scan.energy_eV = energy
            scan.sources["energy_eV"] = "_info.txt Instrument Accelerating Voltage (V)"
    with contextlib.suppress(KeyError, TypeError, ValueError):
        step_y = float(info["Specimen Pixel Size Y (nanometers)"])
        step_x = float(info["Specimen Pixel Size X (nanometers)"])
        if step_y > 0 and step_x > 0:
            scan.scan_step_nm = (step_y, step_x)
            scan.sources["scan_step_nm"] = "_info.txt Specimen Pixel Size (nanometers)"
    return scan


def _read_blockfile(raw: Path, scan_shape, dataset) -> RawScan:
    from rsciio.blockfile import file_reader

    signal = _read_lazy(file_reader, raw, "NanoMegas blockfile")
    expected = raw.stat().st_size
    header = signal["original_metadata"].get("blockfile_header", {})
    with contextlib.suppress(KeyError, TypeError, ValueError):
        side, n_x, n_y = int(header["DP_SZ"]), int(header["NX"]), int(header["NY"])
        # each pattern is preceded by a 6-byte marker; the virtual image sits before the patterns
        expected = int(header["Data_offset_2"]) + n_x * n_y * (side * side + 6)
    if raw.stat().st_size < expected:
        raise StemstrainInputError(
            f"{raw}: truncated blockfile: {raw.stat().st_size} bytes, the header announces {expected}"
        )
    scan = RawScan(_to_4d(signal["data"], scan_shape, str(raw)), "blockfile", sources={"orientation": "file row order"})
    with contextlib.suppress(KeyError, TypeError, ValueError):
        if float(header["Beam_energy"]) > 0:
            scan.energy_eV = float(header["Beam_energy"])
            scan.sources["energy_eV"] = "blockfile header Beam_energy"
    scan.scan_step_nm, scan.sources["scan_step_nm"] = _scan_step_from_axes(signal["axes"], "blockfile")
    return scan


def _read_emd(raw: Path, scan_shape, dataset) -> RawScan:
    from rsciio.emd import file_reader

    kwargs = {"dataset_path": dataset} if dataset else {}
    signal = _read_lazy(file_reader, raw, "EMD/py4DSTEM HDF5", **kwargs)
    scan = RawScan(_to_4d(signal["data"], scan_shape, str(raw)), "emd", sources={"orientation": "file row order"})
    scan.k_sampling, scan.sources["k_sampling"] = _k_sampling_from_axes(signal["axes"], "EMD")
    if signal["data"].ndim == 4:
        scan.scan_step_nm, scan.sources["scan_step_nm"] = _scan_step_from_axes(signal["axes"], "EMD")
    return scan


def _read_npy(raw: Path, scan_shape, dataset) -> RawScan:
    from rsciio.numpy import file_reader
    from rsciio.numpy._api import inspect_npy_file

    try:
        offset, shape, dtype = inspect_npy_file(str(raw))
    except Exception as err:
        raise StemstrainInputError(f"{raw}: not a valid .npy file ({type(err).__name__}: {err})") from None
    expected = offset + math.prod(shape) * np.dtype(dtype).itemsize
    if raw.stat().st_size < expected:
        raise StemstrainInputError(
            f"{raw}: truncated .npy file: {raw.stat().st_size} bytes, its header announces {expected} "
            f"(shape {tuple(shape)}, dtype {np.dtype(dtype)})"
        )
    signal = _read_lazy(file_reader, raw, ".npy")
    # rosettasciio squeezes length-1 axes away; a 1-row scan must keep its scan axes
    data = signal["data"].reshape(tuple(shape))
    return RawScan(_to_4d(data, scan_shape, str(raw)), "npy")


def _read_hdf5(raw: Path, scan_shape, dataset) -> RawScan:
    import h5py
    import hdf5plugin  # noqa: F401  compressed plain HDF5 files may use its filters

    scan = RawScan(da.zeros(0), "hdf5")
    try:
        handle = scan.resources.enter_context(h5py.File(raw, "r"))
    except OSError as err:
        raise StemstrainInputError(f"{raw}: cannot be read as HDF5 ({err})") from None
    if dataset is None:
        candidates = []
        handle.visititems(
            lambda name, obj: candidates.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4) else None
        )
        if len(candidates) != 1:
            scan.resources.close()
            raise StemstrainInputError(
                f"{raw}: expected exactly one 3D or 4D dataset, found {candidates or 'none'}; pass --dataset PATH"
            )
        dataset = candidates[0]
    if dataset not in handle or not isinstance(handle[dataset], h5py.Dataset):
        scan.resources.close()
        raise StemstrainInputError(f"{raw}: --dataset {dataset} is not a dataset in the file")
    source = handle[dataset]
    chunks = ("auto",) * (source.ndim - 2) + source.shape[-2:]
    scan.data = _to_4d(da.from_array(source, chunks=chunks, lock=True), scan_shape, f"{raw}:{dataset}")
    return scan


def _positive(value) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        value = float(value)
        if np.isfinite(value) and value > 0:
            return value
    return None


def _read_zspy(raw: Path, scan_shape, dataset) -> RawScan:
    from rsciio.zspy import file_reader

    # read-only: rosettasciio opens lazy ZSpy stores in "r+" mode by default
    signal = _read_lazy(file_reader, raw, "ZSpy", mode="r")
    axes = signal["axes"]
    navigate = [bool(axis.get("navigate")) for axis in axes]
    if len(axes) < 2 or any(navigate[-2:]) or not all(navigate[:-2]):
        names = [
            f"{axis.get('name')} ({'navigation' if nav else 'signal'})"
            for axis, nav in zip(axes, navigate, strict=True)
        ]
        raise StemstrainInputError(
            f"{raw}: expected scan (navigation) axes followed by two detector (signal) axes, found {names}"
        )
    scan = RawScan(_to_4d(signal["data"], scan_shape, str(raw)), "zspy", sources={"orientation": "file row order"})
    scan.k_sampling, scan.sources["k_sampling"] = _k_sampling_from_axes(axes, "ZSpy")
    if len(axes) == 4:
        scan.scan_step_nm, scan.sources["scan_step_nm"] = _scan_step_from_axes(axes, "ZSpy")
    tem = signal["metadata"].get("Acquisition_instrument", {}).get("TEM", {})
    energy_kV = _positive(tem.get("beam_energy"))
    if energy_kV is not None:
        scan.energy_eV = energy_kV * 1e3
        scan.sources["energy_eV"] = "metadata Acquisition_instrument.TEM.beam_energy [kV]"
    scan.semiangle_mrad = _positive(tem.get("convergence_angle"))
    if scan.semiangle_mrad is not None:
        scan.sources["semiangle_mrad"] = "metadata Acquisition_instrument.TEM.convergence_angle [mrad]"
    rotation = tem.get("scan_rotation")
    if rotation is not None:
        scan.sources["scan_rotation_deg"] = f"{rotation} in metadata Acquisition_instrument.TEM, not applied"
    return scan


@dataclass(frozen=True)
class Format:
    """A supported detector format: its suffixes and its lazy reader."""

    description: str
    suffixes: tuple[str, ...]
    reader: Callable[[Path, tuple[int, int] | None, str | None], RawScan]


FORMATS: dict[str, Format] = {
    "merlin": Format("Quantum Detectors Merlin .mib (+ .hdr)", (".mib",), _read_merlin),
    "arina": Format("Dectris ARINA NeXus master *_master.h5 (bitshuffle-LZ4)", (".h5", ".hdf5", ".nxs"), _read_arina),
    "empad": Format("EMPAD .xml (+ .raw)", (".xml",), _read_empad),
    "mrc": Format("Direct Electron DE-Server 4D .mrc (+ _info.txt)", (".mrc",), _read_mrc),
    "blockfile": Format("NanoMegas ASTAR blockfile .blo", (".blo",), _read_blockfile),
    "emd": Format("py4DSTEM / EMD 1.0 HDF5 DataCube", (".h5", ".hdf5", ".emd"), _read_emd),
    "npy": Format("plain numpy .npy array", (".npy",), _read_npy),
    "hdf5": Format("plain HDF5 file with one 3D/4D dataset", (".h5", ".hdf5"), _read_hdf5),
    "zspy": Format("HyperSpy/pyxem ZSpy .zspy (zarr directory or zip)", (".zspy",), _read_zspy),
}


DIRECTORY_FORMATS = ("zspy",)
"""Formats that may be a directory (a zarr directory store; ZSpy may also be one zip file)."""


def detect_format(raw: Path) -> str:
    """Format name of a detector file from its suffix and, for HDF5, its layout."""
    suffix = raw.suffix.lower()
    if suffix in (".h5", ".hdf5", ".emd", ".nxs"):
        import h5py

        try:
            with h5py.File(raw, "r") as handle:
                if "emd_group_type" in handle.attrs or "version_major" in handle.attrs:
                    return "emd"
                if "entry/data" in handle and any(name.startswith("data_") for name in handle["entry/data"]):
                    return "arina"
        except OSError as err:
            raise StemstrainInputError(f"{raw}: cannot be read as HDF5 ({err})") from None
        return "hdf5"
    for name, fmt in FORMATS.items():
        if suffix in fmt.suffixes:
            return name
    known = sorted({s for fmt in FORMATS.values() for s in fmt.suffixes})
    raise StemstrainInputError(
        f"{raw}: unknown detector file suffix '{raw.suffix}' (expected one of {known}); pass --format NAME"
    )


def read_raw(
    raw: str | Path, fmt: str | None = None, scan_shape: tuple[int, int] | None = None, dataset: str | None = None
) -> RawScan:
    """Open a detector file lazily as (scan_y, scan_x, k_y, k_x) patterns in our orientation.

    Parameters
    ----------
    raw : path
        Detector file (for EMPAD the ``.xml``, for ARINA the ``_master.h5``, for ZSpy the ``.zspy`` folder).
    fmt : str, optional
        Format name (key of :data:`FORMATS`); detected from the file when omitted.
    scan_shape : (int, int), optional
        Scan positions (scan_y, scan_x) for flat frame stacks or to override the file.
    dataset : str, optional
        Dataset path inside an HDF5 file (``hdf5`` and ``emd`` formats).

    Returns
    -------
    RawScan
        Close ``.resources`` when done.
    """
    raw = Path(raw)
    if not raw.exists():
        raise StemstrainInputError(f"{raw}: detector file not found")
    fmt = fmt or detect_format(raw)
    if fmt not in FORMATS:
        raise StemstrainInputError(f"--format {fmt}: unknown format (expected one of {sorted(FORMATS)})")
    if raw.is_dir() and fmt not in DIRECTORY_FORMATS:
        raise StemstrainInputError(f"{raw}: is a directory; format {fmt} expects a file")
    if scan_shape is not None and (len(scan_shape) != 2 or min(scan_shape) < 1):
        raise StemstrainInputError(f"--scan-shape: expected two positive integers Y X, found {scan_shape}")
    import dask

    # rosettasciio's "auto" chunks follow dask's chunk size: input chunks well below a block, so that
    # the input chunks a block touches add little to the block itself
    with dask.config.set({"array.chunk-size": f"{INPUT_CHUNK_BYTES}B"}):
        scan = FORMATS[fmt].reader(raw, None if scan_shape is None else tuple(int(n) for n in scan_shape), dataset)
    if scan.data.ndim != 4 or min(scan.data.shape) < 1:
        scan.resources.close()
        raise StemstrainInputError(f"{raw}: expected a non-empty 4D scan, found shape {scan.data.shape}")
    scan.sources.setdefault("orientation", "file row order")
    return scan


# ---------------------------------------------------------------- streaming


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
    total = np.zeros((n_ky, n_kx))
    blocks = list(iter_blocks(data.shape, chunks, data.dtype.itemsize, block_bytes))
    for block in _progress(blocks, "centre of mass", progress):
        total += _read_block(data, block, raw).sum(axis=(0, 1), dtype=np.float64)
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
    progress: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> Path:
    """Convert a detector file into a 4D-data Zarr store, streaming block by block.

    Parameters
    ----------
    raw : path
        Detector file (see :data:`FORMATS`).
    out : path
        Zarr store to write (contract of DESIGN.md).
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
    scan = read_raw(raw, fmt, scan_shape, dataset)
    with scan.resources:
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
        # fail on a truncated or damaged file before any output exists
        n_y, n_x = data.shape[:2]
        _read_block(data, (slice(n_y - 1, n_y), slice(n_x - 1, n_x)), raw)
        _read_block(data, (slice(0, 1), slice(0, 1)), raw)

        sources = dict(scan.sources)
        energy = energy_eV if energy_eV is not None else scan.energy_eV
        sources["energy_eV"] = "--energy-ev" if energy_eV is not None else sources.get("energy_eV")
        sampling = k_sampling if k_sampling is not None else scan.k_sampling
        sources["k_sampling"] = "--k-sampling" if k_sampling is not None else sources.get("k_sampling")
        semiangle = semiangle_mrad if semiangle_mrad is not None else scan.semiangle_mrad
        sources["semiangle_mrad"] = "--semiangle-mrad" if semiangle_mrad is not None else sources.get("semiangle_mrad")
        if scan_step_nm is not None:
            step, sources["scan_step_nm"] = (scan_step_nm, scan_step_nm), "--scan-step"
        elif scan.scan_step_nm is not None:
            step = scan.scan_step_nm
        else:
            step, sources["scan_step_nm"] = (1.0, 1.0), "default 1 nm (uncalibrated)"
        options = {
            "format": scan.format,
            "shape": list(data.shape),
            "chunks": list(chunks),
            "centre": centre,
            "energy_eV": energy,
            "semiangle_mrad": semiangle,
            "k_sampling": sampling,
            "step": list(step),
        }
        store = ResumableStore(out)
        fingerprint = _fingerprint(raw, options)
        fresh = store.started and _partial_fingerprint(store) != fingerprint

        centre_px = beam_centre(data, centre, raw, chunks, progress, block_bytes)
        template = make_4d_dataset(
            da.zeros(data.shape, dtype=dtype, chunks=(*chunks, *data.shape[2:])),
            step,
            sampling,
            energy,
            semiangle,
            source_file=raw.name,
            source_format=scan.format,
            orientation="k_y increases with the row index in the detector's file row order; k_x with the column",
            beam_centre_px=list(centre_px),
            beam_centre_method=centre,
            calibration_sources=json.dumps({k: v for k, v in sources.items() if v}),
            ingest_fingerprint=fingerprint,
        )
        template = template.assign_coords(
            k_y=("k_y", (np.arange(data.shape[2]) - centre_px[0]) * sampling, template["k_y"].attrs),
            k_x=("k_x", (np.arange(data.shape[3]) - centre_px[1]) * sampling, template["k_x"].attrs),
        )
        validate_4d(template, str(out))
        store.start(template, fresh=fresh)
        blocks = list(iter_blocks(data.shape, chunks, dtype.itemsize, block_bytes))
        try:
            for rows, cols in _progress(blocks, f"ingest {raw.name}", progress):
                key = f"{rows.start}_{cols.start}"
                if store.is_done(key):
                    continue
                values = _read_block(data, (rows, cols), raw)
                where = f" at scan rows {rows.start}-{rows.stop - 1}, columns {cols.start}-{cols.stop - 1}"
                check_counts(values, str(raw), "patterns", where)
                values = values.astype(dtype, copy=False)
                block = xr.Dataset({"data": (template["data"].dims, values)})
                store.write_region(block, {"scan_y": rows, "scan_x": cols}, key)
        except StemstrainInputError:
            # the input is bad: a resume would fail the same way, so leave nothing behind
            store.discard()
            raise
    return store.finalize()

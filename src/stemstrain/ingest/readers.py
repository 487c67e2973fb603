"""Detector files opened lazily as (scan_y, scan_x, k_y, k_x) patterns in our orientation.

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

"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

from stemstrain.errors import StemstrainInputError
from stemstrain.optics import electron_wavelength

BLOCK_BYTES = 64 * 2**20
"""Largest block of patterns read and written at once [bytes]: the memory bound of ingest."""

INPUT_CHUNK_BYTES = 4 * 2**20
"""Size of the lazy input chunks (dask ``array.chunk-size`` while a reader runs) [bytes]."""

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

"""`stemstrain ingest` on the real detector-format samples in ../shared/data/formats.

Each file goes through ingest and is compared with a direct read (rosettasciio eager or h5py) in our
orientation: the detector's file row order, k_y growing with the row index.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  bitshuffle-LZ4 for the ARINA data file
import numpy as np
import pytest
import xarray as xr
import zarr
from abtem.core.energy import energy2wavelength as electron_wavelength
from typer.testing import CliRunner

from stemstrain.cli import app
from stemstrain.errors import StemstrainInputError
from stemstrain.ingest import ingest
from stemstrain.io import open_4d

FORMATS = Path(__file__).parents[1] / ".." / "shared" / "data" / "formats"
OPTICS = {"energy_eV": 200e3, "semiangle_mrad": 1.5, "k_sampling": 0.02}

pytestmark = pytest.mark.skipif(not FORMATS.is_dir(), reason=f"detector samples not found at {FORMATS}")


@pytest.fixture(scope="module")
def merlin(tmp_path_factory) -> Path:
    """The three Merlin zips extracted into one folder."""
    folder = tmp_path_factory.mktemp("merlin")
    for archive in sorted((FORMATS / "quantumdetector_merlin").glob("*.zip")):
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(folder)
    return folder


def _rsciio(module: str, path: Path, **kwargs) -> np.ndarray:
    import importlib

    reader = importlib.import_module(f"rsciio.{module}").file_reader
    return np.asarray(reader(str(path), **kwargs)[0]["data"])


def _check_store(out: Path, expected: np.ndarray, dtype) -> xr.Dataset:
    ds = open_4d(out)
    assert ds["data"].dtype == dtype
    assert ds["data"].shape == expected.shape
    np.testing.assert_array_equal(ds["data"].values, expected.astype(dtype))
    assert ds["data"].dims == ("scan_y", "scan_x", "k_y", "k_x")
    return ds


def test_merlin_hot_pixel_lands_at_raw_row_and_column(merlin, tmp_path):
    mib = merlin / "002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib"
    out = ingest(mib, tmp_path / "m.zarr", **OPTICS)
    # rosettasciio flips rows; our convention keeps the file row order
    expected = np.flip(_rsciio("quantumdetector", mib), axis=-2)
    ds = _check_store(out, expected, np.uint16)
    for iy in range(2):
        for ix in range(4):
            pattern = ds["data"][iy, ix].values
            assert np.unravel_index(pattern.argmax(), pattern.shape) == (39, 52)
    k_y, k_x = ds["k_y"].values, ds["k_x"].values
    assert k_y[64] == 0 and k_x[128] == 0 and np.isclose(k_y[1] - k_y[0], 0.02)
    assert ds.attrs["energy_eV"] == 200e3 and ds.attrs["semiangle_mrad"] == 1.5


def test_merlin_and_its_py4dstem_conversion_give_the_same_store(merlin, tmp_path):
    from_mib = ingest(merlin / "001_4x2_6bit.mib", tmp_path / "mib.zarr", **OPTICS)
    from_h5 = ingest(FORMATS / "py4dstem" / "merlin_001_4x2_6bit_py4dstem.h5", tmp_path / "h5.zarr", **OPTICS)
    a, b = open_4d(from_mib), open_4d(from_h5)
    assert a["data"].shape == (2, 4, 256, 256)
    np.testing.assert_array_equal(a["data"].values, b["data"].values)
    assert a.attrs["source_format"] == "merlin" and b.attrs["source_format"] == "emd"


def test_merlin_24_bit_flat_stack_with_scan_shape(merlin, tmp_path):
    mib = merlin / "Single_9_Frame_CounterDepth_24_Rows_256.mib"
    out = ingest(mib, tmp_path / "m24.zarr", scan_shape=(3, 3), chunks=(2, 2), **OPTICS)
    expected = np.flip(_rsciio("quantumdetector", mib), axis=-2).reshape(3, 3, 256, 256)
    _check_store(out, expected, np.float32)


def test_merlin_raw_mode_is_refused(merlin, tmp_path):
    with pytest.raises(StemstrainInputError, match="RAW"):
        ingest(merlin / "Single_9_Frame_CounterDepth_1_Rows_256RAW.mib", tmp_path / "r.zarr", **OPTICS)
    assert not list(tmp_path.iterdir())


def test_arina_bitshuffle_lz4_with_metadata(tmp_path):
    master = FORMATS / "dectris_arina" / "test_00_master.h5"
    out = ingest(master, tmp_path / "a.zarr", semiangle_mrad=1.0, k_sampling=0.01)
    with h5py.File(master) as handle:
        expected = handle["entry/data/data_000001"][()].reshape(4, 4, 192, 192)
    ds = _check_store(out, expected, np.float32)
    assert ds.attrs["energy_eV"] == 300e3  # ARINA photon_energy
    assert np.isclose(ds["scan_x"].values[1], 0.13915206)  # test_00.h5 STEM Metadata/Pixel Size [nm]


def test_arina_written_here_with_nonzero_counts_and_pixel_mask(tmp_path):
    """The shared ARINA sample is all zeros: decode real counts from a master + bslz4 data file made here."""
    rng = np.random.default_rng(0)
    frames = rng.poisson(3.0, size=(6, 24, 20)).astype(np.uint32)
    mask = np.zeros((24, 20), np.uint32)
    mask[5, 7] = 1
    with h5py.File(tmp_path / "scan_data_000001.h5", "w") as data:
        data.create_dataset("entry/data/data", data=frames, chunks=(1, 24, 20), **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(tmp_path / "scan_master.h5", "w") as master:
        master["entry/data/data_000001"] = h5py.ExternalLink("scan_data_000001.h5", "/entry/data/data")
        master["entry/instrument/detector/detectorSpecific/pixel_mask"] = mask
        master["entry/instrument/detector/detectorSpecific/photon_energy"] = 80e3
    out = ingest(tmp_path / "scan_master.h5", tmp_path / "a.zarr", scan_shape=(2, 3), semiangle_mrad=2, k_sampling=0.03)
    expected = frames.reshape(2, 3, 24, 20).astype(np.float32)
    expected[..., 5, 7] = 0
    ds = _check_store(out, expected, np.float32)
    assert ds.attrs["energy_eV"] == 80e3


def test_empad_map_and_series(tmp_path):
    xml = FORMATS / "empad" / "map4x4.xml"
    ds = _check_store(ingest(xml, tmp_path / "e.zarr", semiangle_mrad=1.0), _rsciio("empad", xml), np.float32)
    assert ds.attrs["energy_eV"] == 300e3
    # 0.429 mrad per pixel at 300 kV
    expected_k = 0.00042906574394463665 / electron_wavelength(300e3)
    assert np.isclose(float(ds["k_x"][1] - ds["k_x"][0]), expected_k, rtol=1e-9)
    assert np.isclose(expected_k, 0.02179, rtol=1e-3)

    series = FORMATS / "empad" / "stack_images.xml"
    out = ingest(series, tmp_path / "s.zarr", scan_shape=(2, 5), **OPTICS)
    _check_store(out, _rsciio("empad", series).reshape(2, 5, 128, 128), np.float32)


def test_direct_electron_mrc(tmp_path):
    mrc = FORMATS / "directelectron_mrc" / "20241021_00405_movie.mrc"
    out = ingest(mrc, tmp_path / "d.zarr", semiangle_mrad=1.0, k_sampling=0.01)
    ds = _check_store(out, _rsciio("mrc", mrc), np.uint16)
    assert ds["data"].shape == (4, 8, 4, 8)
    assert ds.attrs["energy_eV"] == 300e3  # _info.txt accelerating voltage
    assert np.isclose(ds["scan_y"].values[1], 0.2) and np.isclose(ds["scan_x"].values[1], 0.1)


def test_nanomegas_blockfile(tmp_path):
    blo = FORMATS / "nanomegas_blockfile" / "test1.blo"
    out = ingest(blo, tmp_path / "b.zarr", semiangle_mrad=1.0, k_sampling=0.01, chunks=(2, 1))
    ds = _check_store(out, _rsciio("blockfile", blo), np.uint16)
    assert ds.attrs["energy_eV"] == 200e3
    assert np.isclose(ds["scan_x"].values[1], 12.8)


def test_py4dstem_calibration_is_read(tmp_path):
    h5 = FORMATS / "py4dstem" / "real_py4dstem.h5"
    out = ingest(h5, tmp_path / "p.zarr", energy_eV=300e3, semiangle_mrad=1.0)
    ds = _check_store(out, np.arange(64, dtype=np.float32).reshape(2, 2, 4, 4), np.float32)
    assert np.allclose(np.diff(ds["k_x"].values), 0.0125)
    assert np.allclose(ds["scan_x"].values, [0.0, 0.25])  # 2.5 angstrom


def test_plain_npy_and_hdf5(tmp_path):
    patterns = np.random.default_rng(1).integers(0, 1000, size=(3, 5, 12, 10)).astype(np.uint16)
    np.save(tmp_path / "scan.npy", patterns)
    _check_store(ingest(tmp_path / "scan.npy", tmp_path / "n.zarr", chunks=(2, 2), **OPTICS), patterns, np.uint16)
    with h5py.File(tmp_path / "scan.h5", "w") as handle:
        handle.create_dataset("frames", data=patterns.reshape(15, 12, 10).astype(np.float64), chunks=(4, 12, 10))
    out = ingest(tmp_path / "scan.h5", tmp_path / "h.zarr", scan_shape=(3, 5), **OPTICS)
    _check_store(out, patterns, np.float32)


def test_a_vacuum_probe_is_stored_for_the_templates_and_a_wrong_one_is_named(tmp_path):
    """``--probe`` stores the mean of a .npy stack or of a vacuum scan's frames as the variable probe,
    which the detectors' template then takes; a probe of another shape names the option, both
    shapes, and leaves no store."""
    from stemstrain.detect.bragg import probe_template

    rng = np.random.default_rng(4)
    patterns = rng.integers(0, 1000, size=(2, 3, 12, 10)).astype(np.uint16)
    np.save(tmp_path / "scan.npy", patterns)
    y, x = np.indices((12, 10))
    disk = np.where(np.hypot(y - 6, x - 5) <= 3, 500.0, 0.0)
    np.save(tmp_path / "probe.npy", np.stack([disk - 10, disk + 10]))
    ds = open_4d(ingest(tmp_path / "scan.npy", tmp_path / "a.zarr", probe=tmp_path / "probe.npy", **OPTICS))
    np.testing.assert_allclose(ds["probe"].values, disk)
    assert probe_template(ds)[1] == "probe"
    with h5py.File(tmp_path / "vacuum.h5", "w") as handle:
        handle.create_dataset("frames", data=np.stack([[disk, 3 * disk]]))  # one row of two frames
    result = CliRunner().invoke(
        app,
        ["ingest", str(tmp_path / "scan.npy"), str(tmp_path / "b.zarr"), "--probe", str(tmp_path / "vacuum.h5")]
        + ["--energy-ev", "200e3", "--semiangle-mrad", "1.5", "--k-sampling", "0.02"],
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(open_4d(tmp_path / "b.zarr")["probe"].values, 2 * disk)
    np.save(tmp_path / "binned.npy", disk[::2])
    with pytest.raises(StemstrainInputError, match=r"--probe .*binned\.npy: image of shape \(6, 10\).*\(12, 10\)"):
        ingest(tmp_path / "scan.npy", tmp_path / "c.zarr", probe=tmp_path / "binned.npy", **OPTICS)
    assert not (tmp_path / "c.zarr").exists()


def test_centre_of_mass_defines_k_zero(tmp_path):
    patterns = np.zeros((2, 3, 16, 20), np.float32)
    patterns[..., 5, 12] = 10.0
    patterns[..., 6, 12] = 10.0  # centre of mass at row 5.5, column 12
    np.save(tmp_path / "spot.npy", patterns)
    ds = open_4d(ingest(tmp_path / "spot.npy", tmp_path / "c.zarr", centre="com", **OPTICS))
    assert np.isclose(np.interp(0.0, ds["k_y"].values, np.arange(16)), 5.5)
    assert np.isclose(np.interp(0.0, ds["k_x"].values, np.arange(20)), 12.0)
    assert ds.attrs["beam_centre_px"] == [5.5, 12.0]


def test_missing_calibration_lists_every_flag(merlin, tmp_path):
    result = CliRunner().invoke(app, ["ingest", str(merlin / "001_4x2_6bit.mib"), str(tmp_path / "x.zarr")])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    for flag in ("--energy-ev", "--semiangle-mrad", "--k-sampling"):
        assert flag in message
    assert not (tmp_path / "x.zarr").exists()


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _copy(paths: list[Path], folder: Path) -> None:
    for path in paths:
        shutil.copy(path, folder / path.name)


def _damaged_samples(merlin: Path, folder: Path):
    """(file to ingest, options, expected error fragment) for damaged copies of real samples."""
    _copy([merlin / "001_4x2_6bit.mib", merlin / "001_4x2_6bit.hdr"], folder)
    _truncate(folder / "001_4x2_6bit.mib", 0.6)
    yield folder / "001_4x2_6bit.mib", {}, "truncated"

    _copy([FORMATS / "empad" / "map4x4.xml", FORMATS / "empad" / "scan_x4_y4.raw"], folder)
    _truncate(folder / "scan_x4_y4.raw", 0.5)
    yield folder / "map4x4.xml", {}, "truncated EMPAD"

    _copy([FORMATS / "nanomegas_blockfile" / "test1.blo"], folder)
    _truncate(folder / "test1.blo", 0.7)
    yield folder / "test1.blo", {}, "truncated"

    _copy([FORMATS / "directelectron_mrc" / f"20241021_00405_{part}" for part in ("movie.mrc", "info.txt")], folder)
    _truncate(folder / "20241021_00405_movie.mrc", 0.5)
    yield folder / "20241021_00405_movie.mrc", {}, "truncated MRC"

    _copy([FORMATS / "py4dstem" / "merlin_001_4x2_6bit_py4dstem.h5"], folder)
    _truncate(folder / "merlin_001_4x2_6bit_py4dstem.h5", 0.5)
    yield folder / "merlin_001_4x2_6bit_py4dstem.h5", {}, "HDF5"

    arina = folder / "arina"
    arina.mkdir()
    _copy(sorted((FORMATS / "dectris_arina").glob("*.h5")), arina)
    data = bytearray((arina / "test_00_data_000001.h5").read_bytes())
    data[-6000:-200] = bytes(5800)  # zero the compressed frames at the end of the data file
    (arina / "test_00_data_000001.h5").write_bytes(bytes(data))
    yield arina / "test_00_master.h5", {}, "unreadable data"

    np.save(folder / "flat.npy", np.ones((4, 4, 8, 8), np.uint16))
    _truncate(folder / "flat.npy", 0.9)
    yield folder / "flat.npy", {}, "truncated"


def test_damaged_files_give_a_clear_error_and_no_store(merlin, tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    outputs = tmp_path / "out"
    for number, (raw, options, fragment) in enumerate(_damaged_samples(merlin, samples)):
        out = outputs / f"o{number}.zarr"
        with pytest.raises(StemstrainInputError, match=fragment) as caught:
            ingest(raw, out, energy_eV=2e5, semiangle_mrad=1, k_sampling=0.01, **options)
        assert str(raw.name) in str(caught.value)
        assert not outputs.exists() or not list(outputs.iterdir()), f"{raw.name} left {list(outputs.iterdir())}"


def test_large_file_streams_in_bounded_memory(tmp_path):
    """A 256 MB .npy goes through with far less memory than the file (counted by tracemalloc)."""
    import tracemalloc

    shape = (64, 128, 128, 128)
    patterns = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint16, shape=shape)
    for row in range(shape[0]):
        patterns[row] = (row * 7 + np.arange(128, dtype=np.uint16)) % 1000
    patterns.flush()
    del patterns
    file_bytes = (tmp_path / "big.npy").stat().st_size
    tracemalloc.start()
    try:
        out = ingest(tmp_path / "big.npy", tmp_path / "big.zarr", chunks=(8, 8), block_bytes=8 * 2**20, **OPTICS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # measured: peak about 4 blocks (read, concatenation, Zarr encoding), 33 MiB here
    assert peak < file_bytes / 5, f"peak {peak / 2**20:.0f} MiB for a {file_bytes / 2**20:.0f} MiB file"
    stored = open_4d(out)["data"]
    assert stored.shape == shape
    np.testing.assert_array_equal(stored[63, 127].values, (63 * 7 + np.arange(128)) % 1000 * np.ones((128, 1)))


def test_killed_ingest_resumes_from_finished_blocks(tmp_path):
    """SIGKILL mid-write leaves only <out>.partial; the next run finishes it and equals the file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    shape = (16, 16, 64, 64)
    patterns = np.lib.format.open_memmap(tmp_path / "scan.npy", mode="w+", dtype=np.float32, shape=shape)
    patterns[:] = np.random.default_rng(2).random(shape, dtype=np.float32)
    patterns.flush()
    out = tmp_path / "scan.zarr"
    markers = tmp_path / "scan.zarr.partial.done"
    script = (
        "from stemstrain.ingest import ingest;"
        f"ingest({str(tmp_path / 'scan.npy')!r}, {str(out)!r}, chunks=(1, 4), block_bytes=1, "
        "energy_eV=2e5, semiangle_mrad=1.5, k_sampling=0.02)"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if markers.is_dir() and len(list(markers.iterdir())) >= 5:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "ingest finished before it could be killed"
    finished = len(list(markers.iterdir()))
    assert not out.exists() and 5 <= finished < 64
    ingest(tmp_path / "scan.npy", out, chunks=(1, 4), block_bytes=1, **OPTICS)
    assert out.exists() and not markers.exists()
    np.testing.assert_array_equal(open_4d(out)["data"].values, np.load(tmp_path / "scan.npy"))


# ---------------------------------------------------------------- ZSpy: the real MgO SPED scan

MGO = FORMATS.parent / "experimental" / "mgo_nanocubes_sped" / "mgo_nanoparticles.zspy"
MGO_ARRAY = "Experiments/MgO Nano-Crystals/data"
MGO_CROP = (slice(86, 92), slice(0, 5))  # scan rows 86-91, columns 0-4: vacuum (0-3) and the nanocube edge
needs_mgo = pytest.mark.skipif(not MGO.is_dir(), reason=f"MgO SPED data not found at {MGO}")


def _write_zspy_crop(path: Path, crop: tuple[slice, slice], drop_semiangle: bool = False) -> Path:
    """A cropped copy of the MgO ZSpy: its metadata files, its data cropped, scan axes adjusted.

    Written with zarr directly (zarr v2 format, as HyperSpy writes it): rosettasciio 0.15's ZSpy
    writer needs zarr 2 (``NestedDirectoryStore``), its reader works with zarr 3.
    """
    for meta in MGO.rglob(".z*"):
        if meta.name != ".zarray":
            target = path / meta.relative_to(MGO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(meta.read_bytes())
    source = zarr.open_array(str(MGO / MGO_ARRAY), mode="r")
    values = np.asarray(source[crop])
    target = zarr.create_array(
        str(path / MGO_ARRAY),
        shape=values.shape,
        chunks=(2, 2, *values.shape[2:]),
        dtype=values.dtype,
        zarr_format=2,
        compressors=source.compressors,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    target[:] = values
    signal = path / MGO_ARRAY.rsplit("/", 1)[0]
    for index, part in enumerate(crop):
        attrs_file = signal / f"axis-{index}" / ".zattrs"
        axis = json.loads(attrs_file.read_text())
        axis["offset"] += part.start * axis["scale"]
        axis["size"] = part.stop - part.start
        attrs_file.write_text(json.dumps(axis))
    if drop_semiangle:
        attrs_file = signal / "metadata" / "Acquisition_instrument" / "TEM" / ".zattrs"
        tem = json.loads(attrs_file.read_text())
        del tem["convergence_angle"]
        attrs_file.write_text(json.dumps(tem))
    return path


@needs_mgo
def test_zspy_real_mgo_slice_is_calibrated_from_the_file(tmp_path):
    raw = _write_zspy_crop(tmp_path / "mgo_crop.zspy", MGO_CROP)
    result = CliRunner().invoke(app, ["ingest", str(raw), str(tmp_path / "mgo.zarr")])
    assert result.exit_code == 0, result.output
    expected = np.asarray(zarr.open_array(str(MGO / MGO_ARRAY), mode="r")[MGO_CROP])
    ds = _check_store(tmp_path / "mgo.zarr", expected, np.float32)
    assert ds.attrs["source_format"] == "zspy"
    assert ds.attrs["energy_eV"] == 300e3 and ds.attrs["semiangle_mrad"] == 0.7
    k_y, k_x = ds["k_y"].values, ds["k_x"].values
    assert k_y[72] == 0 and k_x[72] == 0  # the file's axes: offset -72 x scale
    assert np.allclose(np.diff(k_y), 0.03246) and np.allclose(np.diff(k_x), 0.03246)
    assert np.allclose(np.diff(ds["scan_y"].values), 3.03) and np.allclose(np.diff(ds["scan_x"].values), 3.03)
    sources = json.loads(ds.attrs["calibration_sources"])
    assert "convergence_angle" in sources["semiangle_mrad"] and "ZSpy" in sources["k_sampling"]
    assert "277" in sources["scan_rotation_deg"]
    # the undiffracted beam (saturated at 1020 counts in vacuum) sits on k = 0 within half a pixel
    vacuum = ds["data"][:, :4].values.mean(axis=(0, 1))
    disk = vacuum > 0.5 * vacuum.max()
    rows, cols = np.indices(vacuum.shape)
    centre = ((rows * vacuum)[disk].sum() / vacuum[disk].sum(), (cols * vacuum)[disk].sum() / vacuum[disk].sum())
    assert np.allclose(centre, (72, 72), atol=0.5)


@needs_mgo
def test_zspy_zip_store_gives_the_same_store(tmp_path):
    """pyxem ships its data sets as ZSpy zip files (zarr ZipStore): same store as the directory."""
    folder = _write_zspy_crop(tmp_path / "crop.zspy", (slice(0, 2), slice(0, 3)))
    with zipfile.ZipFile(tmp_path / "zipped.zspy", "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    a = open_4d(ingest(folder, tmp_path / "a.zarr"))
    b = open_4d(ingest(tmp_path / "zipped.zspy", tmp_path / "b.zarr"))
    np.testing.assert_array_equal(a["data"].values, b["data"].values)
    assert a.attrs["semiangle_mrad"] == b.attrs["semiangle_mrad"] == 0.7
    np.testing.assert_array_equal(a["k_x"].values, b["k_x"].values)


@needs_mgo
def test_zspy_options_win_and_a_missing_semiangle_is_named(tmp_path):
    raw = _write_zspy_crop(tmp_path / "no_alpha.zspy", (slice(0, 2), slice(0, 3)), drop_semiangle=True)
    with pytest.raises(StemstrainInputError, match="semiangle-mrad") as error:
        ingest(raw, tmp_path / "x.zarr")
    assert "--energy-ev" not in str(error.value) and "--k-sampling" not in str(error.value)
    assert not (tmp_path / "x.zarr").exists()
    ds = open_4d(ingest(raw, tmp_path / "y.zarr", semiangle_mrad=1.0, energy_eV=200e3, k_sampling=0.03))
    assert ds.attrs["semiangle_mrad"] == 1.0 and ds.attrs["energy_eV"] == 200e3
    assert np.isclose(ds["k_x"].values[1] - ds["k_x"].values[0], 0.03)

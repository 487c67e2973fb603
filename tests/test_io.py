"""The strain-map and 4D-data contracts, and atomic writes."""

import numpy as np
import pytest
import xarray as xr

from stemstrain.errors import StemstrainInputError
from stemstrain.io import (
    ResumableStore,
    atomic_output,
    discard_temporaries,
    make_4d_dataset,
    open_4d,
    validate_4d,
)


def test_strain_map_reopens_with_plain_xarray(strain_map_factory):
    path = strain_map_factory(reference_roi=[0, 6, 0, 2], g1=[0.26, 0.0], g2=[0.0, 0.18])
    ds = xr.open_zarr(path)
    assert set(ds.data_vars) >= {"e_xx", "e_yy", "e_xy", "theta", "fit_error", "n_peaks", "mask"}
    for name in ("e_xx", "e_yy", "e_xy", "theta", "fit_error", "n_peaks", "mask"):
        assert ds[name].dims == ("scan_y", "scan_x")
        assert ds[name].attrs["long_name"]
    assert ds["e_xx"].attrs["units"] == "1" and ds["theta"].attrs["units"] == "rad"
    assert ds["fit_error"].attrs["units"] == "1/angstrom"
    assert ds["scan_x"].attrs["units"] == "nm" and ds["scan_y"].attrs["units"] == "nm"
    assert ds.attrs["reference_roi"] == [0, 6, 0, 2] and ds.attrs["method"] == "test"
    assert "software_version" in ds.attrs
    assert ds["mask"].dtype == bool


def test_atomic_output_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def scan(n_y=4, n_x=5, pixels=16):
    data = np.random.default_rng(0).poisson(5.0, size=(n_y, n_x, pixels, pixels)).astype(np.float32)
    return make_4d_dataset(data, 0.5, 0.025, 200e3, 1.5, material="Si", reference_roi=(0, 2, 0, 2))


def test_discard_temporaries_removes_only_the_files_own_leftovers(tmp_path):
    target = tmp_path / "steps.csv"
    target.write_text("step\n1\n")
    (tmp_path / ".steps.csv.tmp-0badf00d").write_text("step\n")  # a writer killed mid-rename
    (tmp_path / ".metrics.csv.tmp-0badf00d").write_text("x")  # another file's: not ours to touch
    (tmp_path / ".steps.csv.tmp-1badf00d").mkdir()
    removed = discard_temporaries(target)
    assert sorted(path.name for path in removed) == [".steps.csv.tmp-0badf00d", ".steps.csv.tmp-1badf00d"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".metrics.csv.tmp-0badf00d", "steps.csv"]
    assert target.read_text() == "step\n1\n"
    assert discard_temporaries(tmp_path / "missing-dir" / "x.csv") == []


def test_4d_contract_round_trip(tmp_path):
    ds = scan()
    ds.to_zarr(tmp_path / "scan.zarr")
    opened = open_4d(tmp_path / "scan.zarr")
    assert opened["data"].dims == ("scan_y", "scan_x", "k_y", "k_x")
    assert opened["k_x"].values[8] == 0.0 and opened["k_x"].attrs["units"] == "1/angstrom"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda ds: ds.rename({"data": "frames"}), "variable 'data' is missing"),
        (lambda ds: ds.transpose("k_y", "k_x", "scan_y", "scan_x"), "has dims"),
        (lambda ds: ds.drop_vars("k_x"), "coordinate 'k_x' is missing"),
        (lambda ds: ds.assign_coords(k_y=("k_y", ds.k_y.values)), "has no 'units'"),
        (lambda ds: ds.assign_attrs(energy_eV=None), "energy_eV"),
        (lambda ds: ds.assign_attrs(reference_roi=[0, 9, 0, 2]), "reference_roi"),
        (lambda ds: ds.isel(scan_y=slice(0, 0)), "empty"),
    ],
)
def test_4d_contract_violations_name_the_problem(damage, message):
    with pytest.raises(StemstrainInputError, match=message):
        validate_4d(damage(scan()), "scan.zarr")


def test_resumable_store_keeps_finished_chunks(tmp_path):
    ds = scan().chunk({"scan_y": 2, "scan_x": 5})
    store = ResumableStore(tmp_path / "out.zarr")
    store.start(ds)
    store.write_region(ds.isel(scan_y=slice(0, 2)).drop_vars(["k_y", "k_x", "scan_x"]), {"scan_y": slice(0, 2)}, "0")
    # a new run finds the finished chunk and does not recreate the store
    again = ResumableStore(tmp_path / "out.zarr")
    again.start(ds)
    assert again.is_done("0") and not again.is_done("1")
    again.write_region(ds.isel(scan_y=slice(2, 4)).drop_vars(["k_y", "k_x", "scan_x"]), {"scan_y": slice(2, 4)}, "1")
    again.finalize()
    assert not again.partial.exists() and not again.markers.exists()
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "out.zarr")["data"].values, ds["data"].values)

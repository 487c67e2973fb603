"""Concurrent runs writing to different outputs in one folder do not interfere.

The session fixture simulated ``train_a.zarr`` and ``train_b.zarr`` with two `simulate`
processes at the same time (next to a `simulate-scan`), then trained and ran `strain` at the
same time; concurrent `strain` runs on one scan are in test_kill_resume.py.
"""

from __future__ import annotations

from reltools import arrays_equal


def test_concurrent_simulate_runs_give_identical_stores(artifacts):
    arrays_equal(artifacts.training_set, artifacts.training_set_concurrent)
    names = sorted(p.name for p in artifacts.training_set.parent.iterdir())
    assert not [name for name in names if ".tmp-" in name or ".partial" in name], names


def test_concurrent_train_and_strain_finished_their_outputs(artifacts):
    assert (artifacts.ckpt_dir / "model.pt").is_file()
    assert sorted(p.name for p in artifacts.ckpt_dir.iterdir() if ".tmp-" in p.name) == []
    import xarray as xr

    strain = xr.open_zarr(artifacts.strain_map)
    assert strain["mask"].values.all()
    assert strain.attrs["method"] == "peaks"

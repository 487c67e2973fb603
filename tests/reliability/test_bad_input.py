"""Bad input to every command: one clear error line, exit code 2, no traceback, nothing left behind.

Each case builds a damaged copy of what the real commands wrote (or a bad option or config) and
names what the error line must mention: the file, variable or option and the problem. The cases
selected for a session run as subprocesses two at a time (``matrix`` fixture); each test then
checks its own result. Damaged detector files of every format are covered in tests/test_ingest.py.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_CONFIG, Artifacts
from reltools import assert_clean_failure, copy_store, delete_chunk, rewrite, run_cli, set_values, truncate_chunk
from reltools import write_config as _write_config


@dataclass
class Case:
    args: list
    fragments: tuple[str, ...]
    outputs: tuple[Path, ...]
    env: dict = field(default_factory=dict)  # extra environment of the command


CASES: dict[str, Callable[[Artifacts, Path], Case]] = {}


def case(name: str):
    def register(build):
        CASES[name] = build
        return build

    return register


def config(tmp: Path, **changes) -> Path:
    return _write_config(TINY_CONFIG, tmp / "config.yaml", **changes)


def not_zarr(tmp: Path) -> Path:
    folder = tmp / "notes.zarr"
    folder.mkdir()
    (folder / "README").write_text("not a store")
    return folder


def parent_is_file(tmp: Path, name: str) -> Path:
    (tmp / "file").write_text("")
    return tmp / "file" / name


# ---------------------------------------------------------------- simulate


def simulate_case(fragments, **changes):
    def build(a: Artifacts, tmp: Path) -> Case:
        return Case(["simulate", config(tmp, **changes), tmp / "train.zarr"], fragments, (tmp / "train.zarr",))

    return build


CASES["simulate/missing-config"] = lambda a, tmp: Case(
    ["simulate", tmp / "absent.yaml", tmp / "t.zarr"], ("absent.yaml", "not found"), (tmp / "t.zarr",)
)


@case("simulate/config-not-yaml")
def _(a, tmp):
    (tmp / "broken.yaml").write_text("simulate: [1, 2\n")
    return Case(["simulate", tmp / "broken.yaml", tmp / "t.zarr"], ("broken.yaml", "YAML"), (tmp / "t.zarr",))


CASES["simulate/unknown-option"] = simulate_case(("simulate.colour",), simulate__colour="red")
CASES["simulate/unknown-crystal"] = simulate_case(("Ge_110",), simulate__crystals=["Ge_110"])
CASES["simulate/negative-thickness"] = simulate_case(("thicknesses_nm",), simulate__thicknesses_nm=[4.0, -1.0])
CASES["simulate/zero-samples"] = simulate_case(("simulate.n_samples",), simulate__n_samples=0)
CASES["simulate/text-for-number"] = simulate_case(("simulate.chunk_size",), simulate__chunk_size="many")
CASES["simulate/infinite-k-sampling"] = simulate_case(("detector.k_sampling",), detector__k_sampling=float("inf"))
CASES["simulate/nan-strain-max"] = simulate_case(("simulate.strain_max",), simulate__strain_max=float("nan"))
CASES["simulate/detector-beyond-sampling"] = simulate_case(("sampling_angstrom",), simulate__sampling_angstrom=0.5)
CASES["simulate/unknown-cluster"] = simulate_case(("simulate.cluster.kind",), simulate__cluster__kind="k8s")


@case("simulate/output-under-a-file")
def _(a, tmp):
    out = parent_is_file(tmp, "train.zarr")
    return Case(["simulate", a.config, out], (str(out.parent),), (out,))


# ---------------------------------------------------------------- simulate-scan


def scan_case(fragments, *options, **changes):
    def build(a: Artifacts, tmp: Path) -> Case:
        outputs = (tmp / "scan.zarr", tmp / "truth.zarr")
        return Case(["simulate-scan", config(tmp, **changes), *outputs, *options], fragments, outputs)

    return build


CASES["simulate-scan/unknown-scan-name"] = scan_case(("'nope'", "scans"), "--scan", "nope")
CASES["simulate-scan/no-scans"] = scan_case(("scans",), scans=[])
CASES["simulate-scan/reference-outside-scan"] = scan_case(("reference_roi",), scans__0__reference_roi=[0, 4, 3, 9])
CASES["simulate-scan/empty-scan"] = scan_case(("scan_shape",), scans__0__scan_shape=[0, 4])
CASES["simulate-scan/nan-amplitude"] = scan_case(("amplitude",), scans__0__amplitude=float("nan"))
CASES["simulate-scan/unphysical-amplitude"] = scan_case(("amplitude",), scans__0__amplitude=5.0)
CASES["simulate-scan/negative-dose"] = scan_case(("scans.0.dose",), scans__0__dose=-1.0)
CASES["simulate-scan/unknown-field"] = scan_case(("scans.0.field",), scans__0__field="wave")
CASES["simulate-scan/unknown-crystal"] = scan_case(("Ge_110",), scans__0__crystal="Ge_110")


# ---------------------------------------------------------------- train


def train_case(change=None, fragments=(), damage=None, **changes):
    """Train on a damaged copy of the training set (``change`` of the dataset or ``damage`` of the files)."""

    def build(a: Artifacts, tmp: Path) -> Case:
        data = tmp / "data.zarr"
        if change is not None:
            rewrite(a.training_set, data, change, {"sample": 2})
        else:
            copy_store(a.training_set, data)
        if damage is not None:
            damage(data)
        settings = config(tmp, **changes) if changes else a.config
        named = ("data.zarr",) if change is not None or damage is not None else ()
        return Case(["train", settings, data, tmp / "ckpt"], (*named, *fragments), (tmp / "ckpt",))

    return build


CASES["train/missing-data"] = lambda a, tmp: Case(
    ["train", a.config, tmp / "absent.zarr", tmp / "ckpt"], ("absent.zarr", "not found"), (tmp / "ckpt",)
)
CASES["train/not-a-store"] = lambda a, tmp: Case(
    ["train", a.config, not_zarr(tmp), tmp / "ckpt"], ("notes.zarr",), (tmp / "ckpt",)
)
CASES["train/inputs-2d"] = train_case(lambda ds: ds.assign(inputs=ds["inputs"].isel(k_x=0)), ("'inputs'", "shape"))
CASES["train/no-targets"] = train_case(lambda ds: ds.drop_vars("targets"), ("'targets'", "missing"))
CASES["train/text-inputs"] = train_case(lambda ds: ds.assign(inputs=ds["inputs"].astype(str)), ("'inputs'", "dtype"))
CASES["train/nan-inputs"] = train_case(set_values("inputs", (3, 5, 5), np.nan), ("'inputs'", "NaN"))
CASES["train/inf-targets"] = train_case(set_values("targets", (2, 7, 7), np.inf), ("'targets'", "inf"))
CASES["train/negative-counts"] = train_case(set_values("inputs", (4,), lambda v: -v), ("'inputs'", "negative"))
CASES["train/one-pattern"] = train_case(lambda ds: ds.isel(sample=slice(0, 1)), ("at least 2",))
CASES["train/truncated-chunk"] = train_case(
    lambda ds: ds, ("'inputs'", "chunk"), damage=lambda p: truncate_chunk(p, "inputs", which=1)
)
CASES["train/deleted-chunk"] = train_case(
    lambda ds: ds, ("'inputs'", "NaN"), damage=lambda p: delete_chunk(p, "inputs", which=1)
)
CASES["train/detector-mismatch"] = train_case(fragments=("detector.pixels",), detector__pixels=128)
CASES["train/negative-learning-rate"] = train_case(fragments=("train.lr",), train__lr=-1.0)
CASES["train/fp16-on-cpu"] = train_case(fragments=("fp16",), train__precision="fp16")


# ---------------------------------------------------------------- strain


def strain_case(change=None, fragments=(), *options, damage=None, name="scan.zarr"):
    """`strain` of a damaged copy of the 2 x 2-chunked simulated scan, with extra options."""

    def build(a: Artifacts, tmp: Path) -> Case:
        scan = tmp / name
        if change is not None:
            rewrite(a.scan_chunked, scan, change, {"scan_y": 2, "scan_x": 2})
        else:
            copy_store(a.scan_chunked, scan)
        if damage is not None:
            damage(scan)
        out = tmp / "strain.zarr"
        args = ["strain", scan, out, "--no-progress", *options]
        if "--method" not in options:
            args += ["--method", "peaks"]
        return Case(args, fragments, (out,))

    return build


def _drop_units(name):
    def change(ds):
        ds[name].attrs.pop("units")
        return ds

    return change


def _attr(name, value):
    def change(ds):
        if value is None:
            ds.attrs.pop(name)
        else:
            ds.attrs[name] = value
        return ds

    return change


def _corrupt_root_metadata(store: Path) -> None:
    (store / "zarr.json").write_text("{ this is not json")


CASES["strain/missing-scan"] = lambda a, tmp: Case(
    ["strain", tmp / "absent.zarr", tmp / "s.zarr", "--method", "peaks"],
    ("absent.zarr", "not found"),
    (tmp / "s.zarr",),
)
CASES["strain/not-a-store"] = lambda a, tmp: Case(
    ["strain", not_zarr(tmp), tmp / "s.zarr", "--method", "peaks"], ("notes.zarr",), (tmp / "s.zarr",)
)
CASES["strain/corrupt-metadata"] = strain_case(None, ("scan.zarr",), damage=_corrupt_root_metadata)
CASES["strain/no-data-variable"] = strain_case(lambda ds: ds.drop_vars("data"), ("scan.zarr", "'data'", "missing"))
CASES["strain/transposed-dims"] = strain_case(
    lambda ds: ds.assign(data=ds["data"].transpose("k_y", "k_x", "scan_y", "scan_x")), ("'data'", "dims")
)
CASES["strain/3d-data"] = strain_case(lambda ds: ds.assign(data=ds["data"].sum("k_x")), ("'data'", "dims"))
CASES["strain/complex-data"] = strain_case(
    lambda ds: ds.assign(data=ds["data"].astype(np.complex64)), ("'data'", "complex64")
)
CASES["strain/bool-data"] = strain_case(lambda ds: ds.assign(data=ds["data"] > 1), ("'data'", "bool"))
CASES["strain/nan-pixel"] = strain_case(set_values("data", (2, 3, 10, 10), np.nan), ("scan.zarr", "'data'", "NaN"))
CASES["strain/inf-pixel"] = strain_case(set_values("data", (3, 2, 5, 5), np.inf), ("scan.zarr", "'data'", "inf"))
CASES["strain/negative-pattern"] = strain_case(
    set_values("data", (3, 3), lambda v: -v), ("scan.zarr", "'data'", "negative")
)
CASES["strain/negative-reference"] = strain_case(
    set_values("data", (slice(0, 4), slice(0, 1)), lambda v: -v), ("scan.zarr", "'data'", "negative")
)
CASES["strain/missing-k-coordinate"] = strain_case(lambda ds: ds.drop_vars("k_x"), ("'k_x'", "missing"))
CASES["strain/missing-scan-units"] = strain_case(_drop_units("scan_x"), ("'scan_x'", "units"))
CASES["strain/missing-energy"] = strain_case(_attr("energy_eV", None), ("energy_eV",))
CASES["strain/truncated-chunk"] = strain_case(
    None, ("scan.zarr", "'data'", "chunk"), damage=lambda p: truncate_chunk(p, "data")
)
CASES["strain/deleted-chunk"] = strain_case(
    None, ("scan.zarr", "'data'", "NaN"), damage=lambda p: delete_chunk(p, "data")
)
CASES["strain/empty-scan"] = strain_case(lambda ds: ds.isel(scan_y=slice(0, 0)), ("'data'", "empty"))
CASES["strain/reference-attr-outside-scan"] = strain_case(_attr("reference_roi", [0, 4, 3, 9]), ("reference_roi",))
CASES["strain/ref-roi-option-outside-scan"] = strain_case(None, ("--ref-roi",), "--ref-roi", "0", "9", "0", "2")
CASES["strain/ref-roi-option-reversed"] = strain_case(None, ("--ref-roi",), "--ref-roi", "2", "1", "0", "2")
CASES["strain/zero-reference"] = strain_case(
    set_values("data", (slice(0, 4), slice(0, 1)), 0.0), ("scan.zarr", "reference region", "zero")
)
CASES["strain/unknown-method"] = strain_case(None, ("--method", "'hough'"), "--method", "hough")
CASES["strain/negative-thickness"] = strain_case(
    None, ("--thickness-nm", "positive"), "--correct-by-simulation", "--thickness-nm", "-5"
)
CASES["strain/unknown-crystal"] = strain_case(
    None, ("unknown crystal", "'Si_111'"), "--correct-by-simulation", "--crystal", "Si_111"
)
CASES["strain/thickness-without-correction"] = strain_case(None, ("--correct-by-simulation",), "--thickness-nm", "40")
CASES["strain/phonons-without-correction"] = strain_case(
    None, ("--frozen-phonons", "--correct-by-simulation"), "--frozen-phonons", "4"
)


@case("strain/unet-without-model")
def _unet_without_model(a: Artifacts, tmp: Path) -> Case:
    """No --model and no default model (``STEMSTRAIN_MODEL`` names a file that is not there)."""
    bad = strain_case(None, ("--model", "STEMSTRAIN_MODEL"), "--method", "unet")(a, tmp)
    return replace(bad, env={"STEMSTRAIN_MODEL": str(tmp / "absent.pt")})


def unet_case(fragments, *options):
    """`strain --method unet` with the trained tiny model and a bad network option."""

    def build(a: Artifacts, tmp: Path) -> Case:
        out = tmp / "s.zarr"
        args = ["strain", a.scan, out, "--method", "unet", "--model", a.ckpt_dir / "model.pt", "--no-progress"]
        return Case([*args, *options], fragments, (out,))

    return build


CASES["strain/bad-precision"] = unet_case(("--precision",), "--precision", "fp64")
CASES["strain/bad-device"] = unet_case(("--device",), "--device", "tpu")
CASES["strain/bad-scheduler"] = strain_case(None, ("--scheduler",), "--scheduler", "k8s")
CASES["strain/zero-batch"] = strain_case(None, ("--batch",), "--batch", "0")


@case("strain/missing-model")
def _(a, tmp):
    out = tmp / "s.zarr"
    return Case(["strain", a.scan, out, "--model", tmp / "absent.pt"], ("absent.pt", "not found"), (out,))


@case("strain/garbage-model")
def _(a, tmp):
    (tmp / "model.pt").write_bytes(os.urandom(2000))
    out = tmp / "s.zarr"
    return Case(["strain", a.scan, out, "--model", tmp / "model.pt"], ("model.pt",), (out,))


@case("strain/checkpoint-instead-of-model")
def _(a, tmp):
    out = tmp / "s.zarr"
    return Case(["strain", a.scan, out, "--model", a.ckpt_dir / "checkpoint.pt"], ("checkpoint.pt",), (out,))


@case("strain/output-under-a-file")
def _(a, tmp):
    out = parent_is_file(tmp, "strain.zarr")
    return Case(["strain", a.scan, out, "--method", "peaks", "--no-progress"], (str(out.parent),), (out,))


# ---------------------------------------------------------------- ingest

INGEST_OPTIONS = ["--energy-ev", "200000", "--semiangle-mrad", "1.5", "--k-sampling", "0.025"]


def ingest_case(make, fragments, *options):
    """`ingest` of an .npy made from the simulated scan's patterns by ``make``."""

    def build(a: Artifacts, tmp: Path) -> Case:
        patterns = xr.open_zarr(a.scan)["data"].values
        raw = tmp / "frames.npy"
        np.save(raw, make(patterns.copy()))
        out = tmp / "scan.zarr"
        return Case(["ingest", raw, out, *INGEST_OPTIONS, *options], fragments, (out,))

    return build


def _with(index, value):
    def make(patterns):
        patterns[index] = value(patterns[index]) if callable(value) else value
        return patterns

    return make


CASES["ingest/missing-file"] = lambda a, tmp: Case(
    ["ingest", tmp / "absent.mib", tmp / "o.zarr", *INGEST_OPTIONS], ("absent.mib", "not found"), (tmp / "o.zarr",)
)
CASES["ingest/unknown-format"] = ingest_case(lambda p: p, ("--format", "tiff"), "--format", "tiff")
CASES["ingest/5d-array"] = ingest_case(lambda p: p[None], ("frames.npy", "shape"))
CASES["ingest/flat-stack-without-scan-shape"] = ingest_case(lambda p: p.reshape(16, 64, 64), ("--scan-shape",))
CASES["ingest/scan-shape-mismatch"] = ingest_case(
    lambda p: p.reshape(16, 64, 64), ("--scan-shape",), "--scan-shape", "3", "5"
)
CASES["ingest/complex-values"] = ingest_case(lambda p: p.astype(np.complex64), ("frames.npy", "complex64"))
CASES["ingest/text-values"] = ingest_case(lambda p: p.astype(str), ("frames.npy", "dtype"))
CASES["ingest/nan-pixel"] = ingest_case(_with((1, 2, 30, 30), np.nan), ("frames.npy", "NaN"))
CASES["ingest/negative-pattern"] = ingest_case(_with((3, 1), lambda v: -v), ("frames.npy", "negative"))
CASES["ingest/zero-chunks"] = ingest_case(lambda p: p, ("--chunks",), "--chunks", "0", "2")
CASES["ingest/unknown-centre"] = ingest_case(lambda p: p, ("--centre",), "--centre", "top")
CASES["ingest/nan-energy"] = lambda a, tmp: Case(
    ["ingest", tmp / "x.npy", tmp / "o.zarr", "--energy-ev", "nan", "--semiangle-mrad", "1.5", "--k-sampling", "0.02"],
    ("--energy-ev",),
    (tmp / "o.zarr",),
)


# ---------------------------------------------------------------- evaluate and plot (strain maps)


def damaged_map(a: Artifacts, tmp: Path, change=None, damage=None, name="map.zarr") -> Path:
    path = tmp / name
    if change is not None:
        rewrite(a.strain_map, path, change)
    else:
        copy_store(a.strain_map, path)
    if damage is not None:
        damage(path)
    return path


def _all_nan(ds):
    for name in ("e_xx", "e_yy", "e_xy", "theta"):
        ds[name][:] = np.nan
    return ds


def _set_units(name, units):
    def change(ds):
        ds[name].attrs["units"] = units
        return ds

    return change


MAP_DAMAGE = {
    "missing-variable": (dict(change=lambda ds: ds.drop_vars("e_xx")), ("map.zarr", "'e_xx'", "missing")),
    "wrong-dims": (dict(change=lambda ds: ds.assign(e_yy=ds["e_yy"].expand_dims(extra=2))), ("'e_yy'", "dims")),
    "text-values": (dict(change=lambda ds: ds.assign(e_xx=ds["e_xx"].astype(str))), ("'e_xx'", "dtype")),
    "no-valid-position": (dict(change=_all_nan), ("map.zarr", "no scan position")),
    "missing-coordinate": (dict(change=lambda ds: ds.drop_vars("scan_x")), ("map.zarr", "'scan_x'")),
    "missing-coordinate-units": (dict(change=_drop_units("scan_y")), ("'scan_y'", "units")),
    "theta-in-degrees": (dict(change=_set_units("theta", "deg")), ("'theta'", "rad")),
    "reference-outside-map": (dict(change=_attr("reference_roi", [0, 9, 0, 9])), ("map.zarr", "reference_roi")),
    "truncated-chunk": (dict(damage=lambda p: truncate_chunk(p, "e_xx")), ("map.zarr", "'e_xx'", "chunk")),
}


def evaluate_case(damage_name):
    options, fragments = MAP_DAMAGE[damage_name]

    def build(a: Artifacts, tmp: Path) -> Case:
        scores = tmp / "scores.json"
        args = ["evaluate", damaged_map(a, tmp, **options), a.truth, "--json", scores]
        return Case(args, fragments, (scores,))

    return build


def plot_case(damage_name):
    options, fragments = MAP_DAMAGE[damage_name]

    def build(a: Artifacts, tmp: Path) -> Case:
        return Case(["plot", damaged_map(a, tmp, **options), tmp / "map.png"], fragments, (tmp / "map.png",))

    return build


for _name in MAP_DAMAGE:
    CASES[f"evaluate/{_name}"] = evaluate_case(_name)
    CASES[f"plot/{_name}"] = plot_case(_name)

CASES["evaluate/missing-truth"] = lambda a, tmp: Case(
    ["evaluate", a.strain_map, tmp / "absent.zarr", "--json", tmp / "s.json"], ("absent.zarr",), (tmp / "s.json",)
)


@case("evaluate/scan-shape-mismatch")
def _(a, tmp):
    small = damaged_map(a, tmp, change=lambda ds: ds.isel(scan_x=slice(0, 2)))
    return Case(["evaluate", small, a.truth, "--json", tmp / "s.json"], ("scan shape",), (tmp / "s.json",))


@case("evaluate/json-under-a-file")
def _(a, tmp):
    scores = parent_is_file(tmp, "scores.json")
    return Case(["evaluate", a.strain_map, a.truth, "--json", scores], (str(scores.parent),), (scores,))


CASES["plot/missing-map"] = lambda a, tmp: Case(
    ["plot", tmp / "absent.zarr", tmp / "m.png"], ("absent.zarr", "not found"), (tmp / "m.png",)
)
CASES["plot/not-png"] = lambda a, tmp: Case(["plot", a.strain_map, tmp / "m.jpg"], ("m.jpg", ".png"), (tmp / "m.jpg",))


@case("plot/truth-shape-mismatch")
def _(a, tmp):
    small = damaged_map(a, tmp, change=lambda ds: ds.isel(scan_x=slice(0, 2)), name="truth.zarr")
    return Case(["plot", a.strain_map, tmp / "m.png", "--truth", small], ("scan shape",), (tmp / "m.png",))


@case("plot/output-under-a-file")
def _(a, tmp):
    out = parent_is_file(tmp, "map.png")
    return Case(["plot", a.strain_map, out], (str(out.parent),), (out,))


# ---------------------------------------------------------------- evaluate-grid


def grid_case(fragments, *options, **changes):
    def build(a: Artifacts, tmp: Path) -> Case:
        work, out = tmp / "grid", tmp / "evaluation"
        args = ["evaluate-grid", config(tmp, **changes), "--work-dir", work, "--out-dir", out, *options]
        return Case(args, fragments, (work, out))

    return build


CASES["evaluate-grid/empty-grid"] = grid_case(("evaluate.thicknesses_nm",), evaluate__thicknesses_nm=[])
CASES["evaluate-grid/unknown-method-option"] = grid_case(("--method", "'hough'"), "--method", "hough")
CASES["evaluate-grid/unknown-method-config"] = grid_case(("evaluate.methods",), evaluate__methods=["hough"])
CASES["evaluate-grid/unet-without-model"] = grid_case(("--model",), evaluate__methods=["unet"])
CASES["evaluate-grid/negative-dose"] = grid_case(("evaluate.doses",), evaluate__doses=[-1.0])
CASES["evaluate-grid/zero-thickness"] = grid_case(("evaluate.thicknesses_nm",), evaluate__thicknesses_nm=[0.0])
CASES["evaluate-grid/reference-outside-scan"] = grid_case(("reference_roi",), evaluate__reference_roi=[0, 9, 0, 1])
CASES["evaluate-grid/missing-model"] = grid_case(("absent.pt",), "--model", "absent.pt")


# ---------------------------------------------------------------- the run and the checks


@pytest.fixture(scope="session")
def matrix(request, artifacts, tmp_path_factory) -> dict:
    """Run every selected case as a subprocess, two at a time; ``{name: (Case, CompletedProcess)}``."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.originalname == "test_bad_input_fails_cleanly" and hasattr(item, "callspec")
    ]
    root = tmp_path_factory.mktemp("matrix")
    prepared = {}
    for number, name in enumerate(selected):
        tmp = root / f"{number:03d}"
        tmp.mkdir()
        prepared[name] = (CASES[name](artifacts, tmp), tmp)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {name: pool.submit(run_cli, *bad.args, cwd=tmp, env=bad.env) for name, (bad, tmp) in prepared.items()}
        return {name: (prepared[name][0], future.result()) for name, future in futures.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_cleanly(name, matrix):
    bad, result = matrix[name]
    assert_clean_failure(result, bad.fragments, bad.outputs)


def test_every_command_is_covered():
    commands = {name.split("/")[0] for name in CASES}
    assert commands == {"simulate", "simulate-scan", "train", "strain", "ingest", "evaluate", "evaluate-grid", "plot"}

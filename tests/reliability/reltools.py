"""Helpers of the reliability suite: run the real CLI, damage real stores, check clean failures.

Every command runs as a subprocess (``python -m stemstrain.cli``), the way a user or a Snakemake
rule runs it; damaged inputs are copies of stores the real commands wrote.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

CLI = [sys.executable, "-m", "stemstrain.cli"]
TIMEOUT_S = 300


def cli_environment() -> dict[str, str]:
    """The test process's environment with quiet, single-threaded numerics (2-core CI runs two at once)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}


def run_cli(
    *args, cwd: Path | None = None, timeout: float = TIMEOUT_S, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``stemstrain ARGS`` to completion and capture its output (``env``: extra environment)."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**cli_environment(), **(env or {})},
    )


def start_cli(*args, log: Path) -> subprocess.Popen:
    """Start ``stemstrain ARGS`` in its own process group, output to ``log``."""
    with open(log, "w") as handle:
        return subprocess.Popen(
            [*CLI, *map(str, args)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=cli_environment(),
            start_new_session=True,
        )


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = TIMEOUT_S) -> None:
    """SIGKILL the process group of ``process`` as soon as ``ready()`` holds (polled every 5 ms).

    Fails the test when the process ends first: then nothing was interrupted.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {process.returncode}) before it could be killed:\n{log.read_text()[-3000:]}"
            )
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            assert process.returncode == -signal.SIGKILL
            return
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    raise AssertionError(f"the run did not reach the kill point in {timeout} s:\n{log.read_text()[-3000:]}")


def leftovers(path: Path) -> list[str]:
    """The output path and its temporary or partial siblings, where they exist."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(
        p.name
        for p in path.parent.iterdir()
        if p.name == path.name or p.name.startswith(f".{path.name}.tmp-") or p.name.startswith(f"{path.name}.partial")
    )


def assert_clean_failure(result: subprocess.CompletedProcess, fragments: tuple[str, ...], outputs: tuple[Path, ...]):
    """Exit code 2, one line ``stemstrain: error: ...`` naming every fragment, no traceback, no output."""
    report = f"exit {result.returncode}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr + result.stdout, report
    assert result.returncode == 2, report
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("stemstrain: error:")]
    assert len(errors) == 1 and len(lines) == 1, f"expected exactly one error line on stderr\n{report}"
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), f"{fragment!r} not named in the error\n{report}"
    for output in outputs:
        assert not leftovers(output), f"{output} left {leftovers(output)}\n{report}"


# ---------------------------------------------------------------- damaged copies of real stores


def rewrite(source: Path, target: Path, change: Callable[[xr.Dataset], xr.Dataset], chunks: dict | None = None) -> Path:
    """Copy a Zarr dataset through ``change`` (applied to a loaded, deep copy) into a new store."""
    ds = xr.open_zarr(source).load().copy(deep=True)
    for variable in ds.variables.values():
        variable.encoding = {}
    ds = change(ds)
    if chunks:
        ds = ds.chunk({dim: size for dim, size in chunks.items() if dim in ds.dims})
    ds.to_zarr(target, mode="w", consolidated=True)
    return target


def set_values(name: str, index: tuple, value) -> Callable[[xr.Dataset], xr.Dataset]:
    """A change setting ``ds[name][index] = value`` (value may be a function of the old values)."""

    def change(ds: xr.Dataset) -> xr.Dataset:
        values = ds[name].values.copy()
        values[index] = value(values[index]) if callable(value) else value
        ds[name] = (ds[name].dims, values, ds[name].attrs)
        return ds

    return change


def chunk_files(store: Path, variable: str) -> list[Path]:
    """Chunk files of a variable in a Zarr v3 store, in key order."""
    return sorted(p for p in (Path(store) / variable / "c").rglob("*") if p.is_file())


def truncate_chunk(store: Path, variable: str, keep: float = 0.5, which: int = -1) -> Path:
    """Cut a chunk file of ``variable`` to a fraction of its bytes (a write that never finished)."""
    path = chunk_files(store, variable)[which]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def delete_chunk(store: Path, variable: str, which: int = -1) -> Path:
    """Remove a chunk file of ``variable`` (a lost file)."""
    path = chunk_files(store, variable)[which]
    path.unlink()
    return path


def copy_store(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------- configurations


def write_config(base: dict, path: Path, **changes) -> Path:
    """Write ``base`` as YAML with changes at ``__``-separated paths (``scans__0__dose=-1``; None removes it)."""
    config = yaml.safe_load(yaml.safe_dump(base))
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = config
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        last = int(keys[-1]) if isinstance(node, list) else keys[-1]
        if value is None:
            del node[last]
        else:
            node[last] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def arrays_equal(first: Path, second: Path, skip: tuple[str, ...] = ()) -> None:
    """Every data variable of two Zarr datasets is identical (NaN equal to NaN)."""
    a, b = xr.open_zarr(first).load(), xr.open_zarr(second).load()
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in a.data_vars:
        if name not in skip:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)

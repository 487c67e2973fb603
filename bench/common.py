"""Shared helpers of the benchmarks: machine description, atomic JSON results, lattice fits, cached
patterns of uniformly strained crystals.

Every benchmark writes ``bench/results/<name>.json`` with the machine it ran on, so that figures
from different machines are never compared by accident. Compare ratios measured in one run.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from stemstrain.lattice import fit_patterns, initial_lattice
from stemstrain.simulate.multislice import probe_positions_in_cell, simulate_patterns
from stemstrain.strain import deformation_from_strain, rotation_matrix

RESULTS = Path(__file__).resolve().parent / "results"
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE")
"""Environment variables that cap the instruction set of torch, oneDNN, MKL and OpenBLAS."""


def cpu_flags() -> list[str]:
    """The vector-instruction flags of the CPU that matter for torch (AVX2, AVX-512, AMX, BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")) or "bf16" in f)


def _version(package: str) -> str | None:
    """A package's installed version, None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Cores, memory, CPU model and flags, versions of the main libraries, GPU if any."""
    import numpy
    import torch

    model = platform.processor()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "onnxruntime": _version("onnxruntime"),  # runs the network in fp32 on a CPU (engine auto)
        "torch_threads": torch.get_num_threads(),
        # the vector ISA torch dispatches to, and any limit set on it (e.g. to measure an AVX2-only CPU)
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_limits": {name: os.environ[name] for name in ISA_LIMITS if name in os.environ},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def fitted_lattices(detector, patterns: np.ndarray, first: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each pattern's lattice, fitted to the detector's spots as a strain run fits them.

    Parameters
    ----------
    detector
        A detector of :func:`stemstrain.detect.make_detector`.
    patterns : ndarray (n, H, W)
        Diffraction patterns [counts].
    first : ndarray (H, W), optional
        The pattern whose spots index the others (default: ``patterns[0]``).

    Returns
    -------
    lattice : ndarray (n, 2, 2)
        Basis vectors as columns [1/angstrom, or angstrom for a real-space detector].
    valid : ndarray of bool (n,)
        Patterns whose fit passed the validity checks.
    """
    positions, weights = detector(patterns)
    first_positions, first_weights = detector(first[None]) if first is not None else (positions, weights)
    lattice0, origin0 = initial_lattice(first_positions[0], first_weights[0], detector.space)
    fit = fit_patterns(positions, weights, lattice0, origin0, detector.space == "reciprocal")
    return fit["lattice"], fit["valid"]


def readout_variant(
    network_label: str = "unet",
    refine: str | None = None,
    tilt_prior: float | None = None,
    disk_correction: str | Path | None = None,
) -> tuple[dict[str, dict], dict[str, str]]:
    """Detector options and row labels of unet and bragg for one read-out variant.

    Parameters
    ----------
    network_label : str
        The network's label before the variant's suffixes (``unet``, or ``unet@NAME`` for another model).
    refine : str, optional
        The network's subpixel read-out (label ``+REFINE``).
    tilt_prior : float, optional
        The template read-out's tilt prior, for both methods (label ``+tiltVALUE``).
    disk_correction : str or Path, optional
        A disk-centre correction, a file or a shipped name, for the network (label ``+NAME``, the
        file's name without its suffix).

    Returns
    -------
    options : dict
        ``{"unet": ..., "bragg": ...}``: keyword options of :func:`stemstrain.detect.make_detector`.
    labels : dict
        ``{"unet": ..., "bragg": ...}``: their rows' method labels.
    """
    tilt = {} if tilt_prior is None else {"tilt_prior": tilt_prior}
    network = tilt | ({"refine": refine} if refine else {})
    network |= {"disk_correction": str(disk_correction)} if disk_correction else {}
    tilt_label = f"+tilt{tilt_prior:g}" if tilt else ""
    network_label += (f"+{refine}" if refine else "") + tilt_label
    network_label += f"+{Path(disk_correction).stem}" if disk_correction else ""
    return {"unet": network, "bragg": tilt}, {"unet": network_label, "bragg": "bragg" + tilt_label}


def write_result(name: str, payload: dict) -> Path:
    """Write ``bench/results/<name>.json`` atomically, with the machine description added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def peak_rss_tree(process: psutil.Process) -> int:
    """Resident memory of a process and all its children now [bytes]."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def uniform_state_patterns(
    crystal: str,
    strain,
    orientation_deg: float,
    thicknesses_nm,
    optics,
    frozen_phonons: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Clean patterns (thickness, H, W) of a uniformly strained crystal, the probe on a lattice point.

    Parameters
    ----------
    strain : sequence of 4 float
        e_xx, e_yy, e_xy [1] and rotation θ [rad], applied after turning the crystal by ``orientation_deg``.
    orientation_deg : float
        In-plane orientation of the crystal [deg].
    optics : SimulationOptics
        Optics, detector and box.
    """
    deformation = deformation_from_strain(*strain) @ rotation_matrix(np.radians(orientation_deg))
    position = probe_positions_in_cell(crystal, deformation, np.zeros((1, 2)), optics.box)
    series, _ = simulate_patterns(
        crystal, deformation, thicknesses_nm, position, optics, frozen_phonons=frozen_phonons, seed=seed
    )
    return series[0]


def cached_array(path: Path, build: Callable[[], np.ndarray]) -> np.ndarray:
    """The array at ``path``, built by ``build()`` and saved there first if missing (written whole, then renamed)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npy")
        np.save(partial, build())
        partial.rename(path)
    return np.load(path)

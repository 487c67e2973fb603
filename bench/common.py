"""Shared helpers of the benchmarks: machine description and atomic JSON results.

Every benchmark writes ``bench/results/<name>.json`` with the machine it ran on, so that figures
from different machines are never compared by accident. Compare ratios measured in one run.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_flags() -> list[str]:
    """The vector-instruction flags of the CPU that matter for torch (AVX2, AVX-512, AMX, BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")) or "bf16" in f)


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
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


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

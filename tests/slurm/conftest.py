"""Marks every test in tests/slurm `slurm` and skips them, with the reason, where no Slurm answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from slurmtools import slurm_problem

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    problem = None
    checked = False
    for item in items:
        if HERE not in Path(str(item.fspath)).parents:
            continue
        item.add_marker(pytest.mark.slurm)
        if not checked:
            problem, checked = slurm_problem(), True
        if problem:
            item.add_marker(pytest.mark.skip(reason=f"Slurm unavailable: {problem}"))

"""`snakemake --profile slurm` end to end on the tiny config: every rule a Slurm job of its own;
re-running one rule (--forcerun strain); resuming, through slurm/workflow.sbatch, after a running
job was cancelled with scancel.

The tests share one workspace and run in file order (the later ones need the finished workflow).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import numpy as np
import pytest
import xarray as xr
from slurmtools import environment, rule_of, run, slurm_jobs, submitted_jobs, workflow_copy

pytestmark = pytest.mark.slurm

RUN = "tiny"
SCAN = "si110_tiny"
STRAIN = f"results/strain/cepstrum/{SCAN}.zarr"
# `all` (the report) does not need the network for the cepstrum method: ask for the model too.
TARGETS = ["all", f"results/train/{RUN}/model.pt"]
ALL_RULES = {"resolved_config", "simulate", "simulate_scan", "train", "strain", "evaluate", "plot", "report"}


def rules_of(output: str) -> dict[str, str]:
    """Rule of every Slurm job submitted in a Snakemake log, from Slurm itself (by job id)."""
    ids = [job["slurm_id"] for job in submitted_jobs(output)]
    return {slurm_id: rule_of(info["comment"]) for slurm_id, info in slurm_jobs(ids).items()}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """The tiny workflow run once with the profile; returns (workspace, Snakemake output, seconds)."""
    work = workflow_copy(tmp_path_factory.mktemp("workflow"))
    result = run(["snakemake", "--profile", "slurm", *TARGETS], work, timeout_s=420, log=work / "run1.log")
    print(f"snakemake --profile slurm, whole tiny workflow: {result.elapsed_s:.0f} s")
    return work, result.stdout


def tres_per_job(slurm_id: str) -> str:
    """Generic resources a job asked for (e.g. ``gres:gpu:1``), from ``scontrol show job``."""
    command = ["scontrol", "--oneliner", "show", "job", slurm_id]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30)
    fields = dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)
    return fields.get("TresPerJob", "")


def test_every_job_is_a_slurm_job_with_its_own_id(workflow):
    work, output = workflow
    jobs = submitted_jobs(output)
    ids = [job["slurm_id"] for job in jobs]
    assert len(ids) == len(set(ids)) == len(ALL_RULES), output[-3000:]

    # Slurm itself knows every job: finished, named after this run, commented with its rule.
    run_id = output.split("SLURM run ID: ", 1)[1].split()[0]
    known = slurm_jobs(ids)
    assert set(known) == set(ids)
    assert {info["state"] for info in known.values()} == {"COMPLETED"}
    assert {info["name"] for info in known.values()} == {run_id}
    assert sorted(rule_of(info["comment"]) for info in known.values()) == sorted(ALL_RULES)

    # The profile's per-rule resources reached Slurm: the network rules asked for a GPU, the others not.
    gpus = {rule_of(info["comment"]): tres_per_job(slurm_id) for slurm_id, info in known.items()}
    assert gpus["train"] == gpus["strain"] == "gres:gpu:1"
    assert gpus["simulate"] == gpus["simulate_scan"] == gpus["report"] == ""

    # One Slurm log per job, under logs/slurm/<rule>/..., written by the job itself on the node.
    for job in jobs:
        rule = rule_of(known[job["slurm_id"]]["comment"])
        assert job["log"].is_file() and job["log"].name == f"{job['slurm_id']}.log"
        assert job["log"].is_relative_to(work / "logs" / "slurm" / f"rule_{rule}")
        assert f"rule {rule}:" in job["log"].read_text()

    # The science came out: the cepstrum recovers the scan's strain gradient.
    scores = json.loads((work / f"results/evaluation/cepstrum/{SCAN}.json").read_text())
    assert scores["n_scored"] >= 8
    assert max(scores[c]["rmse"] for c in ("e_xx", "e_yy", "e_xy")) < 2e-3
    assert (work / f"results/train/{RUN}/model.pt").stat().st_size > 0
    assert (work / "results/report.md").read_text().strip()


def test_forcerun_strain_reruns_only_strain(workflow):
    work, _ = workflow
    before = xr.open_zarr(work / STRAIN).load()
    upstream = {
        path: (work / path).stat().st_mtime_ns
        for path in (
            f"results/train/{RUN}/model.pt",
            f"results/scans/{SCAN}.zarr/zarr.json",
            f"results/config/{RUN}.yaml",
        )
    }

    # Asking for the strain map alone: exactly one job, of rule strain, must run.
    result = run(
        ["snakemake", "--profile", "slurm", "--forcerun", "strain", "--", STRAIN],
        work,
        timeout_s=240,
        log=work / "forcerun.log",
    )
    print(f"--forcerun strain: {result.elapsed_s:.0f} s")
    assert list(rules_of(result.stdout).values()) == ["strain"], result.stdout[-3000:]
    for path, mtime in upstream.items():
        assert (work / path).stat().st_mtime_ns == mtime, f"{path} was rebuilt"
    after = xr.open_zarr(work / STRAIN).load()
    for name in ("e_xx", "e_yy", "e_xy", "theta"):
        np.testing.assert_array_equal(after[name].values, before[name].values)


def wait_for_state(slurm_id: str, states: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = "?"
    while time.monotonic() < deadline:
        state = slurm_jobs([slurm_id]).get(slurm_id, {}).get("state", "?")
        if state in states:
            return state
        time.sleep(0.3)
    raise AssertionError(f"Slurm job {slurm_id} still {state} after {timeout_s} s")


def test_resume_after_scancel_of_a_running_job(workflow):
    work, _ = workflow
    started = time.perf_counter()
    # Back to a half-done workflow: everything up to the strain map exists. (With the report still
    # there, Snakemake would not rebuild a missing intermediate for `all`: ask for the map itself.)
    shutil.rmtree(work / "results/strain")
    # Snakemake in the background; its strain job is cancelled while running.
    log = (work / "cancelled.log").open("w")
    snakemake = subprocess.Popen(
        ["timeout", "-s", "INT", "-k", "30", "240", "snakemake", "--profile", "slurm", STRAIN],
        cwd=work,
        env=environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        strain_id = None
        while strain_id is None and time.monotonic() < deadline and snakemake.poll() is None:
            time.sleep(0.3)
            strain_id = next(iter(rules_of((work / "cancelled.log").read_text())), None)
        assert strain_id is not None, (work / "cancelled.log").read_text()[-3000:]
        wait_for_state(strain_id, {"RUNNING"}, timeout_s=60)
        time.sleep(1.0)  # let the job's Snakemake get into the rule
        subprocess.run(["scancel", strain_id], check=True, timeout=30)
        assert snakemake.wait(timeout=200) not in (0, 124)
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
        log.close()
    output = (work / "cancelled.log").read_text()
    assert "CANCELLED" in output, output[-3000:]
    assert wait_for_state(strain_id, {"CANCELLED"}, timeout_s=30) == "CANCELLED"
    # Only the strain job had started; its half-written output is not left as if finished.
    assert set(rules_of(output).values()) == {"strain"}
    assert not (work / STRAIN).exists()

    # Resume with the workflow as one head job (slurm/workflow.sbatch): it submits only what is missing.
    result = run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            "--time=15",
            "--output=logs/slurm/workflow-%j.log",
            "slurm/workflow.sbatch",
            STRAIN,
        ],
        work,
        timeout_s=300,
    )
    head_id = result.stdout.strip().splitlines()[-1].split(";")[0]
    head_log = (work / f"logs/slurm/workflow-{head_id}.log").read_text()
    print(f"scancel + resume through workflow.sbatch: {time.perf_counter() - started:.0f} s")
    resumed = rules_of(head_log)
    assert list(resumed.values()) == ["strain"], head_log[-3000:]
    assert head_id not in resumed and strain_id not in resumed
    assert {info["state"] for info in slurm_jobs(list(resumed) + [head_id]).values()} == {"COMPLETED"}
    strain = xr.open_zarr(work / STRAIN)
    assert int(strain["mask"].sum()) >= 8

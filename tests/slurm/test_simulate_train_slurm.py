"""The simulate stage on a dask-jobqueue SLURMCluster (`simulate.cluster.kind: slurm`), and DDP
training through slurm/train-ddp.sbatch with two Slurm tasks (two torchrun agents, world size 2)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import xarray as xr
import yaml
from slurmtools import REPO, run, slurm_jobs, tiny_config

from stemstrain.model import load_model

pytestmark = pytest.mark.slurm


def all_job_ids() -> set[str]:
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return set(out.split())


@pytest.fixture(scope="module")
def in_process_set(tmp_path_factory):
    """The tiny training set simulated in this process (cluster kind none), the reference."""
    work = tmp_path_factory.mktemp("reference")
    config = work / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config()))
    run(["stemstrain", "simulate", str(config), str(work / "train.zarr")], work, timeout_s=180)
    return config, work / "train.zarr"


def test_simulate_on_a_dask_jobqueue_slurm_cluster(in_process_set, tmp_path):
    settings = tiny_config()
    settings["simulate"]["cluster"] = {
        "kind": "slurm",
        "workers": 2,  # Slurm jobs, one dask worker each
        "cores": 1,
        "memory": "2GB",
        "walltime": "00:10:00",
        "job_extra_directives": ["--job-name=stemstrain-dask-test"],
    }
    config = tmp_path / "slurm.yaml"
    config.write_text(yaml.safe_dump(settings))
    before = all_job_ids()

    # From tmp_path: the worker jobs write their logs (slurm-<jobid>.out) into the submit directory.
    result = run(["stemstrain", "simulate", str(config), str(tmp_path / "train.zarr")], tmp_path, timeout_s=240)
    print(f"simulate on a SLURMCluster (2 worker jobs): {result.elapsed_s:.0f} s")

    # The workers were Slurm jobs of their own, submitted by dask-jobqueue and gone when it finished.
    workers = {
        i: info for i, info in slurm_jobs(all_job_ids() - before).items() if info["name"] == "stemstrain-dask-test"
    }
    assert len(workers) == 2, (workers, result.stdout[-2000:])
    assert {info["state"] for info in workers.values()} <= {"COMPLETED", "CANCELLED", "COMPLETING"}
    for slurm_id in workers:
        assert "Start worker at" in (tmp_path / f"slurm-{slurm_id}.out").read_text()

    # Same seed, same store, wherever the tasks ran.
    ours, reference = xr.open_zarr(tmp_path / "train.zarr"), xr.open_zarr(in_process_set[1])
    assert ours["inputs"].shape == reference["inputs"].shape == (8, 128, 128)
    for name in ("inputs", "targets", "strain"):
        np.testing.assert_array_equal(ours[name].values, reference[name].values)


def test_ddp_training_through_train_ddp_sbatch_with_two_tasks(in_process_set, tmp_path):
    config, data = in_process_set
    ckpt = tmp_path / "ckpt"
    log = tmp_path / "train-ddp.log"
    # Two tasks on the one test node stand for two nodes: two torchrun agents meet in the c10d
    # rendezvous of task 0; each gets one of the node's two (placeholder) GPUs, so one process.
    result = run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            "--nodes=1",
            "--ntasks=2",
            "--ntasks-per-node=2",
            "--gpus-per-node=2",
            "--cpus-per-task=1",
            "--mem=4G",
            "--time=10",
            f"--output={log}",
            "slurm/train-ddp.sbatch",
            str(config),
            str(data),
            str(ckpt),
        ],
        REPO,
        timeout_s=300,
    )
    print(f"train-ddp.sbatch, 2 tasks: {result.elapsed_s:.0f} s")
    text = log.read_text()
    assert "2 agent(s) on 1 node(s), 1 process(es) each (2 GPU(s) on the node), world size 2" in text, text[-3000:]
    assert "stemstrain train: 2 process(es) on cpu" in text

    _, metadata = load_model(ckpt / "model.pt")
    assert metadata["world_size"] == 2
    # Both ranks ended with the same parameters (DDP kept them in step).
    checksums = metadata["rank_parameter_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]

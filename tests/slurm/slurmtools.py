"""Helpers for the tests that need a running Slurm (marker ``slurm``; start one with start-slurm.sh).

Every test here is marked ``slurm`` and skipped, with the reason, where no Slurm answers. Commands
run under ``timeout -s INT`` so that a hung Snakemake is interrupted the way a user would do it
(it then cancels its Slurm jobs) instead of blocking CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny.yaml"
VENV_BIN = Path(sys.executable).parent


def slurm_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None when a node takes jobs."""
    for tool in ("sinfo", "sbatch", "squeue", "srun", "scancel"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH (start Slurm with tests/slurm/start-slurm.sh)"
    try:
        states = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 15 s"
    if states.returncode != 0:
        return f"Slurm is not up: sinfo says {states.stderr.strip()!r} (tests/slurm/start-slurm.sh starts it)"
    usable = {"idle", "mixed", "allocated", "completing"}
    if not usable & {s.strip().rstrip("*~#") for s in states.stdout.split()}:
        return f"no Slurm node takes jobs (sinfo states: {states.stdout.split()})"
    return None


def environment() -> dict:
    """This environment with the test's venv first on PATH (Slurm jobs inherit it with --export=ALL)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env.setdefault("PYTHONUNBUFFERED", "1")
    for name in list(env):
        # A test started inside a Slurm job must submit fresh jobs, not steps of its own.
        if name.startswith(("SLURM_", "SBATCH_", "SRUN_")):
            del env[name]
    return env


def run(command: list[str], cwd: Path, timeout_s: float, log: Path | None = None, check: bool = True):
    """Run ``command`` under ``timeout -s INT`` and return the CompletedProcess (output in .stdout).

    On expiry the command gets SIGINT (Snakemake then cancels its Slurm jobs), and SIGKILL 30 s later.
    """
    started = time.perf_counter()
    result = subprocess.run(
        ["timeout", "-s", "INT", "-k", "30", str(int(timeout_s)), *command],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    result.elapsed_s = time.perf_counter() - started
    if log is not None:
        log.write_text(result.stdout)
    if check:
        assert result.returncode != 124, f"timed out after {timeout_s} s: {' '.join(command)}\n{result.stdout[-4000:]}"
        assert result.returncode == 0, f"exit {result.returncode}: {' '.join(command)}\n{result.stdout[-6000:]}"
    return result


SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.")


def submitted_jobs(output: str) -> list[dict]:
    """Slurm submissions logged by snakemake-executor-plugin-slurm: Snakemake job id, Slurm job id, log."""
    return [
        {"job": int(job), "slurm_id": slurm_id, "log": Path(log)} for job, slurm_id, log in SUBMITTED.findall(output)
    ]


def slurm_jobs(ids) -> dict[str, dict]:
    """State, comment (the plugin writes rule_<rule>_wildcards_...) and name of Slurm jobs, by id."""
    ids = list(ids)
    if not ids:
        return {}
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T|%k|%j", "--jobs", ",".join(ids)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        slurm_id, state, comment, name = line.strip().split("|", 3)
        jobs[slurm_id] = {"state": state, "comment": comment, "name": name}
    return jobs


def rule_of(comment: str) -> str:
    """Rule name from the plugin's job comment ``rule_<name>[_wildcards_<...>]``."""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def tiny_node_profile(dest: Path) -> Path:
    """slurm/config.yaml with its sizes cut to fit the 2-core test node; returns the profile folder.

    Only numbers change (threads, memory, walltime, GPUs per job, CPUs per GPU) and the first status
    check comes sooner; executor, status command, logs and every resource key stay as shipped.
    """
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["latency-wait"] = 5
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    profile["cores"] = 2
    profile["max-threads"] = 1
    profile["default-resources"].update(mem_mb=1000, runtime=15)
    for resources in profile["set-resources"].values():
        resources["mem_mb"] = min(resources.get("mem_mb", 1000), 2000)
        resources["runtime"] = 15
        if "gpu" in resources:
            resources["gpu"] = 1
            resources["cpus_per_gpu"] = 1
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def workflow_copy(dest: Path, config: dict | None = None) -> Path:
    """A working copy of the workflow (Snakefile, rules, schema, scripts, envs, sbatch files) with the tiny config.

    The config goes to ``config.yaml`` (the Snakefile's configfile), and the test-node profile to
    ``slurm/``, so that ``snakemake --profile slurm`` there runs exactly as in a user's checkout.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "envs"):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    profile = tiny_node_profile(dest / "slurm")
    for script in (REPO / "slurm").glob("*.sbatch"):
        shutil.copy2(script, profile / script.name)
    text = TINY.read_text() if config is None else yaml.safe_dump(config, sort_keys=False)
    (dest / "config.yaml").write_text(text)
    (dest / "logs" / "slurm").mkdir(parents=True, exist_ok=True)
    return dest


def tiny_config() -> dict:
    return yaml.safe_load(TINY.read_text())

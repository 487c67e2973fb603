# Measured detector files listed in config `ingest.files` -> 4D-data stores results/ingest/{name}.zarr.
# Nothing runs unless the config lists files (rule all then asks for every store).
import re
import shlex

INGEST = {entry["name"]: entry for entry in config.get("ingest", {}).get("files", [])}
INGEST_OUTPUTS = [f"results/ingest/{name}.zarr" for name in INGEST]
INGEST_FLAGS = {
    "format": "--format",
    "energy_eV": "--energy-ev",
    "semiangle_mrad": "--semiangle-mrad",
    "k_sampling": "--k-sampling",
    "scan_step_nm": "--scan-step",
    "scan_shape": "--scan-shape",
    "chunks": "--chunks",
    "centre": "--centre",
}


def ingest_options(wildcards):
    """The `stemstrain ingest` options of one config entry (unset ones left to the file's metadata)."""
    entry = INGEST[wildcards.name]
    options = []
    for key, flag in INGEST_FLAGS.items():
        value = entry.get(key)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        options += [flag, *(str(v) for v in values)]
    return shlex.join(options)


rule ingest:
    input:
        lambda wildcards: INGEST[wildcards.name]["file"],
    output:
        directory("results/ingest/{name}.zarr"),
    log:
        "logs/ingest/{name}.log",
    benchmark:
        "benchmarks/ingest/{name}.tsv"
    wildcard_constraints:
        name="|".join(re.escape(name) for name in INGEST) or "(?!)",
    threads: 2
    resources:
        mem_mb=2000,
    params:
        options=ingest_options,
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain ingest {input:q} {output:q} {params.options} > {log} 2>&1"

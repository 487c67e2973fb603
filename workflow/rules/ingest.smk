# Measured detector files listed in config `ingest.files` -> 4D-data stores results/ingest/{name}.zarr.
# Nothing runs unless the config lists files (rule all then asks for every store); names and options
# come from common.smk.
rule ingest:
    input:
        raw=lambda wildcards: INGEST[wildcards.name]["file"],
        probe=lambda wildcards: INGEST[wildcards.name].get("probe") or [],
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
        "stemstrain ingest {input.raw:q} {output:q} {params.options} > {log} 2>&1"

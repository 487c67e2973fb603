# stemstrain workflow: simulate -> train -> strain -> evaluate, plus baselines and ingest.
# `snakemake --cores N` on one machine, `snakemake --profile slurm` on a cluster.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/config.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/baselines.smk"


rule all:
    input:
        "results/report.md",
        INGEST_OUTPUTS,
        GRID_OUTPUTS,

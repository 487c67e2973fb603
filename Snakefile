# stemstrain workflow: simulate -> train -> strain -> evaluate, plus baselines and ingest.
# `snakemake --cores N` on one machine, `snakemake --profile slurm` on a cluster.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/resolved_config.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/strain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/plot.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/evaluate_grid.smk"


rule all:
    input:
        "results/report.md",
        INGEST_OUTPUTS,
        GRID_OUTPUTS,

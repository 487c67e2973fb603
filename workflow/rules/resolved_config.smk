rule resolved_config:
    # The merged configuration (config.yaml + --config overrides) that every stage reads;
    # Snakemake re-runs dependants when it changes.
    output:
        "results/config/{run}.yaml",
    params:
        resolved=lambda wildcards: config,
    log:
        "logs/resolved_config/{run}.log",
    benchmark:
        "benchmarks/resolved_config/{run}.tsv"
    conda:
        "../../envs/stemstrain.yaml"
    script:
        "../scripts/resolved_config.py"

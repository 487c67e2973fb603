rule simulate:
    input:
        config=f"results/config/{RUN}.yaml",
    output:
        directory("results/simulate/{run}/train.zarr"),
    log:
        "logs/simulate/{run}.log",
    benchmark:
        "benchmarks/simulate/{run}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=8000,
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain simulate {input.config} {output} > {log} 2>&1"


rule simulate_scan:
    input:
        config=f"results/config/{RUN}.yaml",
    output:
        scan=directory("results/scans/{scan}.zarr"),
        truth=directory("results/scans/{scan}.truth.zarr"),
    log:
        "logs/simulate_scan/{scan}.log",
    benchmark:
        "benchmarks/simulate_scan/{scan}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=8000,
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain simulate-scan {input.config} {output.scan} {output.truth} --scan {wildcards.scan} > {log} 2>&1"

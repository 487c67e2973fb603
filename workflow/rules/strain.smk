rule strain:
    # Network, precision, work units and dask cluster come from the config's `strain` section.
    input:
        unpack(strain_inputs),
    output:
        directory("results/strain/{method}/{scan}.zarr"),
    log:
        "logs/strain/{method}/{scan}.log",
    benchmark:
        "benchmarks/strain/{method}/{scan}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=8000,
    params:
        method=lambda wildcards: "unet" if wildcards.method == SHIPPED else wildcards.method,
        model=lambda wildcards, input: f"--model {input.model}" if wildcards.method == "unet" else "",
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain strain {input.scan} {output} --method {params.method} {params.model}"
        " --config {input.config} > {log} 2>&1"

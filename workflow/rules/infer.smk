rule strain:
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
        model=lambda wildcards, input: f"--model {input.model}" if wildcards.method == "unet" else "",
        batch=config["strain"]["batch_size"],
        precision=config["strain"]["precision"],
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain strain {input.scan} {output} --method {wildcards.method} {params.model}"
        " --batch {params.batch} --precision {params.precision} > {log} 2>&1"

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
        device=config["strain"].get("device", "auto"),
        compile="--compile" if config["strain"].get("compile") else "",
        scheduler=config["strain"].get("scheduler", "none"),
        workers=(
            f"--workers {config['strain']['workers']}" if config["strain"].get("workers") else ""
        ),
        unit_patterns=config["strain"].get("unit_patterns", 1024),
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain strain {input.scan} {output} --method {wildcards.method} {params.model}"
        " --batch {params.batch} --precision {params.precision} --device {params.device} {params.compile}"
        " --scheduler {params.scheduler} {params.workers} --unit-patterns {params.unit_patterns} > {log} 2>&1"

rule evaluate:
    input:
        prediction="results/strain/{method}/{scan}.zarr",
        truth="results/scans/{scan}.truth.zarr",
    output:
        "results/evaluation/{method}/{scan}.json",
    log:
        "logs/evaluate/{method}/{scan}.log",
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain evaluate {input.prediction} {input.truth} --json {output} > {log} 2>&1"


rule plot:
    input:
        prediction="results/strain/{method}/{scan}.zarr",
        truth="results/scans/{scan}.truth.zarr",
    output:
        "results/figures/{method}/{scan}.png",
    log:
        "logs/plot/{method}/{scan}.log",
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain plot {input.prediction} {output} --truth {input.truth} > {log} 2>&1"


rule report:
    input:
        scores=expand("results/evaluation/{method}/{scan}.json", method=METHODS, scan=SCANS),
        figures=expand("results/figures/{method}/{scan}.png", method=METHODS, scan=SCANS),
    output:
        "results/report.md",
    log:
        "logs/report/report.log",
    params:
        config=config,
    conda:
        "../../envs/stemstrain.yaml"
    script:
        "../scripts/report.py"

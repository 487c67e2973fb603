rule plot:
    input:
        prediction="results/strain/{method}/{scan}.zarr",
        truth="results/scans/{scan}.truth.zarr",
    output:
        "results/figures/{method}/{scan}.png",
    log:
        "logs/plot/{method}/{scan}.log",
    benchmark:
        "benchmarks/plot/{method}/{scan}.tsv"
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain plot {input.prediction} {output} --truth {input.truth} > {log} 2>&1"

rule evaluate:
    input:
        prediction="results/strain/{method}/{scan}.zarr",
        truth="results/scans/{scan}.truth.zarr",
    output:
        "results/evaluation/{method}/{scan}.json",
    log:
        "logs/evaluate/{method}/{scan}.log",
    benchmark:
        "benchmarks/evaluate/{method}/{scan}.tsv"
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain evaluate {input.prediction} {input.truth} --json {output} > {log} 2>&1"

rule report:
    input:
        scores=expand("results/evaluation/{method}/{scan}.json", method=REPORTED, scan=SCANS),
        figures=expand("results/figures/{method}/{scan}.png", method=REPORTED, scan=SCANS),
    output:
        "results/report.md",
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    params:
        config=config,
    conda:
        "../../envs/stemstrain.yaml"
    script:
        "../scripts/report.py"

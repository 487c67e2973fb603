# The evaluation grid: every method on thickness × dose test scans (config `evaluate`). It joins
# `rule all` only when the grid is non-empty, so the default demo stays fast.
GRID = config.get("evaluate", {})
# Without a list the grid scores every method, the network among them.
GRID_NEEDS_MODEL = "unet" in GRID.get("methods", ["unet"])
GRID_OUTPUTS = (
    [
        "results/evaluation/table.csv",
        "results/evaluation/table.md",
        "results/evaluation/rmse_vs_thickness.png",
    ]
    if GRID.get("thicknesses_nm") and GRID.get("doses")
    else []
)


rule evaluate_grid:
    input:
        config=f"results/config/{RUN}.yaml",
        # The trained network only when the grid scores it.
        model=[f"results/train/{RUN}/model.pt"] if GRID_NEEDS_MODEL else [],
    output:
        table="results/evaluation/table.csv",
        markdown="results/evaluation/table.md",
        figure="results/evaluation/rmse_vs_thickness.png",
    log:
        "logs/evaluate_grid/grid.log",
    benchmark:
        "benchmarks/evaluate_grid/grid.tsv"
    threads: workflow.cores
    resources:
        mem_mb=8000,
    params:
        model=lambda wildcards, input: f"--model {input.model}" if input.model else "",
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain evaluate-grid {input.config} {params.model} --out-dir results/evaluation"
        " --work-dir results/grid > {log} 2>&1"

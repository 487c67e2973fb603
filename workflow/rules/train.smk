rule train:
    input:
        config=f"results/config/{RUN}.yaml",
        data="results/simulate/{run}/train.zarr",
    output:
        # Checkpoints, metrics and curves live beside the exported model and survive a re-run,
        # so an interrupted training resumes.
        model="results/train/{run}/model.pt",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=8000,
    conda:
        "../../envs/stemstrain.yaml"
    shell:
        "stemstrain train {input.config} {input.data} results/train/{wildcards.run} --resume > {log} 2>&1"

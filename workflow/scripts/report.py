"""Snakemake adapter: write results/report.md from the evaluation JSON files."""

from stemstrain.evaluate.report import write_report

write_report(snakemake.input.scores, snakemake.input.figures, snakemake.output[0], snakemake.params.config)  # noqa: F821

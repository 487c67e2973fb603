"""Snakemake adapter: write the merged, validated configuration that every stage reads."""

import yaml

from stemstrain.config import parse_config

parse_config(snakemake.params.resolved, "snakemake config")  # noqa: F821 - fail early on bad options
with open(snakemake.output[0], "w") as handle:  # noqa: F821
    yaml.safe_dump(dict(snakemake.params.resolved), handle, sort_keys=False)  # noqa: F821

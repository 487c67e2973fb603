"""Evaluation: scores of a strain map against truth, the thickness × dose grid, the workflow's report."""

from stemstrain.evaluate.score import evaluate_strain, summary_line

__all__ = ["evaluate_strain", "summary_line"]

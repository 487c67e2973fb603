"""Simulation: abTEM multislice training sets and strained 4D test scans with known truth."""

from stemstrain.simulate.dataset import simulate_training_set
from stemstrain.simulate.scan import simulate_scan

__all__ = ["simulate_scan", "simulate_training_set"]

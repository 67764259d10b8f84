"""Evaluation: identity scorers, baselines and the `anydoor eval` runner (no Lightning)."""

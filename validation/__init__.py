"""Validation: measured CPU/GPU baselines with their environment, and comparisons."""

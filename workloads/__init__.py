"""Workload traces recorded from real autoregressive models."""

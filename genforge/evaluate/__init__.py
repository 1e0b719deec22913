"""Metrics, explanations and plots."""

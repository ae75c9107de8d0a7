"""Evaluation of LMLMs against their standard baselines (docs/method.md §7)."""

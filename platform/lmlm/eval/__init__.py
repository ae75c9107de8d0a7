"""Evaluation of LMLMs against their standard baselines (LMLM.md §7)."""

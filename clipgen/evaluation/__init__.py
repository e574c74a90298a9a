"""Evaluation suites: prompt sets, sharded resumable generation, metrics and reports."""

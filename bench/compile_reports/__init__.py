"""Compile reports of the paper configs for TPU slices (`python -m bench.compile_reports`)."""

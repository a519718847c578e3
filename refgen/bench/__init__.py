"""Benchmark of the generator against the original script's method, at the real model's shape.

Run it with ``python -m refgen.bench`` (or ``nox -s bench``). It builds, once, a random-weight
checkpoint with the exact Qwen3-1.7B-Base configuration in a local Hugging Face cache layout, then
times the baseline and our ``generate`` as child processes, alternating them, and prints a table.
Importing this package must stay cheap (no torch): the children import what they measure.
"""

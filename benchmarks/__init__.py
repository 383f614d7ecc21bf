"""The benchmarks (`python benchmarks/NAME.py`, see scripts/bench.sh). A package so that
tests import the shared config skeleton as `benchmarks.bench_common` from the repository root."""

"""The one-shot GPU benchmark (``benchmarks/gpu/run.sh``): cases, model sizes, the suite driver, the carry plan."""

"""reformer-bench: the harness that runs suites of grid points against reformer_impl and reports."""

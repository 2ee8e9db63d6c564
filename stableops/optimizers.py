"""stableops.optimizers: PLACEHOLDER, being implemented."""

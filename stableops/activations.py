"""stableops.activations: PLACEHOLDER, being implemented."""

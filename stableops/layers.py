"""stableops.layers: PLACEHOLDER, being implemented."""

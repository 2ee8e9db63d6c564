"""stableops.callbacks: PLACEHOLDER, being implemented."""

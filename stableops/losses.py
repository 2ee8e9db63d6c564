"""stableops.losses: PLACEHOLDER, being implemented."""

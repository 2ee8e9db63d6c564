"""Cross-entropy family losses: PLACEHOLDER, being implemented."""

__all__ = []

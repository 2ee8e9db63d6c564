"""Regression, overlap and hinge losses: PLACEHOLDER, being implemented."""

__all__ = []

"""Piecewise activations: ELU and LeakyReLU.

PLACEHOLDER: being implemented; every function below raises NotImplementedError."""

from __future__ import annotations

import tensorflow as tf  # noqa: F401


def elu(x, alpha=1.0):
    raise NotImplementedError('elu is not implemented yet')


def leaky_relu(x, negative_slope=0.2):
    raise NotImplementedError('leaky_relu is not implemented yet')

"""The log/exp family: logsumexp, softmax, log-space sigmoid and softplus, log1mexp, log_cosh.

PLACEHOLDER: being implemented; every function below raises NotImplementedError."""

from __future__ import annotations

import tensorflow as tf  # noqa: F401


def logsumexp(x, axis=-1, keepdims=False, where=None):
    raise NotImplementedError('logsumexp is not implemented yet')


def softmax(x, axis=-1, where=None):
    raise NotImplementedError('softmax is not implemented yet')


def log_softmax(x, axis=-1, where=None):
    raise NotImplementedError('log_softmax is not implemented yet')


def logaddexp(x, y):
    raise NotImplementedError('logaddexp is not implemented yet')


def log1mexp(x):
    raise NotImplementedError('log1mexp is not implemented yet')


def log_sigmoid(x):
    raise NotImplementedError('log_sigmoid is not implemented yet')


def softplus(x):
    raise NotImplementedError('softplus is not implemented yet')


def softplus_inverse(x):
    raise NotImplementedError('softplus_inverse is not implemented yet')


def log_cosh(x):
    raise NotImplementedError('log_cosh is not implemented yet')

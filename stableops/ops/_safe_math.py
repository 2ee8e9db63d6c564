"""Safe elementwise math: division, log, sqrt, norms, clipping, xlogy.

PLACEHOLDER: being implemented; every function below raises NotImplementedError."""

from __future__ import annotations

import tensorflow as tf  # noqa: F401


def safe_divide(x, y, fill=0.0):
    raise NotImplementedError('safe_divide is not implemented yet')


def safe_log(x):
    raise NotImplementedError('safe_log is not implemented yet')


def safe_sqrt(x):
    raise NotImplementedError('safe_sqrt is not implemented yet')


def safe_norm(x, axis=-1, keepdims=False):
    raise NotImplementedError('safe_norm is not implemented yet')


def l2_normalize(x, axis=-1):
    raise NotImplementedError('l2_normalize is not implemented yet')


def clip_preserve_gradient(x, lo, hi):
    raise NotImplementedError('clip_preserve_gradient is not implemented yet')


def xlogy(x, y):
    raise NotImplementedError('xlogy is not implemented yet')

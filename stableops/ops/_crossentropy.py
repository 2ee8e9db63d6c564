"""Cross-entropies (elementwise binary, categorical, sparse categorical).

PLACEHOLDER: being implemented; every function below raises NotImplementedError."""

from __future__ import annotations

import tensorflow as tf  # noqa: F401


def binary_crossentropy(target, output, from_logits=False):
    raise NotImplementedError('binary_crossentropy is not implemented yet')


def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    raise NotImplementedError('categorical_crossentropy is not implemented yet')


def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    raise NotImplementedError('sparse_categorical_crossentropy is not implemented yet')

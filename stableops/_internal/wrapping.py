"""``functools.wraps`` for the public functions, without the ``__wrapped__`` link.

A ``tf.function`` that takes a Python function as an argument (``step(x, y,
stableops.losses.mean_squared_error)``, or as a default argument) follows its
``__wrapped__`` links to their end and calls the object there
(``trace_type_builder.from_value`` in TensorFlow). Through ``functools.wraps`` that end
was a loss's bare formula: no rank alignment (a ``[3, 1]`` against a ``[3]`` loss
broadcast to ``[3, 3]``), float16 not computed in float32 (``inf`` for 90000), no
compiled kernel. The public callables keep the name, docstring and signature, and end
the chain themselves.
"""

from __future__ import annotations

import functools
import inspect


def wraps_public(wrapped):
    """``functools.wraps(wrapped)``, with ``__signature__`` in place of ``__wrapped__``."""

    def decorate(wrapper):
        functools.update_wrapper(wrapper, wrapped)
        wrapper.__signature__ = inspect.signature(wrapped)
        del wrapper.__wrapped__
        return wrapper

    return decorate

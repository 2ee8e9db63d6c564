"""Keep AutoGraph out of stableops: its code is plain graph code.

A user's ``tf.function`` (AutoGraph on by default) converts every function it
calls, and everything those call, unless TensorFlow's conversion rules mark the
module as graph code already, as they mark ``tensorflow``, ``keras`` and
``tensorflow_probability``. stableops has Python control flow on static values
only, so converting it changes nothing but the first trace: the first
``stableops.ops.elu`` in a user's ``tf.function`` took 1.7 s to trace with
conversion and 0.2 s without (measured, 2 cores).
"""

from __future__ import annotations


def exclude_from_autograph(package: str) -> None:
    """Add ``package`` to AutoGraph's do-not-convert rules.

    The rules are TensorFlow's own, not public API: where they are missing,
    ``tf.autograph.experimental.do_not_convert`` on the kernels and on the
    losses' entry points still keeps most of stableops unconverted.
    """
    try:
        from tensorflow.python.autograph.core import config
    except ImportError:  # pragma: no cover - a TF without the module
        return
    rules = tuple(getattr(config, "CONVERSION_RULES", ()))
    if not any(isinstance(r, config.DoNotConvert) and r.matches(package) for r in rules):
        config.CONVERSION_RULES = (config.DoNotConvert(package), *rules)

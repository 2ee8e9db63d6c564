"""Silence TensorFlow's native (C++) log lines for the duration of a block.

``tf.debugging.enable_check_numerics`` and XLA's dropped-assert notices log
through TensorFlow's C++ logger, straight to file descriptor 2, with a dump of
whole tensors; ``TF_CPP_MIN_LOG_LEVEL`` no longer applies once TensorFlow is
imported. The doctor captures those errors itself, so while it provokes them
it points descriptor 2 at ``/dev/null`` (Python's ``sys.stderr`` is flushed
first and restored after).
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_native_stderr():
    """Redirect file descriptor 2 to ``/dev/null`` inside the block (no-op if unavailable)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = 2
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)

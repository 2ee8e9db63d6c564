"""``stableops.losses``: drop-in replacements for ``keras.losses`` that stay finite.

Same class names, constructor signatures, defaults and results as Keras 3.15
on ordinary inputs; finite, accurate values and gradients where Keras returns
``inf``, ``nan``, a silently clipped value or a zero gradient. One module per
family (see ``losses/_base.py`` for the machinery they share).
"""

from stableops.losses import (
    _binary,
    _categorical,
    _ctc,
    _distribution,
    _gaussian,
    _hinge,
    _metric_learning,
    _overlap,
    _regression,
    _similarity,
)
from stableops.losses._binary import *  # noqa: F401,F403
from stableops.losses._categorical import *  # noqa: F401,F403
from stableops.losses._ctc import *  # noqa: F401,F403
from stableops.losses._distribution import *  # noqa: F401,F403
from stableops.losses._gaussian import *  # noqa: F401,F403
from stableops.losses._hinge import *  # noqa: F401,F403
from stableops.losses._metric_learning import *  # noqa: F401,F403
from stableops.losses._overlap import *  # noqa: F401,F403
from stableops.losses._regression import *  # noqa: F401,F403
from stableops.losses._similarity import *  # noqa: F401,F403

__all__ = sorted(
    name
    for module in (
        _binary, _categorical, _ctc, _distribution, _gaussian, _hinge,
        _metric_learning, _overlap, _regression, _similarity,
    )
    for name in module.__all__
)

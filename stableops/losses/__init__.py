"""``stableops.losses``: drop-in replacements for ``keras.losses`` that stay finite.

Same class names, constructor signatures, defaults and results as Keras 3.15
on ordinary inputs; finite, accurate values and gradients where Keras returns
``inf``, ``nan``, a silently clipped value or a zero gradient.
"""

from stableops.losses._ctc import *  # noqa: F401,F403
from stableops.losses._ctc import __all__ as _ctc_all
from stableops.losses._gaussian import *  # noqa: F401,F403
from stableops.losses._gaussian import __all__ as _gaussian_all
from stableops.losses._metric_learning import *  # noqa: F401,F403
from stableops.losses._metric_learning import __all__ as _metric_learning_all
from stableops.losses._probabilistic import *  # noqa: F401,F403
from stableops.losses._probabilistic import __all__ as _probabilistic_all
from stableops.losses._regression import *  # noqa: F401,F403
from stableops.losses._regression import __all__ as _regression_all

__all__ = sorted(_ctc_all + _gaussian_all + _metric_learning_all + _probabilistic_all + _regression_all)

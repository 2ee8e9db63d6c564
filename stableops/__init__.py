"""stableops: Keras 3 losses, layers and ops that stay finite, and a NaN doctor.

    import stableops
    model.compile(loss=stableops.losses.BinaryCrossentropy(), optimizer="adam")
    report = stableops.diagnose(model, x, y)
"""

__version__ = "0.1.0"

from stableops._internal.autograph import exclude_from_autograph  # noqa: E402

exclude_from_autograph(__name__)  # plain graph code: a user's tf.function traces it as it is

from stableops import activations, callbacks, layers, losses, ops, optimizers  # noqa: E402
from stableops.doctor import Report, diagnose  # noqa: E402

__all__ = [
    "__version__",
    "activations",
    "callbacks",
    "diagnose",
    "layers",
    "losses",
    "ops",
    "optimizers",
    "Report",
]

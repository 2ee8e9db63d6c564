"""``stableops.ops``: pure, XLA-clean TensorFlow kernels with the numerics contract.

Every public op here keeps the contract in docs/design.md: finite values and
gradients for finite inputs in float16, bfloat16, float32 and float64; NaN in,
NaN out; a stated ULP budget; half precision computed in float32; the same
answer in eager, ``tf.function`` and XLA. Every call runs as one XLA-compiled
computation with its backward pass (see ``stableops._internal.kernel.xla_kernel``).
"""

from stableops._internal.dtypes import DTypeLimits, dtype_limits
from stableops._internal.where import safe_where
from stableops.ops._activations import elu, leaky_relu
from stableops.ops._crossentropy import (
    binary_crossentropy,
    categorical_crossentropy,
    sparse_categorical_crossentropy,
)
from stableops.ops._logexp import (
    log1mexp,
    log_cosh,
    log_sigmoid,
    logaddexp,
    softplus,
    softplus_inverse,
)
from stableops.ops._safe_math import (
    clip_preserve_gradient,
    l2_normalize,
    safe_divide,
    safe_log,
    safe_norm,
    safe_sqrt,
    xlogy,
)
from stableops.ops._softmax import log_softmax, logsumexp, softmax

__all__ = [
    "DTypeLimits",
    "binary_crossentropy",
    "categorical_crossentropy",
    "clip_preserve_gradient",
    "dtype_limits",
    "elu",
    "l2_normalize",
    "leaky_relu",
    "log1mexp",
    "log_cosh",
    "log_sigmoid",
    "log_softmax",
    "logaddexp",
    "logsumexp",
    "safe_divide",
    "safe_log",
    "safe_norm",
    "safe_sqrt",
    "safe_where",
    "softmax",
    "softplus",
    "softplus_inverse",
    "sparse_categorical_crossentropy",
    "xlogy",
]

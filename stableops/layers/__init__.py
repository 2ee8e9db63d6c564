"""``stableops.layers``: drop-in Keras layers that stay finite, and a robust input scaler.

``LeakyReLU``, ``ELU`` and ``Softmax`` have the constructor signatures,
defaults, masking behaviour and (on ordinary inputs) the results of their
``keras.layers`` namesakes; the math is ``stableops.ops``'s, so they keep its
numerics contract (finite values and gradients for every finite input, half
precision computed in float32, the same answer in eager, graph and XLA).

``RobustScaler`` is a preprocessing layer for the most common cause of NaN
losses, unscaled features with outliers: ``adapt()`` learns each feature's
median and interquartile range, ``call`` maps ``(x - median) / iqr`` and clips
the result to a bounded range.

All layers are registered as ``"stableops>ClassName"``, so models that use them
save to ``.keras`` and load back without ``custom_objects``.
"""

from stableops.layers._activation_layers import ELU, LeakyReLU, Softmax
from stableops.layers._robust_scaler import RobustScaler

__all__ = ["ELU", "LeakyReLU", "RobustScaler", "Softmax"]

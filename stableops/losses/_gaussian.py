"""Likelihood losses Keras does not ship, which users write by hand (unstably).

* :class:`GaussianNLL` / :func:`gaussian_nll`: heteroscedastic regression,
  ``0.5 (log var + (y - mu)^2 / var)`` (PyTorch's ``GaussianNLLLoss``), from a
  variance (floored from the dtype) or a log-variance (no floor needed).
* :class:`GaussianKL` / :func:`gaussian_kl`: the VAE's KL term
  ``0.5 sum(mu^2 + exp(log_var) - 1 - log_var)``, against a standard normal or a
  given normal, computed without overflowing ``exp(log_var)``.
* :class:`PoissonNLL` / :func:`poisson_nll`: Poisson regression from a log-rate
  (``exp(x) - y x``, PyTorch's ``PoissonNLLLoss(log_input=True)``) or a rate,
  with PyTorch's optional Stirling term.

Input conventions (one Keras output each, so ``model.compile(loss=...)`` works):

* ``GaussianNLL``: ``y_true`` is ``[..., d]``; ``y_pred`` is ``[..., 2 d]``, the
  means followed by the variances (or log-variances) on the last axis
  (``keras.layers.Concatenate()([mean, variance])``). A ``y_true`` of rank one
  less (``[batch]`` with ``y_pred`` ``[batch, 2]``) is read as ``d = 1``.
* ``GaussianKL``: ``y_pred`` is ``[..., 2 d]``, the means followed by the
  log-variances; ``y_true`` is ignored (pass zeros, or any array: Keras needs a
  target per output). The function form :func:`gaussian_kl` takes
  ``(mean, log_variance)`` directly, for ``add_loss`` or a custom step.
* ``PoissonNLL``: ``y_true`` (counts) and ``y_pred`` (log-rates, or rates) have
  the same shape, as Keras's ``Poisson``.

Per sample, the NLLs average the per-element terms over the last axis (so
Keras's default reduction gives PyTorch's ``reduction="mean"``); the KL sums
over the latent axis (the usual VAE term). Everything computes half precision in
float32 and returns the computing dtype; the kernels are in ``ops/_gaussian.py``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from stableops._internal.checks import as_float_tensor, choice, flag, number, real_tensor
from stableops._internal.dtypes import compute_dtype
from stableops.losses._base import REDUCTION, SaturatingInputLoss, loss_class, public_function
from stableops.losses._gaussian_kernels import (
    gaussian_kl_kernel,
    gaussian_nll_kernel,
    poisson_nll_kernel,
)
from stableops.losses._inputs import graph_code, prepare

__all__ = [
    "GaussianKL",
    "GaussianNLL",
    "PoissonNLL",
    "gaussian_kl",
    "gaussian_nll",
    "poisson_nll",
]

_VARIANCE_KINDS = ("variance", "log_variance")


# ----------------------------------------------------------------------------
# Argument checks (static, outside the compiled kernels)
# ----------------------------------------------------------------------------


def _variance_kind(value):
    return choice(value, "variance", _VARIANCE_KINDS)


def _no_ragged(name, *tensors):
    if any(isinstance(t, tf.RaggedTensor) for t in tensors):
        raise TypeError(
            f"`{name}` does not support ragged tensors; pass dense tensors (`.to_tensor()`)"
        )


def _stacked_prediction(y_pred, name):
    """``y_pred`` as a floating tensor of rank >= 1 whose last axis (when known) is even."""
    y_pred = as_float_tensor(y_pred, "y_pred", keras.config.floatx())
    if y_pred.shape.rank == 0:
        raise ValueError(
            f"`{name}`: `y_pred` must have rank >= 1 (values stacked on the last axis), "
            "got a scalar"
        )
    width = y_pred.shape[-1] if y_pred.shape.rank is not None else None
    if width is not None and width % 2:
        raise ValueError(
            f"`{name}`: the last axis of `y_pred` must hold two halves (size 2 d), "
            f"got shape {y_pred.shape}"
        )
    return y_pred


def _nll_inputs(y_true, y_pred, name):
    """Validate ``y_true [..., d]`` against ``y_pred [..., 2 d]`` (see the module docstring)."""
    _no_ragged(name, y_true, y_pred)
    y_pred = _stacked_prediction(y_pred, name)
    y_true = real_tensor(y_true, "y_true", dtype_hint=compute_dtype(y_pred.dtype))
    if y_true.shape.rank is not None and y_pred.shape.rank is not None:
        if y_true.shape.rank == y_pred.shape.rank - 1:
            y_true = tf.expand_dims(y_true, -1)
        expected = y_pred.shape[:-1].concatenate(
            [None if y_pred.shape[-1] is None else y_pred.shape[-1] // 2]
        )
        if not y_true.shape.is_compatible_with(expected):
            raise ValueError(
                f"`{name}`: `y_pred` must be `y_true`'s shape with a last axis twice as long "
                f"(means, then variances), got `y_true` {y_true.shape} and `y_pred` {y_pred.shape}"
            )
    return y_true, y_pred


def _prior(value, name, dtype):
    """A prior parameter: a Python number (checked, finite) or a tensor (cast to ``dtype``)."""
    is_array = hasattr(value, "shape") and getattr(value, "ndim", 0)
    if isinstance(value, (tf.Tensor, tf.Variable)) or is_array:
        value = as_float_tensor(value, name, dtype)
        return tf.cast(value, dtype)
    return number(value, name)


# ----------------------------------------------------------------------------
# Function forms
# ----------------------------------------------------------------------------


@public_function
@graph_code
def gaussian_nll(y_true, y_pred, full=False, *, variance="variance"):
    """Gaussian negative log-likelihood with a predicted variance (PyTorch's ``GaussianNLLLoss``).

    Formula:
        Per element, with ``y_pred = concat([mu, s], -1)``:
        ``0.5 * (log v + (y - mu)^2 / v)``, ``v = max(s, floor)``
        (``variance="variance"``) or
        ``0.5 * (s + (y - mu)^2 * exp(-s))`` (``variance="log_variance"``),
        plus ``0.5 * log(2 pi)`` when ``full``; averaged over the last axis.

    Numerical stability:
        ``variance="variance"``: the variance is floored at the machine epsilon
        of the computing dtype (1.19e-7 for float16, bfloat16 and float32
        inputs, 2.2e-16 for float64; PyTorch clamps at ``1e-6``): a zero or
        negative variance gives a finite value and gradient (hand-written: NaN
        or ``inf``). The floor is straight-through, as PyTorch's clamp under
        ``no_grad``: below it the gradient is the one at the floor,
        ``0.5 (1 - e^2 / floor) / floor``, which pushes the variance up whenever
        the error exceeds the floor's square root. ``e^2 / v`` is formed as
        ``e * (e / v)``, halved after: it overflows where twice the result does
        (in float32 for errors above 6.4e15 at the floor, where the result
        itself passes the max near 9e15; the gradient above 2.2e12).
        ``variance="log_variance"``: no floor. ``e^2 exp(-s)`` is formed as
        ``r^2``, ``r = e exp(-s/2)``, the exponential applied as two factors
        ``exp(-s/4)`` where one would overflow, so the value is finite wherever
        twice it is representable (``r^2`` is halved after: an error of 3e11 at a
        log-variance of -36, a loss of 1.9e38, gives ``inf``): a log-variance of
        -1000 with a zero error gives
        -500 (hand-written: ``0 * inf = nan``); with a nonzero error it is
        ``+inf``, the true value beyond the float range (gradient ``inf``/``-inf``,
        never NaN). Custom gradients in both forms. Half precision computes in
        float32 (hand-written float16 overflows ``e^2`` at an error of 256).
        NaN in any input gives NaN.
        Error budget: 4 ULP of ``max(|log v|, e^2 / v)`` (float32 result, last
        axis of 1).

    Args:
        y_true: targets ``[..., d]`` (or ``[batch]`` for ``d = 1``); real dtype.
        y_pred: ``[..., 2 d]``: the means, then the variances (or log-variances).
        full: add the constant ``0.5 * log(2 pi)`` (the full log-likelihood).
        variance: keyword-only; ``"variance"`` (default) or ``"log_variance"``:
            what the second half of ``y_pred`` holds.

    Returns:
        ``[...]`` (one value per sample) in ``y_pred``'s computing dtype.

    Raises:
        ValueError: if the last axis of ``y_pred`` is not twice ``y_true``'s,
            or for an unknown ``variance``.

    Example:
        >>> gaussian_nll([[1.0]], [[0.0, 0.0]]).numpy()  # zero variance: 0.5 (log(eps) + 1 / eps)
        array([4.1943e+06], dtype=float32)
        >>> gaussian_nll([[1.0]], [[0.0, 0.0]], variance="log_variance").numpy()
        array([0.5], dtype=float32)
    """
    full = flag(full, "full")
    log_variance = _variance_kind(variance) == "log_variance"
    y_true, y_pred = _nll_inputs(y_true, y_pred, "gaussian_nll")
    return gaussian_nll_kernel(y_true, y_pred, full=full, log_variance=log_variance)


@public_function
@graph_code
def gaussian_kl(mean, log_variance, *, prior_mean=0.0, prior_log_variance=0.0):
    """KL divergence of diagonal Gaussians from a prior: the VAE's KL term.

    Formula:
        ``KL(N(mu, exp(s)) || N(m, exp(p)))
        = 0.5 * sum(exp(s - p) - 1 - (s - p) + (mu - m)^2 * exp(-p), axis=-1)``;
        with the default standard-normal prior
        ``0.5 * sum(mu^2 + exp(s) - 1 - s, axis=-1)``.

    Numerical stability:
        Computed as ``g(s - p) + 0.5 (mu - m)^2 exp(-p)``, both terms
        nonnegative (no cancellation between them). ``g(d) = (exp(d) - 1 - d)/2``
        is a polynomial ``d^2 P(d)`` on ``[-1, 2]`` (accurate near 0, where
        ``exp(d) - 1 - d`` cancels) and ``exp(d)/2 - (1 + d)/2`` elsewhere, with
        ``exp(d)/2`` as ``exp(d - K) M`` (``K`` about ``1 + log 2``, ``M``
        about ``e``), so it is finite while the result is: ``inf`` only for
        ``s - p`` above ``log_max + log 2`` (89.4 in float32). Half precision
        computes in float32: a float16 log-variance of 12 gives 81370.9
        (hand-written float16: ``exp(12) = inf``). The mean term uses the same
        overflow-free ``(mu - m) exp(-p/2)`` as :func:`gaussian_nll`.
        Gradients (custom): ``(mu - m) exp(-p)`` and ``expm1(s - p) / 2``, the
        latter as ``exp(s - p)/2 - 1/2`` from the value's exponential (within
        a few ULP of the larger of its two terms, as the hand-written loss's
        gradient: a speed trade, see ``benchmarks/results/summary.md``) and
        ``d/2 + d^2/4`` for ``d = s - p`` near 0 (exactly 0 at ``s = p``).
        NaN in any input gives NaN.
        Error budget: 4 ULP of the float32 result (last axis of 1).

    Args:
        mean: posterior means ``[..., d]``.
        log_variance: posterior log-variances, same shape.
        prior_mean: keyword-only; the prior's mean, a number or a tensor
            broadcastable to ``mean``. Defaults to 0.
        prior_log_variance: keyword-only; the prior's log-variance, a number or
            a tensor broadcastable to ``mean``. Defaults to 0.

    Returns:
        ``[...]`` (summed over the last axis) in ``mean``'s computing dtype.

    Raises:
        ValueError: if ``mean`` and ``log_variance`` differ in shape, or a
            number prior is NaN or infinite.

    Example:
        >>> gaussian_kl([[0.0, 1.0]], [[0.0, 0.0]]).numpy()
        array([0.5], dtype=float32)
        >>> import tensorflow as tf
        >>> mean, log_variance = tf.constant([[0.0]], tf.float16), tf.constant([[12.0]], tf.float16)
        >>> gaussian_kl(mean, log_variance).numpy()  # hand-written float16: inf
        array([81370.9], dtype=float32)
    """
    _no_ragged("gaussian_kl", mean, log_variance)
    mean = as_float_tensor(mean, "mean", keras.config.floatx())
    log_variance = as_float_tensor(log_variance, "log_variance", keras.config.floatx())
    if not mean.shape.is_compatible_with(log_variance.shape):
        raise ValueError(
            "`mean` and `log_variance` must have the same shape, "
            f"got {mean.shape} and {log_variance.shape}"
        )
    if mean.shape.rank == 0:
        raise ValueError(
            "`gaussian_kl` sums over the last axis: `mean` must have rank >= 1, got a scalar"
        )
    log_variance = tf.cast(log_variance, mean.dtype)
    dtype = compute_dtype(mean.dtype)
    return gaussian_kl_kernel(
        mean,
        log_variance,
        prior_mean=_prior(prior_mean, "prior_mean", dtype),
        prior_log_variance=_prior(prior_log_variance, "prior_log_variance", dtype),
    )


def _gaussian_kl_stacked(y_true, y_pred, prior_mean=0.0, prior_log_variance=0.0):
    """``gaussian_kl`` of ``y_pred = concat([mean, log_variance], -1)``; ``y_true`` is ignored."""
    _no_ragged("GaussianKL", y_pred)
    y_pred = _stacked_prediction(y_pred, "GaussianKL")
    mean, log_variance = tf.split(y_pred, 2, axis=-1)
    return gaussian_kl(
        mean, log_variance, prior_mean=prior_mean, prior_log_variance=prior_log_variance
    )


@public_function
@graph_code
def poisson_nll(y_true, y_pred, log_input=True, full=False):
    """Poisson negative log-likelihood (PyTorch's ``PoissonNLLLoss``).

    Formula:
        Per element: ``exp(x) - y * x`` (``log_input``, ``x`` the log-rate) or
        ``p - y * log(max(p, floor))`` (``p`` the rate), plus, when ``full``,
        the Stirling term ``y log y - y + 0.5 log(2 pi y)`` for ``y > 1``;
        averaged over the last axis.

    Numerical stability:
        ``log_input``: below ``log_max - 1`` (87.7 in float32) the formula as
        written; above it ``exp(x)`` would overflow, so the value is
        ``a (a - y (x / a))`` with ``a = exp(x/2)``: finite wherever it is
        representable (``inf`` beyond, hand-written ``inf``/``nan``); the
        gradient ``exp(x) - y`` likewise (``inf`` only beyond the float range,
        never NaN). Rates: ``0 * log(0) = 0`` for a zero count; the rate inside
        the log is floored at the machine epsilon of the computing dtype
        (1.19e-7 for float16, bfloat16 and float32 inputs; PyTorch adds
        ``1e-8``; stableops's ``Poisson`` floors at the smallest normal but
        stops the gradient there), straight-through: the slope below the floor
        is ``1 - y / floor``, finite for counts below 4e31, and pushes a zero
        or negative rate up where the count is positive (hand-written: NaN for
        a negative rate). The Stirling term is written
        ``y (log y - 1) + (log y + log 2 pi) / 2`` so ``2 pi y`` cannot
        overflow. Custom gradients. Half precision computes in float32. NaN
        gives NaN.
        Error budget: 4 ULP of ``max(exp(x), |y x|)`` (float32 result, last
        axis of 1).

    Args:
        y_true: observed counts, ``[..., d]``; real dtype.
        y_pred: log-rates (``log_input=True``) or rates, the same shape.
        log_input: whether ``y_pred`` holds log-rates (PyTorch's default).
        full: add the Stirling approximation of ``log(y!)``.

    Returns:
        ``[...]`` (one value per sample) in ``y_pred``'s computing dtype.

    Example:
        >>> poisson_nll([[2.0]], [[0.0]]).numpy()
        array([1.], dtype=float32)
        >>> poisson_nll([[2e36]], [[89.0]]).numpy()  # finite; hand-written: inf
        array([2.70961e+38], dtype=float32)
    """
    log_input = flag(log_input, "log_input")
    full = flag(full, "full")
    _no_ragged("poisson_nll", y_true, y_pred)
    y_true, y_pred = prepare(y_true, y_pred, "poisson_nll")
    return poisson_nll_kernel(y_true, y_pred, log_input=log_input, full=full)


# ----------------------------------------------------------------------------
# Loss classes
# ----------------------------------------------------------------------------

@loss_class
class GaussianNLL(SaturatingInputLoss):
    """Gaussian negative log-likelihood (heteroscedastic regression); PyTorch's ``GaussianNLLLoss``.

    ``y_pred`` stacks the means and the variances on the last axis: a model
    outputs ``keras.layers.Concatenate()([mean, variance])`` (``[batch, 2 d]``
    for targets ``[batch, d]``). ``variance`` says what the second half holds:
    ``"variance"`` (default; floored at the dtype's machine epsilon, e.g. after
    a ``softplus``) or ``"log_variance"`` (a linear output; no floor needed).
    See :func:`gaussian_nll`.

    Args:
        full: add the constant ``0.5 * log(2 pi)`` per element.
        {common}
        variance: keyword-only, ``"variance"`` or ``"log_variance"``.

    Example:
        >>> float(GaussianNLL(variance="log_variance")([[1.0]], [[0.0, 0.0]]))
        0.5
    """

    def __init__(self, full=False, reduction=REDUCTION, name="gaussian_nll", dtype=None, *,
                 variance="variance"):
        full = flag(full, "full")
        variance = _variance_kind(variance)
        super().__init__(gaussian_nll, reduction, name, dtype, full=full, variance=variance)


@loss_class
class GaussianKL(SaturatingInputLoss):
    """KL divergence of the encoder's diagonal Gaussian from a prior: the VAE's KL term.

    ``y_pred`` stacks the means and the log-variances on the last axis
    (``keras.layers.Concatenate()([z_mean, z_log_var])``); ``y_true`` is
    ignored (give that output zeros as its target; ``None`` is accepted when
    calling the loss directly). One value per sample, summed
    over the latent axis. See :func:`gaussian_kl` (the function form takes
    ``mean`` and ``log_variance`` separately, for ``add_loss``).

    Args:
        prior_mean: the prior's mean, a number. Defaults to 0.
        prior_log_variance: the prior's log-variance, a number. Defaults to 0
            (a standard normal prior).
        {common}

    Example:
        >>> float(GaussianKL()([[0.0, 0.0]], [[1.0, 0.0]]))
        0.5
    """

    def __init__(self, prior_mean=0.0, prior_log_variance=0.0, reduction=REDUCTION,
                 name="gaussian_kl", dtype=None):
        prior_mean = number(prior_mean, "prior_mean")
        prior_log_variance = number(prior_log_variance, "prior_log_variance")
        super().__init__(
            _gaussian_kl_stacked, reduction, name, dtype,
            prior_mean=prior_mean, prior_log_variance=prior_log_variance,
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        # y_true is ignored; `loss(None, y_pred)` is allowed (Keras would fail converting None).
        y_true = tf.zeros((), tf.float32) if y_true is None else y_true
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)


@loss_class
class PoissonNLL(SaturatingInputLoss):
    """Poisson negative log-likelihood; PyTorch's ``PoissonNLLLoss``.

    With ``log_input=True`` (default) ``y_pred`` is the log-rate (a linear
    output): ``exp(x) - y x``, finite where the true value is. With
    ``log_input=False`` it is the rate, floored at the dtype's machine epsilon
    inside the log. See :func:`poisson_nll`.

    Args:
        log_input: whether ``y_pred`` holds log-rates.
        full: add the Stirling approximation of ``log(y!)`` for counts above 1.
        {common}

    Example:
        >>> float(PoissonNLL()([[2.0]], [[0.0]]))
        1.0
    """

    def __init__(self, log_input=True, full=False, reduction=REDUCTION, name="poisson_nll",
                 dtype=None):
        log_input = flag(log_input, "log_input")
        full = flag(full, "full")
        super().__init__(poisson_nll, reduction, name, dtype, log_input=log_input, full=full)

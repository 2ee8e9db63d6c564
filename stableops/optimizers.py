"""``stableops.optimizers``: optimizer wrappers that keep a run's weights finite."""

from __future__ import annotations

import copy
import threading

import keras
import tensorflow as tf

__all__ = ["SkipNonFinite"]


class SkipNonFinite(keras.optimizers.Optimizer):
    """Wrap any Keras optimizer; skip every step whose loss or gradients are not all finite.

    A single NaN or inf gradient (one bad batch, a ``0/0`` in a rarely taken
    branch, an overflow) would otherwise be applied to the weights and make
    them NaN for the rest of the run. ``SkipNonFinite`` checks all gradients
    first and, inside the compiled train step, either applies them with the
    wrapped optimizer or leaves the weights *and* the wrapped optimizer's state
    (moments, iteration count) untouched. A step whose *loss* is not finite is
    skipped too, even when its gradients are finite (an ``inf`` loss from an
    overflowing squared error can have finite gradients that are just as
    wrong): Keras's train step passes the loss through ``scale_loss`` before
    differentiating it, and the wrapper remembers whether it was finite. (A
    custom loop that calls ``apply`` without ``scale_loss`` gets the gradient
    check only, and so does this wrapper inside the loss scaler that
    ``compile`` adds under ``mixed_float16``: Keras's scaler does not pass the
    loss on. For the loss check there, wrap the scaler instead:
    ``SkipNonFinite(LossScaleOptimizer(...))``.) The decision is a ``tf.cond`` on a
    tensor, so it works in eager mode, in ``tf.function`` and under XLA
    (``jit_compile=True``), and adds one ``all(isfinite)`` reduction per
    gradient per step.

    The pattern is the one ``keras.optimizers.LossScaleOptimizer`` uses. Under
    ``mixed_float16`` Keras wraps this optimizer in one, which already skips
    steps with overflowing *scaled* gradients; this wrapper then catches what
    remains of the gradients (not a non-finite loss, above). Wrapped the other
    way round, ``SkipNonFinite(LossScaleOptimizer(...))``, the loss scaler gets
    every step (it must see the overflows to lower its scale) and skips
    non-finite ones itself; ``skipped_steps`` counts them. Under a distribution
    strategy the step is skipped on every replica when any replica's gradients
    (or loss) are non-finite; around a loss
    scaler, every replica's scaler is then given NaN gradients, so that each
    skips the step and lowers its scale (Keras's scaler alone decides from its
    replica's local gradients, and applied a step another replica found NaN).
    The learning rate, ``iterations``, ``scale_loss``, EMA finalisation and
    moving averages (``keras.callbacks.SwapEMAWeights``, also under
    ``mixed_float16``) and ``exclude_from_weight_decay`` are those of the
    wrapped optimizer, so learning-rate schedules and callbacks
    (``ReduceLROnPlateau``, NaNGuard) see the inner optimizer. Skipped steps
    do not advance ``iterations``.

    ``SkipNonFinite(LossScaleOptimizer(...))`` is itself an instance of
    ``LossScaleOptimizer``, so ``model.compile``'s default
    ``auto_scale_loss=True`` leaves it as it is instead of adding a second
    loss scaler around it (which would scale the loss once and unscale the
    gradients twice).

    Args:
        optimizer: the optimizer to wrap: an instance, or a name/config that
            ``keras.optimizers.get`` accepts (``"adam"``).
        name: optional name of the wrapper.

    Attributes:
        inner_optimizer: the wrapped optimizer.
        skipped_steps: int64 variable, the number of steps skipped so far
            (also saved with the optimizer's state).

    Example (in training: ``model.compile(optimizer=SkipNonFinite(...), loss=...)``):
        >>> optimizer = SkipNonFinite(keras.optimizers.SGD(0.5))
        >>> weights = keras.Variable([1.0, 2.0])
        >>> optimizer.apply([tf.constant([float("nan"), 1.0])], [weights])  # skipped
        >>> optimizer.apply([tf.constant([1.0, 1.0])])
        >>> weights.numpy()
        array([0.5, 1.5], dtype=float32)
        >>> int(optimizer.skipped_steps.numpy()), int(optimizer.iterations.numpy())
        (1, 1)
    """

    def __new__(cls, optimizer=None, *args, **kwargs):
        # The class follows what is wrapped, as keras.Model(inputs, outputs)
        # gives a keras Functional: around a loss scaler the wrapper must
        # itself be a LossScaleOptimizer (see SkipNonFiniteLossScaler), or
        # compile(auto_scale_loss=True) adds a second scaler around it, while
        # around any other optimizer it must not be one (Keras would then add
        # no scaler under mixed_float16). One class cannot be both, and
        # compile decides by isinstance, so the constructor picks the class.
        # A name or config is resolved first: the config of a loss scaler made a plain
        # wrapper, and compile added a second scaler (the gradients unscaled twice).
        # (A copy: deserializing a loss scaler's config pops from it, and __init__ reads it.)
        if optimizer is not None and not isinstance(optimizer, keras.optimizers.Optimizer):
            optimizer = keras.optimizers.get(copy.deepcopy(optimizer))
        if cls is SkipNonFinite and isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            cls = SkipNonFiniteLossScaler
        return super().__new__(cls)

    def __init__(self, optimizer, name=None, **kwargs):
        if kwargs:
            raise ValueError(
                "SkipNonFinite takes no base-optimizer arguments (set them on the wrapped "
                f"optimizer instead), got {sorted(kwargs)}"
            )
        inner = keras.optimizers.get(optimizer)
        if not isinstance(inner, keras.optimizers.Optimizer):
            raise TypeError(f"`optimizer` must be a keras.optimizers.Optimizer, got {optimizer!r}")
        super().__init__(**self._base_arguments(inner, name))
        self.inner_optimizer = inner
        self.skipped_steps = self.add_variable(
            shape=(),
            initializer="zeros",
            dtype="int64",
            aggregation="only_first_replica",
            name="skipped_steps",
        )

    @staticmethod
    def _base_arguments(inner, name) -> dict:
        """The base class's constructor arguments: no rate of its own (the wrapped one's counts)."""
        return {"learning_rate": 0.0, "name": name}

    # -- state --------------------------------------------------------------
    def build(self, var_list):
        # The wrapped optimizer applies every update and holds all per-variable
        # state; the wrapper's own variables (``skipped_steps``) exist from the
        # constructor. So building the wrapper builds the wrapped optimizer and
        # nothing else: no base-class bookkeeping (it would index variables the
        # wrapper never updates) and, in SkipNonFiniteLossScaler, no
        # LossScaleOptimizer.build (the scale is the wrapped scaler's).
        self.inner_optimizer.build(var_list)
        self.built = True

    @property
    def variables(self):
        return self._variables[:] + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        # Keras's train step calls this on the loss it is about to
        # differentiate, in the same trace (and replica thread) as the
        # following apply(): remember the loss there, for the skip decision.
        self._pending_losses()[threading.get_ident()] = (loss, _trace_key())
        return self.inner_optimizer.scale_loss(loss)

    def _pending_losses(self):
        if getattr(self, "_losses_by_thread", None) is None:
            # Plain attribute (not tracked by Keras): it holds tensors, no state.
            object.__setattr__(self, "_losses_by_thread", {})
        return self._losses_by_thread

    def _loss_is_finite(self):
        """Whether the loss ``scale_loss`` saw for this step is finite (a bool tensor), or None."""
        pending = self._pending_losses().pop(threading.get_ident(), None)
        if pending is None or pending[1] is not _trace_key():
            return None  # apply() without scale_loss(), or a loss from another trace
        return tf.reduce_all(tf.math.is_finite(pending[0]))

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        # The wrapped optimizer applies the weight decay (on the wrapper it was ignored).
        self.inner_optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    # Keras's SwapEMAWeights looks one level below a LossScaleOptimizer, and under
    # mixed_float16 that is this wrapper: the moving averages it swaps, and the
    # variables they average, are the wrapped optimizer's (the wrapper keeps none).
    @property
    def _model_variables_moving_average(self):
        return self.inner_optimizer._model_variables_moving_average

    @property
    def _trainable_variables(self):
        inner = self.__dict__.get("inner_optimizer")
        return [] if inner is None else inner._trainable_variables

    @_trainable_variables.setter
    def _trainable_variables(self, variables):
        pass  # the base constructor's empty list: the wrapped optimizer holds the variables

    # -- the step -------------------------------------------------------------
    @staticmethod
    def all_finite(grads) -> tf.Tensor:
        """A scalar bool tensor: every element of every gradient is finite."""
        checks = []
        for grad in grads:
            if grad is None:
                continue
            if isinstance(grad, tf.IndexedSlices):
                grad = grad.values
            checks.append(tf.reduce_all(tf.math.is_finite(grad)))
        if not checks:
            return tf.constant(True)
        return tf.reduce_all(tf.stack(checks))

    def apply_gradients(self, grads_and_vars):
        grads, trainable_variables = zip(*grads_and_vars)
        self.apply(grads, trainable_variables)
        return self.iterations

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
        if not self.built:
            if trainable_variables is None:
                raise ValueError(
                    "SkipNonFinite must be built on the variables first: pass "
                    "`trainable_variables` or call `optimizer.build(variables)`."
                )
            with tf.name_scope(self.name):
                self.build(trainable_variables)
        loss_finite = self._loss_is_finite()
        in_replica = tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()
        if isinstance(self.inner_optimizer, keras.optimizers.LossScaleOptimizer):
            # The loss scaler must see overflowing *scaled* gradients to lower
            # its scale (skipping them here would skip every step forever); it
            # skips non-finite steps itself, so delegate, and count its skips.
            # A non-finite *unscaled* loss is no overflow of the scale (a
            # lower scale would not help): that step is skipped here.
            if in_replica:
                # The scaler decides from this replica's local gradients (Keras
                # all-reduces them later, inside its apply): the replicas agree
                # first, and where any is non-finite (its loss included) every
                # replica's gradients become NaN, so that every scaler skips the
                # step and lowers its scale. (A cond around the apply cannot sit
                # in a replica context: the apply calls merge_call.)
                grads_finite = _agreed_on_every_replica(self._step_is_finite(grads, loss_finite))
                grads = [_nan_unless(grads_finite, grad) for grad in grads]
            else:
                grads_finite = self.all_finite(grads)

            def apply_inner():
                self.inner_optimizer.apply(grads, trainable_variables)
                self.skipped_steps.assign_add(tf.cast(tf.logical_not(grads_finite), "int64"))

            if loss_finite is None or in_replica:
                apply_inner()
            else:
                self._apply_or_skip(loss_finite, apply_inner)
            return
        finite = self._step_is_finite(grads, loss_finite)
        if in_replica:
            # Under a distribution strategy each replica holds its *local*
            # gradients here (Keras all-reduces them inside the wrapped
            # optimizer's apply), so the replicas first agree: the step is
            # finite only if it is finite on every replica. The wrapped apply
            # calls merge_call, which cannot sit inside a cond in a replica
            # context, so the decision is taken in a cross-replica context,
            # as in LossScaleOptimizer.
            finite = _agreed_on_every_replica(finite)
            tf.distribute.get_replica_context().merge_call(
                self._cross_replica_apply, args=(finite, grads, trainable_variables)
            )
        else:
            self._apply_or_skip(
                finite, lambda: self.inner_optimizer.apply(grads, trainable_variables)
            )

    def _step_is_finite(self, grads, loss_finite):
        """Every gradient finite, and the loss too where it is known (a bool tensor)."""
        finite = self.all_finite(grads)
        return finite if loss_finite is None else tf.logical_and(finite, loss_finite)

    def _apply_or_skip(self, finite, apply_inner):
        """``apply_inner()`` where ``finite``, else count a skipped step (a ``tf.cond``)."""

        def apply_step():
            apply_inner()
            return tf.constant(True)

        def skip_step():
            self.skipped_steps.assign_add(1)
            return tf.constant(False)

        return tf.cond(finite, apply_step, skip_step)

    def _cross_replica_apply(self, distribution, finite, grads, trainable_variables):
        # Every replica holds the same all-reduced flag: take the first.
        finite = distribution.experimental_local_results(finite)[0]
        self._apply_or_skip(
            finite,
            lambda: distribution.extended.call_for_each_replica(
                self.inner_optimizer.apply, args=(grads, trainable_variables)
            ),
        )

    # -- serialization ----------------------------------------------------------
    def get_config(self):
        # Only the wrapped optimizer and the name: the base arguments
        # (clipnorm, weight_decay, ...) belong to the wrapped optimizer.
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        return SkipNonFinite(optimizer, **config)


def _agreed_on_every_replica(finite):
    """In a replica context: ``finite`` on every replica (one all-reduce of the bad flags)."""
    bad = tf.cast(tf.logical_not(finite), tf.float32)
    context = tf.distribute.get_replica_context()
    return tf.equal(context.all_reduce(tf.distribute.ReduceOp.SUM, bad), 0.0)


def _nan_unless(finite, grad):
    """``grad`` where ``finite``, else NaN of its shape (the values of ``IndexedSlices``)."""
    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(_nan_unless(finite, grad.values), grad.indices, grad.dense_shape)
    return tf.where(finite, grad, tf.fill(tf.shape(grad), tf.constant(float("nan"), grad.dtype)))


def _trace_key():
    """The graph being traced (None when running eagerly): a loss is only used in its own trace."""
    return None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()


class SkipNonFiniteLossScaler(SkipNonFinite, keras.optimizers.LossScaleOptimizer):
    """What ``SkipNonFinite(LossScaleOptimizer(...))`` is: also a loss scaler.

    Keras's ``compile(auto_scale_loss=True)`` wraps every optimizer that is not
    an instance of ``LossScaleOptimizer`` in one under ``mixed_float16``; this
    class is one, so Keras adds none. Its base constructor is
    LossScaleOptimizer's, given the wrapped scaler's settings; ``SkipNonFinite``
    comes first in the method order, so it builds, applies, scales the loss and
    saves as ``SkipNonFinite`` does, with ``dynamic_scale`` added. The loss
    scaling and its scale are the wrapped scaler's: this wrapper holds no scale
    of its own.
    """

    @staticmethod
    def _base_arguments(inner, name) -> dict:
        # LossScaleOptimizer's constructor, with the wrapped scaler's settings.
        return {
            "inner_optimizer": inner,
            "initial_scale": inner.initial_scale,
            "dynamic_growth_steps": inner.dynamic_growth_steps,
            "name": name,
        }

    @property
    def dynamic_scale(self):
        """The wrapped loss scaler's current loss scale."""
        return self.inner_optimizer.dynamic_scale


# Both classes save as "stableops>SkipNonFinite"; that name loads SkipNonFinite,
# whose from_config picks the class again from the wrapped optimizer.
keras.saving.register_keras_serializable("stableops", "SkipNonFinite")(SkipNonFiniteLossScaler)
keras.saving.register_keras_serializable("stableops")(SkipNonFinite)

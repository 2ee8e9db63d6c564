"""Working out which loss a model trains with, what labels it needs, and per-sample values."""

from __future__ import annotations

import dataclasses
import re

import keras
import tensorflow as tf

from stableops._internal.keras_compat import match_rank

_KIND_BY_NAME = {
    "binary_crossentropy": "binary",
    "binary_focal_crossentropy": "binary",
    "categorical_crossentropy": "categorical",
    "categorical_focal_crossentropy": "categorical",
    "sparse_categorical_crossentropy": "sparse",
}

# Losses that take log(y_pred) of probabilities unless from_logits=True.
_LOG_OF_PROBABILITIES = set(_KIND_BY_NAME)


def snake_case(name: str) -> str:
    """A class name in snake case, as Keras names its loss functions.

    >>> snake_case("KLDivergence"), snake_case("BinaryCrossentropy")
    ('kl_divergence', 'binary_crossentropy')
    """
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


@dataclasses.dataclass
class LossInfo:
    """What the doctor knows about a loss.

    Attributes:
        obj: the loss object or function (``None`` when there is none).
        name: canonical snake-case name (``"binary_crossentropy"``).
        display: how to show it (``"keras.losses.BinaryCrossentropy"``).
        kind: ``"binary"``, ``"categorical"``, ``"sparse"`` or ``"other"``.
        from_logits: whether predictions are logits.
        ignore_class: a label value the loss ignores, if any.
        keras_builtin: whether it is one of Keras's own losses.
        drop_in: ``"stableops.losses.<Name>"`` when stableops has a drop-in.
    """

    obj: object
    name: str
    display: str
    kind: str
    from_logits: bool = False
    ignore_class: int | None = None
    keras_builtin: bool = False
    drop_in: str | None = None

    @property
    def takes_log_of_probabilities(self) -> bool:
        return self.name in _LOG_OF_PROBABILITIES and not self.from_logits

    def per_sample(self, y_true, y_pred) -> tf.Tensor:
        """Unreduced loss, one float32 value per sample (other axes averaged).

        For a model with several outputs, the loss of each output (Keras applies a
        single loss to every output) summed: the per-sample terms of Keras's total.
        """
        pairs = output_pairs(y_true, y_pred)
        if pairs is not None:
            return tf.add_n([self.per_sample(t, p) for t, p in pairs])
        values = _per_sample_values(self.obj, y_true, y_pred)
        values = tf.cast(tf.convert_to_tensor(values), tf.float32)
        if values.shape.rank and values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        if values.shape.rank == 0:
            values = tf.fill(tf.shape(tf.nest.flatten(y_pred)[0])[:1], values)
        return values


def single_output_labels(y_true, y_pred):
    """The labels of a single-output model given as a one-element list, tuple or dict, unwrapped.

    ``fit`` takes ``[y]`` for a model with one output; the checks compare the labels
    with the output's shape, so they take ``y`` itself.

    >>> single_output_labels([1], 10), single_output_labels({"out": 1}, 10)
    (1, 1)
    >>> single_output_labels([1], [10])
    [1]
    """
    if isinstance(y_pred, (dict, list, tuple)) or not isinstance(y_true, (dict, list, tuple)):
        return y_true
    if len(y_true) != 1:
        return y_true
    return next(iter(y_true.values())) if isinstance(y_true, dict) else y_true[0]


def output_pairs(y_true, y_pred):
    """``[(labels, predictions)]`` per output of a model with several, ``None`` for one output.

    Dict outputs pair with labels by key, list/tuple outputs by position.
    Raises ``ValueError`` when the labels do not match the outputs' structure.
    """
    pairs = named_output_pairs(y_true, y_pred)
    return None if pairs is None else [(labels, predictions) for _, labels, predictions in pairs]


def named_output_pairs(y_true, y_pred):
    """``output_pairs`` with each output's name: its key, or its position as a string.

    >>> named_output_pairs({"a": 1, "b": 2}, {"b": 20, "a": 10})
    [('a', 1, 10), ('b', 2, 20)]
    >>> named_output_pairs([1, 2], [10, 20])
    [('0', 1, 10), ('1', 2, 20)]
    """
    if not isinstance(y_pred, (dict, list, tuple)):
        return None
    if isinstance(y_pred, dict) and isinstance(y_true, dict) and set(y_true) >= set(y_pred):
        return [(key, y_true[key], y_pred[key]) for key in sorted(y_pred)]
    if (
        isinstance(y_pred, (list, tuple))
        and isinstance(y_true, (list, tuple))
        and len(y_true) == len(y_pred)
    ):
        return [(str(i), labels, out) for i, (labels, out) in enumerate(zip(y_true, y_pred))]
    if len(y_pred) == 1 and not isinstance(y_true, (dict, list, tuple)):
        name = next(iter(y_pred)) if isinstance(y_pred, dict) else "0"
        return [(name, y_true, tf.nest.flatten(y_pred)[0])]
    names = sorted(y_pred) if isinstance(y_pred, dict) else f"{len(y_pred)} outputs"
    raise ValueError(
        f"the labels ({type(y_true).__name__}) do not match the model's outputs ({names}): pass "
        "one label array per output, in a dict with the outputs' names or a list in their order"
    )


def _stableops_losses():
    try:
        from stableops import losses
    except Exception:  # pragma: no cover - only while the package is broken
        return None
    return losses


def _drop_in(class_or_function_name: str) -> str | None:
    losses = _stableops_losses()
    if losses is None:
        return None
    public = [name for name in getattr(losses, "__all__", ()) if hasattr(losses, name)]
    # Prefer the class form (what goes into compile(loss=...)) for a function name.
    for name in public:
        if name[:1].isupper() and snake_case(name) == snake_case(class_or_function_name):
            return f"stableops.losses.{name}()"
    if class_or_function_name in public:
        return f"stableops.losses.{class_or_function_name}"
    return None


def _is_keras(obj) -> bool:
    module = getattr(obj, "__module__", "") or getattr(type(obj), "__module__", "")
    return module.split(".", 1)[0] == "keras"


def resolve_loss(model, loss) -> LossInfo | None:
    """The loss to examine: ``loss`` if given, else what ``model`` was compiled with.

    Returns ``None`` when there is no single loss (not compiled, or a dict/list
    of per-output losses).
    """
    if loss is None:
        loss = getattr(model, "loss", None)
    if loss is None or isinstance(loss, (dict, list, tuple)):
        return None
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        class_name = type(loss).__name__
        name = snake_case(class_name)
        config = _safe_config(loss)
        builtin = _is_keras(type(loss))
        module = type(loss).__module__
        if builtin:
            module = "keras.losses"
        elif module.startswith("stableops."):
            module = "stableops.losses"
        display = f"{module}.{class_name}"
        return LossInfo(
            obj=loss,
            name=name,
            display=display,
            kind=_KIND_BY_NAME.get(name, "other"),
            from_logits=bool(config.get("from_logits", False)),
            ignore_class=config.get("ignore_class"),
            keras_builtin=builtin,
            drop_in=_drop_in(class_name) if builtin else None,
        )
    if callable(loss):
        name = getattr(loss, "__name__", type(loss).__name__)
        builtin = _is_keras(loss)
        return LossInfo(
            obj=loss,
            name=name,
            display=f"keras.losses.{name}" if builtin else name,
            kind=_KIND_BY_NAME.get(name, "other"),
            keras_builtin=builtin,
            drop_in=_drop_in(name) if builtin else None,
        )
    raise TypeError(f"cannot use {loss!r} as a loss")


def per_output_losses(model, loss, y_true, y_pred) -> list:
    """``[(output name, LossInfo, labels, predictions)]`` for a dict or list of per-output losses.

    A loss dict pairs with dict outputs and labels by key, a list with list
    outputs and labels by position (as Keras pairs them). Empty for a single
    loss, or when the losses, labels and outputs do not pair up.
    """
    if loss is None:
        loss = getattr(model, "loss", None)
    if isinstance(loss, dict) and isinstance(y_true, dict) and isinstance(y_pred, dict):
        names = [name for name in sorted(loss) if name in y_true and name in y_pred]
        triples = [(name, loss[name], y_true[name], y_pred[name]) for name in names]
    elif (
        isinstance(loss, (list, tuple))
        and isinstance(y_true, (list, tuple))
        and isinstance(y_pred, (list, tuple))
        and len(loss) == len(y_true) == len(y_pred)
    ):
        triples = [(str(i), *parts) for i, parts in enumerate(zip(loss, y_true, y_pred))]
    else:
        return []
    pairs = []
    for name, output_loss, labels, predictions in triples:
        try:
            info = resolve_loss(None, output_loss)
        except TypeError:  # not a loss the doctor knows how to read
            info = None
        if info is not None and labels is not None:
            pairs.append((name, info, labels, predictions))
    return pairs


def _safe_config(loss) -> dict:
    try:
        return dict(loss.get_config())
    except Exception:
        return {}


def _unreduced_copy(loss):
    config = _safe_config(loss)
    if "reduction" not in config:
        return None
    config["reduction"] = None
    try:
        return type(loss).from_config(config)
    except Exception:
        return None


def _per_sample_values(obj, y_true, y_pred):
    if isinstance(obj, keras.losses.Loss):
        copy = _unreduced_copy(obj)
        if copy is not None:
            return copy(y_true, y_pred)
        # A custom Loss that cannot be rebuilt: its unreduced `call`, on
        # predictions cast to the loss dtype as `Loss.__call__` would.
        return obj.call(
            tf.convert_to_tensor(y_true),
            tf.nest.map_structure(lambda p: tf.cast(p, obj.dtype), y_pred),
        )
    # A function: what Keras's compile-time wrapper does around it: predictions
    # in float32, labels in the prediction dtype, ranks aligned.
    y_pred = tf.convert_to_tensor(y_pred)
    if y_pred.dtype.is_floating:
        y_pred = tf.cast(y_pred, tf.float32)
    y_true = tf.convert_to_tensor(y_true)
    if y_true.dtype.is_floating or y_true.dtype.is_integer and y_pred.dtype.is_floating:
        y_true = tf.cast(y_true, y_pred.dtype)
    y_true, y_pred = match_rank(y_true, y_pred)
    return obj(y_true, y_pred)

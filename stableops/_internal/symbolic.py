"""Public functions called on symbolic ``keras.Input``s: a node of the functional graph.

``keras.activations.elu(keras.Input((4,)))`` builds a node of a functional model
(a ``keras.Operation``); a TensorFlow function given a ``KerasTensor`` raises
"A KerasTensor cannot be used as input to a TensorFlow function". Every public
function of the Keras-facing parts, ``stableops.activations`` and
``stableops.losses``, is wrapped by :func:`functional_node`: given a
``KerasTensor`` it returns the output of a :class:`StableopsCall` node instead,
which calls the function when the model runs (so the kernel and its gradient are
the function's own) and saves to a ``.keras`` file by its public name and
settings. Otherwise the call goes straight to the function. ``stableops.ops``
stays pure TensorFlow (no Keras): its functions never import this module.
"""

from __future__ import annotations

import inspect

import keras

from stableops._internal.wrapping import wraps_public

# "activations.elu" -> the public function (filled by `functional_node` at import).
_PUBLIC_FUNCTIONS = {}

_SETTING_TYPES = (bool, int, float, str, type(None))


def _is_setting(value):
    """A Python number, string or ``None``, or a list/tuple of them: saved in the config."""
    if isinstance(value, (list, tuple)):
        return all(_is_setting(item) for item in value)
    return isinstance(value, _SETTING_TYPES)


@keras.saving.register_keras_serializable(package="stableops")
class StableopsCall(keras.Operation):
    """A functional-model node that calls a public stableops function.

    Args:
        function: its public name, ``"activations.elu"`` or ``"losses.dice"``.
        settings: its arguments that are not tensors (``axis``, ``from_logits``, ...).
        name: the node's name (default: ``stableops_`` and the function's name, made unique).

    The tensor arguments are the node's inputs, passed by keyword. ``get_config``
    holds ``function`` and ``settings``, so a model saved with the node loads back
    (after ``import stableops``) without ``custom_objects``.
    """

    def __init__(self, function, settings=None, name=None):
        if function not in _PUBLIC_FUNCTIONS:
            raise ValueError(f"`function` must name a public stableops function, got {function!r}")
        if name is None:  # "stableops_elu", then "stableops_elu_1", ...: apart from Keras's names
            prefix = f"stableops_{function.rpartition('.')[2]}"
            uid = keras.backend.get_uid(prefix)
            name = prefix if uid == 1 else f"{prefix}_{uid - 1}"
        super().__init__(name=name)
        self.function = function
        self.settings = dict(settings or {})

    def call(self, **tensors):
        return _PUBLIC_FUNCTIONS[self.function](**tensors, **self.settings)


def functional_node(namespace):
    """Decorator: the public function ``stableops.<namespace>.<its name>`` also builds nodes.

    Given a ``keras.KerasTensor`` among its arguments, the wrapped function returns
    the output of a :class:`StableopsCall` node; its tensor arguments become the
    node's inputs and the rest (Python numbers, strings, ``None`` and lists of them)
    its settings. Any other call is the function's own (one ``isinstance`` test per
    argument more).
    """

    def decorate(function):
        public_name = f"{namespace}.{function.__name__}"
        signature = inspect.signature(function)

        @wraps_public(function)
        def function_or_node(*args, **kwargs):
            if not any(isinstance(value, keras.KerasTensor) for value in (*args, *kwargs.values())):
                return function(*args, **kwargs)
            arguments = signature.bind(*args, **kwargs).arguments
            settings = {key: value for key, value in arguments.items() if _is_setting(value)}
            tensors = {key: value for key, value in arguments.items() if key not in settings}
            return StableopsCall(public_name, settings)(**tensors)

        _PUBLIC_FUNCTIONS[public_name] = function
        return function_or_node

    return decorate

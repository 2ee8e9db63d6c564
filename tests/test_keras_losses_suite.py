"""Keras's own loss tests, run with stableops's losses substituted.

``keras/src/losses/losses_test.py`` (shipped with Keras) is imported and its
module-level ``losses`` is replaced, for the duration of each test, by a
namespace that gives stableops's class or function where stableops has one.
Every test class whose loss stableops provides runs; the tests that hit a
deliberate difference (README, "Where stableops deliberately differs from
Keras") are expected to fail, each with the README row as its reason.
Only this test reads ``keras.src``; the package never imports it.
"""

from __future__ import annotations

import types

import pytest

import stableops.losses

keras_losses_test = pytest.importorskip("keras.src.losses.losses_test")

# Keras's test classes for losses stableops does not provide.
_NOT_PROVIDED = {"CircleTest", "CategoricalGeneralizedCrossEntropyTest"}

# test id -> the README row ("Where stableops deliberately differs from Keras") it hits.
_CONFIG = "README: `get_config()` lists every constructor argument, `dtype` included"
_CLIP = (
    "README: `BinaryCrossentropy`, p = 1 with t = 0: clipped at the largest float below 1, "
    "not 1 - 1e-7"
)
_AXIS = (
    "README: `SparseCategoricalCrossentropy` takes any class axis (Keras's TF backend: "
    "axis=-1 only)"
)
_DELIBERATE = {
    "CosineSimilarityTest::test_config": _CONFIG,
    "HuberLossTest::test_config": _CONFIG,
    "LogCoshTest::test_config": _CONFIG,
    "BinaryCrossentropyTest::test_unweighted": _CLIP,
    "BinaryCrossentropyTest::test_scalar_weighted": _CLIP,
    "BinaryCrossentropyTest::test_sample_weighted": _CLIP,
    "SparseCategoricalCrossentropyTest::test_binary_segmentation_different_axis": _AXIS,
    "SparseCategoricalCrossentropyTest::test_multi_class_segmentation_different_axis": _AXIS,
}


class _Substituted(types.SimpleNamespace):
    """``keras.src.losses.losses`` with stableops's names in front."""

    def __getattr__(self, name):
        return getattr(stableops.losses, name, None) or getattr(self.keras, name)


_KERAS = keras_losses_test.losses


@pytest.fixture(autouse=True)
def _stableops_losses(monkeypatch):
    monkeypatch.setattr(keras_losses_test, "losses", _Substituted(keras=_KERAS))


def _expected_failure(method, reason):
    def deliberate_difference(self):
        return method(self)

    return pytest.mark.xfail(reason=reason, strict=True)(deliberate_difference)


def _substituted_class(name, base):
    """A subclass of Keras's test class whose deliberate-difference tests are strict xfails."""
    namespace = {}
    for attribute in dir(base):
        test_id = f"{name}::{attribute}"
        if attribute.startswith("test") and test_id in _DELIBERATE:
            namespace[attribute] = _expected_failure(getattr(base, attribute), _DELIBERATE[test_id])
    return type(name, (base,), namespace)


for _name, _cls in list(vars(keras_losses_test).items()):
    if _name.endswith("Test") and isinstance(_cls, type) and _name not in _NOT_PROVIDED:
        globals()[_name] = _substituted_class(_name, _cls)


def test_every_deliberate_difference_names_a_test():
    """A renamed Keras test must not leave a stale entry behind."""
    for test_id in _DELIBERATE:
        class_name, method = test_id.split("::")
        assert hasattr(getattr(keras_losses_test, class_name), method), test_id

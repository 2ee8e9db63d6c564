"""The public API of docs/design.md and its code rules (no keras.src, no literal epsilons)."""

import ast
import inspect
import io
import pathlib
import re
import tokenize

import keras
import pytest

import stableops

PACKAGE = pathlib.Path(stableops.__file__).parent
ROOT = PACKAGE.parent

OPS = """dtype_limits safe_where safe_divide safe_log safe_sqrt safe_norm l2_normalize
clip_preserve_gradient logsumexp softmax log_softmax logaddexp log1mexp log_sigmoid softplus
softplus_inverse log_cosh xlogy elu leaky_relu binary_crossentropy categorical_crossentropy
sparse_categorical_crossentropy""".split()
OP_SIGNATURES = {
    "safe_divide": "(x, y, fill=0.0)",
    "safe_norm": "(x, axis=-1, keepdims=False)",
    "l2_normalize": "(x, axis=-1)",
    "clip_preserve_gradient": "(x, lo, hi)",
    "logsumexp": "(x, axis=-1, keepdims=False, where=None)",
    "softmax": "(x, axis=-1, where=None)",
    "log_softmax": "(x, axis=-1, where=None)",
    "logaddexp": "(x, y)",
    "elu": "(x, alpha=1.0)",
    "leaky_relu": "(x, negative_slope=0.2)",
    "binary_crossentropy": "(target, output, from_logits=False)",
    "categorical_crossentropy": "(target, output, from_logits=False, axis=-1)",
    "sparse_categorical_crossentropy": "(target, output, from_logits=False, axis=-1)",
}
LOSS_CLASSES = """BinaryCrossentropy CategoricalCrossentropy SparseCategoricalCrossentropy
BinaryFocalCrossentropy CategoricalFocalCrossentropy KLDivergence Poisson MeanSquaredError
MeanAbsoluteError MeanAbsolutePercentageError MeanSquaredLogarithmicError Huber LogCosh
CosineSimilarity Dice Tversky Hinge SquaredHinge CategoricalHinge""".split()
LOSS_FUNCTIONS = """binary_crossentropy categorical_crossentropy sparse_categorical_crossentropy
binary_focal_crossentropy categorical_focal_crossentropy kl_divergence poisson mean_squared_error
mean_absolute_error mean_absolute_percentage_error mean_squared_logarithmic_error huber log_cosh
cosine_similarity dice tversky hinge squared_hinge categorical_hinge""".split()


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("name", OPS)
def test_every_design_op_is_exported(name):
    assert name in stableops.ops.__all__
    assert callable(getattr(stableops.ops, name))


@pytest.mark.parametrize("name", sorted(OP_SIGNATURES))
def test_op_signatures_match_the_design(name):
    fn = getattr(stableops.ops, name)
    assert str(inspect.signature(fn)) == OP_SIGNATURES[name]


@pytest.mark.parametrize("name", LOSS_CLASSES)
def test_loss_constructor_matches_keras(name):
    ours = inspect.signature(getattr(stableops.losses, name)).parameters
    theirs = inspect.signature(getattr(keras.losses, name)).parameters
    positional = [(p.name, p.default) for p in ours.values() if p.kind != p.KEYWORD_ONLY]
    expected = [(p.name, p.default) for p in theirs.values() if p.kind != p.KEYWORD_ONLY]
    assert positional == expected
    extras = {p for p, v in ours.items() if v.kind == v.KEYWORD_ONLY}
    assert extras <= {"pos_weight", "ignore_class", "label_smoothing", "smooth"} | set(theirs)


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
def test_loss_function_forms_exist(name):
    assert callable(getattr(stableops.losses, name))


def test_layers_activations_and_doctor_are_public():
    for name in ("LeakyReLU", "ELU", "Softmax", "RobustScaler"):
        assert issubclass(getattr(stableops.layers, name), keras.layers.Layer)
    for name in ("elu", "leaky_relu", "softplus", "log_sigmoid", "softmax", "log_softmax"):
        assert callable(getattr(stableops.activations, name))
    assert callable(stableops.diagnose)
    assert callable(stableops.callbacks.NaNGuard)
    assert callable(stableops.optimizers.SkipNonFinite)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_keras_imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        assert not any(n.startswith("keras.src") for n in names), f"{path}: imports {names}"


# The internal layer's one Keras-facing module: the functional-graph node that the
# activations and loss functions build on symbolic inputs. The math never imports it.
_KERAS_NODES = PACKAGE / "_internal" / "symbolic.py"


@pytest.mark.parametrize(
    "path",
    sorted((PACKAGE / "ops").glob("*.py"))
    + sorted(set((PACKAGE / "_internal").glob("*.py")) - {_KERAS_NODES}),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_the_math_uses_no_keras(path):
    """ops and the internal layer are pure TF (the import direction: tests/test_architecture.py)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert not re.match(r"keras\b", module or ""), f"{path.name} imports {module}"
            assert module != "stableops._internal.symbolic", f"{path.name} imports {module}"


_EPSILON_LITERAL = re.compile(r"^[0-9.]+[eE]-[0-9]+$")
# Small literals that are not thresholds, each with its reason.
_NOT_THRESHOLDS = {
    ("doctor/_report.py", "1e-3"),  # range of plain (non-scientific) number formatting in the table
    ("doctor/_thresholds.py", "1e-3"),  # Keras's default learning rate, a hyperparameter
    (
        "_internal/elementary.py",
        "2.319046813846299558e-17",
    ),  # low part of log 2 in float64 (exact split)
}


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_hard_coded_epsilons(path):
    """Thresholds come from dtype_limits, never a literal such as 1e-7 (comments, docs aside)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    relative = path.relative_to(PACKAGE).as_posix()
    literals = [
        t.string
        for t in tokens
        if t.type == tokenize.NUMBER
        and _EPSILON_LITERAL.match(t.string)
        and (relative, t.string) not in _NOT_THRESHOLDS
    ]
    assert literals == [], f"{path}: epsilon literals {literals}"


def test_version_is_consistent():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{stableops.__version__}"' in pyproject
    assert f"## [{stableops.__version__}]" in (ROOT / "CHANGELOG.md").read_text()

"""The architecture of docs/design.md, checked mechanically: three layers, imports one way.

Every module of the package belongs to a *part* (its first component under
``stableops/``: ``_internal``, ``ops``, ``losses``, ...). A part may import the
parts listed for it in ``MAY_IMPORT`` and nothing else of stableops (an upward
import), and outside the internal layer it may not reach into another part's
private modules or private names (``stableops.ops._logexp``, ``_shifted``).
The checker is a plain function of source text, so the tests below also show
that it catches each kind of violation.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import stableops

PACKAGE = pathlib.Path(stableops.__file__).parent

INTERNAL = "_internal"
# part -> the parts it may import (besides itself). The internal layer first,
# then the public layer (ops, then the Keras-facing drop-ins), then the
# training tools, then the command line on top; the package root sees all.
PUBLIC = {INTERNAL, "ops", "activations", "losses", "layers"}
MAY_IMPORT = {
    INTERNAL: set(),
    "ops": {INTERNAL},
    "activations": {INTERNAL, "ops"},
    "losses": {INTERNAL, "ops"},
    "layers": {INTERNAL, "ops", "activations"},
    "optimizers": PUBLIC,
    "doctor": PUBLIC,
    "callbacks": PUBLIC | {"doctor"},
    "cli": PUBLIC | {"optimizers", "doctor", "callbacks"},
}
ROOT_MODULES = {"__init__", "__main__"}  # the package root: may import every public part


def _part(module: str) -> str:
    """``stableops.losses._binary`` -> ``losses``; ``stableops`` -> ``__init__``."""
    components = module.split(".")
    return components[1] if len(components) > 1 else "__init__"


def _imports(source: str, module: str):
    """``(imported module, imported names)`` for each stableops import in ``source``."""
    package = module if module.count(".") < 1 else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "stableops":
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:  # a relative import, resolved against the importer's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([target] if target else []))
            if target.split(".")[0] == "stableops":
                yield target, [alias.name for alias in node.names]


def violations(source: str, module: str) -> list[str]:
    """The architecture rules that ``source`` (the module ``module``) breaks, in words."""
    own = _part(module)
    found = []
    for target, names in _imports(source, module):
        # `from stableops import ops` imports the part `ops`.
        parts = {_part(target)} if target != "stableops" else {name for name in names}
        for part in parts - {own}:
            if own not in ROOT_MODULES and part not in MAY_IMPORT.get(own, set()):
                found.append(f"{module} imports {part} (not below it): {target}")
        if own == INTERNAL:
            continue
        other_part = _part(target) != own
        private_module = any(c.startswith("_") for c in target.split(".")[2:])
        if other_part and private_module and _part(target) != INTERNAL:
            found.append(f"{module} reaches into a private module: {target}")
        private_names = [n for n in names if n.startswith("_") and n != "__version__"]
        if other_part and private_names:
            found.append(f"{module} imports private names {private_names} from {target}")
    return found


def _module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_one_way_without_reach_ins(path):
    assert violations(path.read_text(), _module_name(path)) == []


def test_every_part_has_a_place_in_the_layers():
    parts = {_part(_module_name(path)) for path in SOURCES}
    assert parts - ROOT_MODULES <= set(MAY_IMPORT), parts - ROOT_MODULES - set(MAY_IMPORT)


@pytest.mark.parametrize(
    "module, source, complaint",
    [
        # upward: the math may not depend on the losses, the internal layer on the ops
        ("stableops.ops._logexp", "from stableops.losses import Huber", "imports losses"),
        ("stableops._internal.kernel", "import stableops.ops", "imports ops"),
        ("stableops.ops._softmax", "from stableops import layers", "imports layers"),
        # the doctor's core may not pull in the tools built on it
        (
            "stableops.doctor._diagnose",
            "from stableops.callbacks import NaNGuard",
            "imports callbacks",
        ),
        # reach-ins: another part's private module, or a private name
        (
            "stableops.losses._binary",
            "from stableops.ops._softmax import log_softmax",
            "private module",
        ),
        (
            "stableops.layers._robust_scaler",
            "from stableops.ops import _normalize_axis",
            "private names",
        ),
        ("stableops.callbacks", "from stableops.doctor._registry import finding", "private module"),
    ],
)
def test_the_checker_catches_each_violation(module, source, complaint):
    found = violations(source, module)
    assert any(complaint in message for message in found), found


@pytest.mark.parametrize(
    "module, source",
    [
        ("stableops.losses._binary", "from stableops._internal.checks import number"),
        ("stableops.losses._binary", "from stableops.losses._base import FunctionLoss"),
        ("stableops.losses._binary", "from stableops import ops"),
        ("stableops.layers._activation_layers", "from stableops import activations, ops"),
        ("stableops._internal.kernel", "from stableops._internal.dtypes import dtype_limits"),
        ("stableops", "from stableops.doctor import diagnose"),
    ],
)
def test_the_checker_allows_what_the_layers_allow(module, source):
    assert violations(source, module) == []

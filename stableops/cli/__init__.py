"""The ``stableops`` command line: ``stableops doctor``.

``stableops doctor`` runs the embedded demo; ``stableops doctor MODEL.keras
DATA.npz [--x KEY --y KEY]`` diagnoses a saved model on saved data.

Exit status: 0 when the run finished (demo) or the diagnosis found no error,
1 when it found error-severity problems (a trial run that diverges is one),
2 for bad input (a missing or unreadable file, wrong keys, data that does not
fit the model, a loss that cannot be reloaded), reported as one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_OK, EXIT_PROBLEMS, EXIT_BAD_INPUT = 0, 1, 2
EXIT_CODES_HELP = """exit status (MODEL DATA):
  0  no errors found (warnings and suggestions may be printed); the demo finished
  1  errors found: the model, data or settings make the loss non-finite, or the
     trial run of a copy of the model diverges
  2  bad input: a missing or unreadable file, wrong keys, data that does not fit
     the model, a loss that cannot be reloaded (use --loss NAME); one line on stderr"""
DEFAULT_PLOT = "stableops-doctor-loss-curves.png"


class BadInput(Exception):
    """A user error the command reports in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse prints usage too)
        raise BadInput(message)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stableops")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stableops", description="stableops: Keras losses and layers that stay finite."
    )
    parser.add_argument("--version", action="version", version=f"stableops {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    doctor = commands.add_parser(
        "doctor",
        help="explain why a loss goes NaN (no arguments: run the demo)",
        description="Without arguments: train a few small models that go NaN with stock Keras "
        "and stay finite with stableops, print a comparison and the diagnosis, and plot the "
        "loss curves. With MODEL and DATA: diagnose a saved Keras model on saved data "
        "(including a short trial run of a copy of it, with its optimizer settings).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument("model", nargs="?", help="a saved Keras model (.keras)")
    doctor.add_argument("data", nargs="?", help="a .npz file with the inputs (and labels)")
    doctor.add_argument(
        "--x",
        dest="x_key",
        default=None,
        help="key of the inputs in DATA (default 'x'; comma-separate several inputs)",
    )
    doctor.add_argument(
        "--y",
        dest="y_key",
        default=None,
        help="key of the labels in DATA (default 'y' if present; comma-separate the labels of "
        "several outputs)",
    )
    doctor.add_argument(
        "--batch-size", type=int, default=32, help="batch size for the diagnosis (default 32)"
    )
    doctor.add_argument(
        "--loss",
        default=None,
        metavar="NAME",
        help="the loss to diagnose with, when the model's own cannot be reloaded (a custom loss "
        "not registered with Keras) or to try another: a Keras name or identifier ('mse', "
        "'binary_crossentropy', 'MeanSquaredError') or a stableops one "
        "('stableops.MeanSquaredError')",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--out",
        default=None,
        help=f"demo: the loss-curve .png file, or a directory to write {DEFAULT_PLOT} in "
        "(default: the working directory)"
    )
    doctor.add_argument("--fast", action="store_true", help="demo: a reduced, quicker run")
    return parser


def main(argv=None) -> int:
    """Run the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # An error is the doctor's once the command is named, else the top-level program's.
    prog = "stableops doctor" if argv[:1] == ["doctor"] else "stableops"
    try:
        args = build_parser().parse_args(argv)
        if args.command != "doctor":
            raise BadInput(
                "choose a command: stableops doctor [MODEL DATA] (see stableops doctor --help)"
            )
        if args.model is None and args.data is None:
            return run_demo_command(args)
        if args.model is None or args.data is None:
            raise BadInput("give both MODEL and DATA, or neither for the demo")
        return run_diagnosis_command(args)
    except BadInput as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------
# The demo


def plot_path(out) -> str:
    """Where the demo writes its PNG, checked before any training (BadInput if it cannot).

    ``None``: the default name in the working directory; an existing directory:
    the default name inside it; otherwise a ``.png`` path in an existing directory.
    """
    if out is None:
        out = os.getcwd()
    if os.path.isdir(out):
        return os.path.join(out, DEFAULT_PLOT)
    if os.path.splitext(out)[1].lower() != ".png":
        raise BadInput(f"--out must name a .png file or an existing directory, got {out}")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise BadInput(f"--out directory does not exist: {directory}")
    return out


def _can_plot() -> bool:
    """Whether matplotlib (the ``plot`` extra) is installed: the demo plots only then."""
    return importlib.util.find_spec("matplotlib") is not None


def run_demo_command(args) -> int:
    for name in ("x_key", "y_key", "json", "loss"):
        if getattr(args, name):
            raise BadInput(f"--{name.split('_')[0]} applies to MODEL DATA, not to the demo")
    out = plot_path(args.out)
    if not _can_plot():  # checked before training (it crashed after, with exit status 1)
        if args.out is not None:
            raise BadInput("--out needs matplotlib: pip install 'stableops[plot]'")
        out = None
    start = time.perf_counter()
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(
        "stableops doctor: training small models that go NaN with stock Keras, "
        "and again with stableops" + (" (fast mode)" if args.fast else "")
    )
    from stableops.cli import _demo

    results = _demo.run_demo(fast=args.fast, out=out, progress=say)
    say("")
    say(_demo.format_table(results))
    say("")
    say("Diagnosis (stableops.diagnose on each stock model before training):")
    say(_demo.format_diagnoses(results))
    say("")
    unplotted = "not plotted (pip install 'stableops[plot]')"
    say(f"Loss curves: {out or unplotted}")
    say(f"Done in {time.perf_counter() - start:.0f} s.")
    return EXIT_OK


# ---------------------------------------------------------------------------
# A user's model and data


def _first_line(error) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def resolve_loss_name(name):
    """A loss object for ``--loss NAME``: a Keras identifier or ``stableops.<Class>``."""
    import keras

    import stableops

    short = name.split(".")[-1]
    if name.startswith("stableops."):
        loss = getattr(stableops.losses, short, None)
        if not (isinstance(loss, type) and issubclass(loss, keras.losses.Loss)):
            raise BadInput(f"--loss {name}: stableops.losses has no loss class {short!r}")
        return loss()
    try:
        return keras.losses.get(name)
    except Exception:  # noqa: BLE001
        raise BadInput(
            f"--loss {name}: not a Keras loss name (e.g. mse, binary_crossentropy)"
        ) from None


def _compile_config(path) -> dict:
    """The ``compile_config`` that ``model.save`` wrote into the .keras archive (or {})."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json")).get("compile_config") or {}
    except Exception:  # noqa: BLE001 - an archive without one: compiled without it
        return {}


def _loss_name(config) -> str:
    """How a serialized loss names itself: its class, or a function's name."""
    if isinstance(config, dict):
        if config.get("class_name") not in (None, "function"):
            return str(config["class_name"])
        return str(config.get("config"))
    return str(config)


def _loss_loads(loss) -> bool:
    """Keras defers a saved loss it cannot find: it stays a name that keras.losses.get rejects."""
    import keras

    if not isinstance(loss, str):
        return True
    try:
        keras.losses.get(loss)
    except Exception:  # noqa: BLE001
        return False
    return True


def load_model(path, loss=None):
    """Load a .keras model; recompile it when its loss cannot be reloaded and ``loss`` is given."""
    import keras

    import stableops  # noqa: F401 - registers the stableops layers/losses/optimizers

    _check_is_a_file(path, "model")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise BadInput(
            f"cannot load model {path}: not a .keras archive (a zip file written by model.save)"
        )
    with warnings.catch_warnings():
        # e.g. "Skipping variable loading for optimizer": irrelevant to a diagnosis.
        warnings.simplefilter("ignore")
        try:
            model = keras.saving.load_model(path)
            if _loss_loads(model.loss) and loss is None:
                return model
        except Exception as error:  # noqa: BLE001
            first_error = error
            try:
                # The model may load without its training config (e.g. a custom loss).
                model = keras.saving.load_model(path, compile=False)
            except Exception:  # noqa: BLE001
                raise BadInput(f"cannot load model {path}: {_first_line(first_error)}") from None
    config = _compile_config(path)
    if not config:
        return model  # saved uncompiled
    if loss is None:
        try:
            loss = keras.losses.deserialize(config.get("loss"))
            if not _loss_loads(loss):
                raise ValueError(loss)
        except Exception:  # noqa: BLE001
            raise BadInput(
                f"cannot reload the loss of {path} ({_loss_name(config.get('loss'))}: a custom "
                "loss not registered with keras.saving.register_keras_serializable); pass --loss "
                "NAME (a Keras or stableops loss) to diagnose with another"
            ) from None
    try:
        optimizer = keras.optimizers.deserialize(config.get("optimizer"))
    except Exception:  # noqa: BLE001
        name = _loss_name(config.get("optimizer"))
        raise BadInput(f"cannot reload the optimizer of {path}: {name}") from None
    model.compile(optimizer=optimizer, loss=loss)
    return model


def load_data(path, x_key, y_key):
    import numpy as np

    _check_is_a_file(path, "data")
    if not zipfile.is_zipfile(path):
        raise BadInput(
            f"cannot read {path}: not a .npz archive "
            "(write one with numpy.savez(path, x=..., y=...))"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001
        raise BadInput(f"cannot read {path} as a .npz archive: {_first_line(error)}") from None
    if not hasattr(archive, "files"):
        raise BadInput(f"{path} holds a single array, not a .npz archive of named arrays")
    try:
        arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # noqa: BLE001
        raise BadInput(f"cannot read {path}: {_first_line(error)}") from None
    available = ", ".join(sorted(arrays)) or "none"
    if x_key is None:
        if "x" in arrays:
            x_keys = ["x"]
        elif len(arrays) == 1:
            x_keys = list(arrays)
        else:
            raise BadInput(f"no array 'x' in {path}; choose one with --x (arrays: {available})")
    else:
        x_keys = [key.strip() for key in x_key.split(",") if key.strip()]
        if not x_keys:
            raise BadInput(f"--x names no array; choose one or more of: {available}")
    y_keys = [key.strip() for key in (y_key or "").split(",") if key.strip()]
    if not y_keys and "y" in arrays and "y" not in x_keys:
        y_keys = ["y"]
    for key in [*x_keys, *y_keys]:
        if key not in arrays:
            raise BadInput(f"no array '{key}' in {path} (arrays: {available})")
    x = [arrays[key] for key in x_keys]
    y = [arrays[key] for key in y_keys]  # one array per output
    return (x[0] if len(x) == 1 else x), (y[0] if len(y) == 1 else y or None), x_keys, y_keys


def check_fits(model, x, y, x_keys, y_keys=("y",)):
    """Raise BadInput when the arrays cannot be fed to the model."""
    import numpy as np

    leaves = x if isinstance(x, list) else [x]
    labels = [] if y is None else y if isinstance(y, list) else [y]
    sizes = {len(leaf) if np.ndim(leaf) else -1 for leaf in leaves}
    if -1 in sizes:
        raise BadInput("the inputs need a leading sample axis (got a scalar array)")
    if len(sizes) != 1:
        raise BadInput(f"the input arrays have different numbers of samples: {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise BadInput("the inputs are empty")
    for key, label in zip(y_keys, labels):
        if np.ndim(label) == 0 or len(label) != n:
            count = len(label) if np.ndim(label) else 0
            raise BadInput(f"x has {n} samples but '{key}' has {count}")
    for key, leaf in [*zip(x_keys, leaves), *zip(y_keys, labels)]:
        kind = np.asarray(leaf).dtype
        if kind.kind not in "biuf":  # bool, integers, floats: what Keras casts to a layer's dtype
            raise BadInput(
                f"'{key}' holds {_dtype_words(kind)}, which does not fit the model: "
                "it needs numbers (float, int or bool)"
            )
    try:
        expected = list(model.inputs)
    except (AttributeError, ValueError):
        return  # a subclassed model: shapes are checked by calling it
    if len(expected) != len(leaves):
        raise BadInput(
            f"the model takes {len(expected)} input(s) but {len(leaves)} array(s) were given "
            f"({', '.join(x_keys)}); pass them with --x KEY1,KEY2"
        )
    for key, leaf, tensor in zip(x_keys, leaves, expected):
        want = tuple(tensor.shape)
        got = tuple(np.shape(leaf))
        if len(got) == len(want) - 1 and want[-1] == 1:
            got = (*got, 1)  # Keras's fit takes (n,) for an input of shape (None, 1)
        fits = len(want) == len(got) and all(w is None or w == g for w, g in zip(want[1:], got[1:]))
        if not fits:
            shown = "(" + ", ".join("None" if w is None else str(w) for w in want) + ")"
            raise BadInput(f"'{key}' has shape {got} but the model expects {shown}")


def _in_input_order(model, x, x_keys):
    """Several input arrays whose keys are the model's input names, in the model's order
    (they were taken by position: ``--x c,a`` fed ``c`` to input ``a``)."""
    try:
        names = [tensor.name for tensor in model.inputs]
    except (AttributeError, ValueError):
        return x, x_keys  # a subclassed model: no named inputs
    if not isinstance(x, list) or sorted(names) != sorted(x_keys) or names == x_keys:
        return x, x_keys
    by_key = dict(zip(x_keys, x))
    return [by_key[name] for name in names], names


def _dtype_words(dtype) -> str:
    kinds = {
        "U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers", "M": "dates"
    }
    return f"{kinds[dtype.kind]} (dtype {dtype})" if dtype.kind in kinds else f"dtype {dtype}"


def _check_is_a_file(path, what):
    if os.path.isdir(path):
        raise BadInput(f"{what} {path} is a directory; give the file")
    if not os.path.isfile(path):
        raise BadInput(f"{what} file not found: {path}")


def run_diagnosis_command(args) -> int:
    if args.out or args.fast:
        raise BadInput("--out and --fast apply to the demo, not to MODEL DATA")
    if args.batch_size < 1:
        raise BadInput(f"--batch-size must be positive, got {args.batch_size}")
    for path, what in ((args.model, "model"), (args.data, "data")):
        _check_is_a_file(path, what)
    if args.model.endswith(".npz") and args.data.endswith(".keras"):
        raise BadInput(
            f"MODEL and DATA are in the wrong order: stableops doctor {args.data} {args.model}"
        )
    x, y, x_keys, y_keys = load_data(args.data, args.x_key, args.y_key)
    loss = resolve_loss_name(args.loss) if args.loss else None
    model = load_model(args.model, loss)
    x, x_keys = _in_input_order(model, x, x_keys)
    check_fits(model, x, y, x_keys, y_keys)

    from stableops.doctor import diagnose

    try:
        report = diagnose(model, x, y, loss=loss, batch_size=args.batch_size)
    except Exception as error:  # noqa: BLE001 - most often data that does not fit the model
        raise BadInput(
            f"the data does not fit the model: {type(error).__name__}: {_first_line(error)}"
        ) from None
    if args.json:
        print(report.to_json(indent=2))
    else:
        print(report)
    return EXIT_PROBLEMS if report.errors else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

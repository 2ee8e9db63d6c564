"""The `stableops doctor` command: the demo, a user's saved model, and bad input (exit status 2)."""

import json
import os
import subprocess
import sys

import keras
import matplotlib.image
import numpy as np
import pytest

import stableops
from stableops import cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TITLES = (
    "Unscaled features with outliers",
    "Masked sequences, fully padded rows",
    "Mixed-precision sigmoid classifier",
    "Out-of-range labels under XLA",
)


def test_demo_end_to_end_in_fast_mode(tmp_path, capsys):
    # --out naming a directory: the plot goes inside it, under the default name.
    assert cli.main(["doctor", "--fast", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    out = tmp_path / cli.DEFAULT_PLOT
    assert f"Loss curves: {out}" in text

    # Progress while it runs, then the side-by-side table and the diagnosis.
    assert "[1/4]" in text and "[4/4]" in text
    table = text[text.index("| stock Keras") :].split("\n\n")[0]
    rows = {
        line.split("|")[0].rsplit(None, 1)[0]: line
        for line in table.splitlines()[3:]
        if "|" in line
    }
    assert set(rows) == set(TITLES)
    for title in TITLES:
        first, stock, stable = rows[title].split("|")
        chance = float(first.split()[-1])  # the loss of a constant prediction
        stock_outcome, stock_loss = stock.split()[:-1], float(stock.split()[-1])
        stable_outcome, stable_loss = stable.split()[:-2], float(stable.split()[-2])
        # stableops learns: its loss ends clearly below chance ...
        assert stable_outcome[0].rstrip(";") == "learned" and stable_loss < 0.85 * chance, rows[
            title
        ]
        # ... stock Keras does not: it goes NaN, or (when the CPU's clip swallows
        # the NaN) its loss stays at chance; either way the outcome says so.
        assert " ".join(stock_outcome).startswith(("NaN at step", "silent: stuck")), rows[title]
        assert not stock_loss < 0.9 * chance, rows[title]
    assert "(caught)" in rows["Out-of-range labels under XLA"].split("|")[2]
    for check in ("input.scale", "activation.non_finite", "input.float16_overflow", "labels.range"):
        assert check in text
    assert "NaNGuard caught" in text

    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(str(out))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 0.01  # not a blank canvas
    assert keras.config.dtype_policy().name == "float32"  # the mixed-precision scenario cleaned up


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A healthy saved model, and data files for it."""
    folder = tmp_path_factory.mktemp("doctor")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", x=x, y=y, narrow=x[:, :3], short_y=y[:10])
    np.savez(folder / "features.npz", inputs=x, labels=y)
    bad = x.copy()
    bad[3, 1] = np.nan
    np.savez(folder / "nan.npz", x=bad, y=y)
    (folder / "garbage.keras").write_text("not a model")
    (folder / "garbage.npz").write_text("not an archive")
    np.save(folder / "single.npy", x)
    np.savez(folder / "strings.npz", x=x.astype(str), y=y)
    (folder / "renamed.keras").write_bytes(
        (folder / "data.npz").read_bytes()
    )  # a zip, but not a model

    def unregistered_loss(y_true, y_pred):  # a custom loss Keras cannot find when loading
        return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)

    custom = keras.models.clone_model(model)
    custom.compile(optimizer=keras.optimizers.SGD(0.01), loss=unregistered_loss)
    custom.save(folder / "custom_loss.keras")
    diverging = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    diverging.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    diverging.save(folder / "diverging.keras")
    np.savez(folder / "raw.npz", x=x * np.array([1, 10, 100, 1e3, 1e4], np.float32), y=y)
    return folder


def run(argv, capsys):
    status = cli.main(["doctor", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_user_model_healthy(saved, capsys):
    status, out, err = run([saved / "model.keras", saved / "data.npz"], capsys)
    assert status == 0, err
    assert "stableops doctor report" in out and "0 errors, 0 warnings" in out


def test_user_model_json_and_keys(saved, capsys):
    status, out, _ = run(
        [saved / "model.keras", saved / "features.npz", "--x", "inputs", "--y", "labels", "--json"],
        capsys,
    )
    assert status == 0
    data = json.loads(out)
    assert data["ok"] is True and data["context"]["samples"] == 64
    assert data["context"]["loss"] == "keras.losses.binary_crossentropy"


def test_user_model_with_problems_exits_1(saved, capsys):
    status, out, _ = run([saved / "model.keras", saved / "nan.npz"], capsys)
    assert status == 1
    assert "input.non_finite" in out and "input feature 1" in out


def test_a_run_whose_trial_diverges_exits_1(saved, capsys):
    # Unscaled features and SGD at 0.1: fit's loss goes non-finite in a few steps.
    status, out, _ = run([saved / "diverging.keras", saved / "raw.npz"], capsys)
    assert status == 1
    assert "trial.diverged" in out and "ERROR" in out


def test_a_loss_that_cannot_be_reloaded_is_reported_and_can_be_named(saved, capsys):
    status, out, err = run([saved / "custom_loss.keras", saved / "data.npz"], capsys)
    assert status == 2 and out == ""
    assert "unregistered_loss" in err and "--loss NAME" in err
    status, out, _ = run(
        [saved / "custom_loss.keras", saved / "data.npz", "--loss", "mse", "--json"], capsys
    )
    data = json.loads(out)
    assert data["context"]["learning_rate"] == pytest.approx(
        0.01
    )  # the saved optimizer, not a default
    assert data["context"]["loss"] == "keras.losses.mean_squared_error"
    assert status == (1 if data["counts"]["error"] else 0)


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["doctor", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "exit status" in text and "--loss NAME" in text
    for line in ("0  no errors found", "1  errors found", "2  bad input"):
        assert line in text


BAD_INPUTS = [
    (["missing.keras", "data.npz"], "model file not found"),
    (["model.keras", "missing.npz"], "data file not found"),
    (["garbage.keras", "data.npz"], "cannot load model"),
    (["renamed.keras", "data.npz"], "cannot load model"),
    (["model.keras", "garbage.npz"], "not a .npz archive"),
    (["model.keras", "single.npy"], "not a .npz archive"),
    (["model.keras", "data.npz", "--x", "nope"], "no array 'nope'"),
    (["model.keras", "data.npz", "--y", "nope"], "no array 'nope'"),
    (["model.keras", "features.npz"], "no array 'x'"),
    (
        ["model.keras", "data.npz", "--x", "narrow"],
        "has shape (64, 3) but the model expects (None, 5)",
    ),
    (["model.keras", "data.npz", "--y", "short_y"], "x has 64 samples but 'short_y' has 10"),
    (["model.keras", "data.npz", "--x", "x,narrow"], "takes 1 input(s) but 2 array(s)"),
    (["model.keras"], "give both MODEL and DATA"),
    (["model.keras", "data.npz", "--batch-size", "0"], "--batch-size must be positive"),
    (["model.keras", "data.npz", "--fast"], "apply to the demo"),
    (["--json"], "applies to MODEL DATA"),
    (["--fast", "--out", "x.txt"], "--out must name a .png file or an existing directory"),
    (["--out", "missing/plot.png"], "--out directory does not exist"),
    (["model.keras", "strings.npz"], "'x' holds strings (dtype <U"),
    (
        ["model.keras", "data.npz", "--loss", "no_such_loss"],
        "--loss no_such_loss: not a Keras loss",
    ),
    (["model.keras", "data.npz", "--loss", "stableops.Nope"], "stableops.losses has no loss class"),
    (["--loss", "mse"], "applies to MODEL DATA"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    ([".", "data.npz"], "model . is a directory; give the file"),
    (["model.keras", "."], "data . is a directory; give the file"),
    (["data.npz", "model.keras"], "in the wrong order: stableops doctor model.keras data.npz"),
    (["model.keras", "data.npz", "--x", ""], "--x names no array; choose one or more of: "),
]


def test_bad_input_gives_one_line_and_status_2(saved, capsys, monkeypatch):
    # One test for all cases (each is milliseconds; a test each would mostly
    # pay the per-test Keras session teardown). Every failing case is listed.
    monkeypatch.chdir(saved)
    failures = []
    for args, message in BAD_INPUTS:
        status, out, err = run(args, capsys)
        lines = err.strip().splitlines()
        ok = (
            status == 2
            and out == ""
            and len(lines) == 1
            and lines[0].startswith("stableops doctor: error: ")
            and message in lines[0]
        )
        if not ok:
            failures.append(f"{args}: status {status}, stdout {out!r}, stderr {err!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "argv, message", [([], "choose a command"), (["bogus"], "invalid choice: 'bogus'")]
)
def test_no_command(capsys, argv, message):
    # Errors of the top-level command are the top-level program's ("stableops doctor: error"
    # named a command that was never given).
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stableops: error: ") and message in err, err


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"stableops {stableops.__version__}"


def test_python_dash_m_in_a_subprocess(saved):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stableops",
            "doctor",
            str(saved / "model.keras"),
            str(saved / "missing.npz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"stableops doctor: error: data file not found: {saved / 'missing.npz'}"
    )


def test_inputs_and_labels_by_key(tmp_path, capsys):
    """A 1-D ``x`` for an ``Input((1,))`` model (Keras's fit takes it; the command refused it),
    inputs named by ``--x`` in any order (they were fed by position), and ``--y`` with one key
    per output (a multi-output model could not be given its labels)."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    one = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    one.compile(optimizer="adam", loss="mse")
    one.save(tmp_path / "one.keras")
    x1 = rng.normal(size=64).astype(np.float32)
    np.savez(tmp_path / "one.npz", x=x1, y=2 * x1)
    status, _, err = run([tmp_path / "one.keras", tmp_path / "one.npz"], capsys)
    assert status == 0, err

    a, c = keras.Input((2,), name="a"), keras.Input((3,), name="c")
    both = keras.layers.Concatenate()([a, c])
    first, second = keras.layers.Dense(1, name="p")(both), keras.layers.Dense(1, name="q")(both)
    model = keras.Model([a, c], [first, second])
    model.compile(optimizer="adam", loss=["mse", "mse"])
    model.save(tmp_path / "two.keras")
    xa, xc = rng.normal(size=(64, 2)), rng.normal(size=(64, 3))
    np.savez(tmp_path / "two.npz", a=xa, c=xc, ya=xa[:, :1], yc=xc[:, :1])
    status, out, err = run(
        [tmp_path / "two.keras", tmp_path / "two.npz", "--x", "c,a", "--y", "ya,yc", "--json"],
        capsys,
    )
    assert status == 0, err
    assert json.loads(out)["counts"]["error"] == 0


def test_the_demo_without_matplotlib_says_so_before_training(monkeypatch, capsys):
    # The plot extra is optional: without it the demo crashed after training (exit 1).
    monkeypatch.setattr(cli, "_can_plot", lambda: False)
    assert cli.main(["doctor", "--out", "plot.png"]) == 2
    assert "needs matplotlib" in capsys.readouterr().err

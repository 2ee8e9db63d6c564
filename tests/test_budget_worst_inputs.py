"""The documented error budgets at the worst inputs a random search found.

A search of every stated budget (about 1e6-5e7 random rows per function, float32 through
the compiled kernels, screened in float64 and confirmed with mpmath at 100 bits) found
these rows above the budgets their docstrings stated then; the budgets now cover them.
Inputs only: every expected value comes from mpmath (tests/_reference.py), in three
regimes. Only the budget is asserted: the errors at these rows depend on how XLA's
``exp`` and ``log1p`` round on the CPU at hand (``logaddexp``'s row is 4.5 ULP with
AVX-512, 2.5 with ``--xla_cpu_max_isa=SSE4_2``).
"""

import functools

import mpmath
import numpy as np
import pytest

import stableops.losses as S
import stableops.ops as O
from benchmarks.accuracy import mp_nt_xent
from tests import _reference as R

F32 = "float32"


def _unit_of_larger(reference, magnitude):
    """ULPs of ``max(|reference|, magnitude)``: the unit of logsumexp's and logaddexp's budgets."""
    return max(abs(reference), R.mpf(magnitude))


def _errors_in_unit(value, reference, unit, dtype=F32):
    return np.array(
        [float(abs(R.mpf(v) - r) / R.ulp_of(u, dtype)) for v, r, u in zip(value, reference, unit)]
    )


@pytest.mark.parametrize(
    "row, dtype",
    [
        # 6.6 ULP at the smallest entry with the float32 row sum (4 stated then).
        ([3.4593625, 0.48420775, -7.3376527, 0.385492, -6.592675, -0.041452866, -5.5125713,
          -9.618327], "float32"),
        # A row of 64 found at 9.4 ULP with the float32 row sum (16 stated then).
        ([11.131707, 4.590979, -5.737044, -0.27756324, 0.30403119, 2.8276322, 4.4436283,
          -3.6447997, -6.2687616, -4.5081367, 0.22251876, -5.0553722, 7.0512714, -1.2255764,
          -2.5661058, 2.7357733, 0.13806158, -1.7904428, 6.195939, 0.4454543, -4.1802454,
          -2.6758368, -5.3603969, 7.8109326, -4.8406401, -0.18920667, -4.2744408, 3.5746605,
          -10.146798, 0.53324318, -3.5589309, -7.059432, 1.517373, -1.6403309, 0.75369042,
          1.4059281, 7.9674768, 0.10210285, 3.4557471, 0.66723162, 1.4650648, 5.6893053,
          0.049811009, -3.7948418, -2.1539655, -1.9276783, -2.8174887, -3.6292534, -1.193393,
          2.1044343, 0.14411038, 1.5303047, -2.0794005, -4.2706232, 0.025898872, -2.8051722,
          -1.4761033, 5.6077271, -3.7613199, 1.5647937, 1.7459444, -2.4707317, -2.5309417,
          -2.1618044], "float32"),
        # float64: 4.2 ULP with its sum's rounding per entry and four roundings after exp.
        ([5.496821675210587, -13.995464985335213, 7.218342175065004, 5.191646875385839,
          15.16408854459372, -10.534969109829097, -11.940954584453698, 7.071682729995462],
         "float64"),
    ],
    ids=["float32-8", "float32-64", "float64-8"],
)
def test_softmax_rows_where_the_row_sum_rounded(regime, row, dtype):
    # Within the 3-ULP budget: the sum is float64's (float32 input) or split exactly
    # (float64 input), and each entry rounds once after exp.
    x = np.array([row], dtype=dtype)
    reference = np.array([R.mp_softmax([R.mpf(float(v)) for v in x[0]])], dtype=object)
    errors = R.ulp_error(regime.run(O.softmax, x), reference, dtype)
    assert errors.max() <= 3, errors


def test_logsumexp_and_logaddexp_near_their_cancellation(regime):
    # In ULPs of max(|result|, |max|): a negative maximum cancels part of the log1p term.
    # logsumexp: 4.9 with m + log1p(s) in float32 (4 stated), 0.9 formed in float64 (per row).
    # logaddexp: 4.5 with the float32 formula (4 stated then), 1.5 formed in float64.
    x = np.float32([[-4.523073, -1.070977, -2.793438, -0.41745475, -2.1695063, -3.607483,
                     -2.4621546, -3.935517]])
    reference = [R.mp_logsumexp([R.mpf(v) for v in x[0]])]
    value = regime.run(O.logsumexp, x)
    errors = _errors_in_unit(value, reference, [_unit_of_larger(reference[0], x.max())])
    assert errors.max() <= 4, errors
    # Then 4.1 with the float32 formula, and the worst of 5e6 random pairs in float64
    # (2.3 ULP; 3 stated).
    a = np.float32([-5.845205, -9.364783, -0.00014100655])
    b = np.float32([-0.00094287144, -4.5942383e-05, -7.928969])
    reference = [R.mp_logaddexp(R.mpf(u), R.mpf(v)) for u, v in zip(a, b)]
    value = regime.run(O.logaddexp, a, b)
    units = [_unit_of_larger(r, max(u, v)) for r, u, v in zip(reference, a, b)]
    errors = _errors_in_unit(value, reference, units)
    assert errors.max() <= 3, errors


def test_logaddexp_float64_pairs_where_exp_rounded(regime):
    # In ULPs of max(|result|, |max|). 4.7 ULP with XLA's float64 exp (5 stated then); 2.8
    # with the exp split exactly but log1p rounded before the maximum was added; the worst
    # of 4e6 random pairs since (1.04; 2 stated).
    a = np.float64([-0.043791135913696544, -0.001711495317973148, -0.0003346054202314084])
    b = np.float64([-2.4648608902332687, -5.190509197638849, -7.2725172539824205])
    reference = [R.mp_logaddexp(R.mpf(u), R.mpf(v)) for u, v in zip(a, b)]
    value = regime.run(O.logaddexp, a, b)
    units = [_unit_of_larger(r, max(u, v)) for r, u, v in zip(reference, a, b)]
    errors = _errors_in_unit(value, reference, units, "float64")
    assert errors.max() <= 2, errors


def test_kl_divergence_and_mape_rows(regime):
    # 4.1 ULP each with float32 roundings (4 stated then). KL's rows both sum to 1 to float32
    # precision, so its unit, sum(p phi(t/p)) + |sum(t - p)|, is the result's own ULP within a
    # few percent: 3.1 with the ratio's rounding corrected, and the worst of 4e5 random rows
    # then (3.0; 4 stated).
    t = np.float32([[0.15740046, 0.13512683, 0.13458848, 0.039132506, 0.10507406, 0.15570313,
                     0.12462734, 0.14834721],
                    [0.1658237874507904, 0.031548697501420975, 0.4925689399242401,
                     0.00033665206865407526, 0.04050535708665848, 0.1430497020483017,
                     0.020344147458672523, 0.10582271963357925]])
    p = np.float32([[0.16724636, 0.04833979, 0.14443664, 0.04330097, 0.12633862, 0.16163017,
                     0.138954, 0.16975345],
                    [0.17204903066158295, 0.040702346712350845, 0.5232915282249451,
                     0.0004262824368197471, 0.05272858962416649, 0.12388267368078232,
                     0.021470967680215836, 0.06544855237007141]])
    reference = R.reference_rows(R.mp_kl_divergence_row, t, p, 0.0)
    errors = R.ulp_error(regime.run(S.kl_divergence, t, p), reference, F32)
    assert errors.max() <= 4, errors
    t = np.float32([[803.3303, -0.096435644, -1.7065915e-06, 209.34138, 0.7774636, -0.044020567,
                     -1.0881104, 0.000105207284]])
    p = np.float32([[-489.64883, -0.051636245, -4.074338, -1.6067924, 993.58795, -0.06810372,
                     -216.93721, -0.0009327516]])
    # MAPE: 4.1 with the float32 sum, under 2.2 summed in float64 (3 stated).
    reference = R.reference_rows(R.mp_mean_absolute_percentage_error_row, t, p)
    errors = R.ulp_error(regime.run(S.mean_absolute_percentage_error, t, p), reference, F32)
    assert errors.max() <= 3, errors


def test_dice_row_in_a_large_batch(regime):
    # 0.4 ULP alone, 5.6 in a batch of 2^17 copies with the float32 sums of the inputs (4
    # stated then); the terms and sums in float64 now (3 stated).
    t = np.float32([[0.0010249058, 1.6403475e-05, 1.576734e-06, 8.283308e-05, 4.4054073e-06,
                     0.00059224875, 0.523726, 3.5142974e-05]])
    p = np.float32([[0.00020086452, 0.0018128632, 7.5136027e-06, 0.00032348552, 5.666059e-06,
                     0.003845746, 2.3154942e-06, 0.020339167]])
    reference = R.reference_rows(lambda a, b: R.mp_dice_loss(a, b, 0.0), t, p)[0]
    batch = 1 << 17
    value = regime.run(lambda a, b: S.dice(a, b, axis=-1), np.repeat(t, batch, 0),
                       np.repeat(p, batch, 0))
    errors = R.ulp_error(value[:1], np.array([reference], dtype=object), F32)
    assert np.all(value == value[0])  # one row, one value
    assert errors.max() <= 3, errors


@pytest.mark.parametrize(
    "from_logits, label, row, budget",
    [
        # Logits on a grid of 2^-10 (their differences are exact): 15.2 ULP (8 stated then).
        (True, 1, [-2.1054688, 7.8095703, -4.533203, 2.4501953, -8.8125, -14.512695, -8.806641,
                   -1.2841797], 4),
        # The worst of 1.2e7 random rows with log q and 1 - q in float64: 3.7 ULP.
        (True, 5, [6.2788677, 3.7037144, -7.6623697, -3.550421, -3.6362371, 13.539341,
                   -16.780752, -2.0616226], 4),
        (False, 1, [0.0095309485, 0.9904235, 6.4298716e-15, 1.4790232e-15, 3.8671744e-05,
                    6.8354275e-06, 6.546959e-08, 3.2958344e-15], 2),  # 11.6 ULP in float32
    ],
)
def test_categorical_focal_rows(regime, from_logits, label, row, budget):
    # The stated budgets: 4 ULP from logits (float32 exp's error, gamma-amplified), 2 from
    # probabilities (the float32 log of the rounded quotient, corrected).
    t = np.eye(8, dtype=np.float32)[[label]]
    y = np.float32([row])
    logits = [R.mpf(v) if from_logits else mpmath.log(R.mpf(v)) for v in row]
    reference = [R.mp_categorical_focal_logits([R.mpf(v) for v in t[0]], logits, 2.0, 0.25)]
    value = regime.run(
        lambda a, b: S.categorical_focal_crossentropy(a, b, from_logits=from_logits), t, y
    )
    errors = R.ulp_error(value, np.array(reference, dtype=object), F32)
    assert errors.max() <= budget, errors


@functools.lru_cache(maxsize=None)
def _focal_rows_near_a_half():
    """Targets, unnormalized probability rows and their mpmath losses (computed once, for
    every regime)."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0.25, 0.5, 3000)
    b = 1.0 - a
    scale = rng.uniform(0.3, 3.0, (3000, 1))  # unnormalized rows
    y = np.stack([a, b * rng.uniform(0.5, 1.0, 3000), b * rng.uniform(0.0, 0.5, 3000)], 1)
    y = (y * scale).astype(np.float32)
    t = np.zeros_like(y)
    t[:, 0] = 1.0
    reference = [
        R.mp_categorical_focal_logits([R.mpf(float(v)) for v in t_row],
                                      [mpmath.log(R.mpf(float(v))) for v in y_row], 2.0, 0.25)
        for t_row, y_row in zip(t, y)
    ]
    return t, y, np.array(reference, dtype=object)


def test_categorical_focal_from_probabilities_where_log_q_is_smallest(regime):
    # The target's q = p / sum(p) from 0.18 to 0.67, most below a half (no top entry): |log q|
    # is smallest there, so the rounding of q to float32 weighs most. log q is the float32 log
    # of a float32 number near q, corrected by the rest: without the correction 2.3 ULP, with
    # it 1.6, against the probabilities' budget of 2 (test_categorical_focal_rows).
    t, y, reference = _focal_rows_near_a_half()
    value = regime.run(lambda a, b: S.categorical_focal_crossentropy(a, b), t, y)
    errors = R.ulp_error(value, reference, F32)
    assert errors.max() <= 2, errors.max()


@pytest.mark.parametrize("label", [0, 1, 4])
def test_categorical_focal_from_probabilities_rows_summing_past_2_to_the_126(regime, label):
    # float32 entries near the float32 max: the row's sum is above 2^126, where its float32
    # reciprocal flushes to 0 (the row is scaled first). Label 0 is an ordinary entry (log q
    # from the float32 quotient), 1 the top entry, 4 one that the scaling flushes, whose q
    # (2^-207) costs -log(tiny), as every quotient below tiny does. The budget is the
    # probabilities' 2 ULP (test_categorical_focal_rows).
    row = np.float32([0.0095309485, 0.9904235, 6.4298716e-15, 1.4790232e-15, 3.8671744e-05,
                      6.8354275e-06, 6.546959e-08, 3.2958344e-15]) * np.float32(2.0**127)
    row[4] = np.float32(2.0**-80)
    t = np.eye(8, dtype=np.float32)[[label]]
    y = row[None, :]
    logits = [mpmath.log(R.mpf(float(v))) for v in row]
    reference = [R.mp_categorical_focal_logits([R.mpf(v) for v in t[0]], logits, 2.0, 0.25)]
    if label == 4:
        reference = [-R.mpf(0.25) * mpmath.log(R.mpf(float(np.finfo(np.float32).tiny)))]
    value = regime.run(lambda a, b: S.categorical_focal_crossentropy(a, b), t, y)
    errors = R.ulp_error(value, np.array(reference, dtype=object), F32)
    assert np.isfinite(y).all() and row.astype(np.float64).sum() > 2.0**126
    assert errors.max() <= 2, errors


@pytest.mark.parametrize(
    "from_logits, label, row",
    [
        # 7 ULP: 1 - q as rest times the reciprocal of the rounded total, the top entry as
        # total - rest; squared by gamma = 2.
        (False, 0, [0.9999999999999999, 3.700743415417188e-17, 3.700743415417188e-17,
                    3.700743415417188e-17]),
        (False, 0, [0.9521263742642672, 0.04038675923536746, 0.0011225450287761422,
                    0.006364321471589339]),  # 6.1 ULP
        # 5.7 ULP with XLA's float64 exp (1.7 ULP) and a float64 row sum; 4.3 with the exp
        # split and the exact sum, s / (1 + s) rounded (no correction).
        (True, 7, [6.152665899296645, -6.857572718384874, -1.900808876363582, 3.48806052066311,
                   -3.8798452414528466, 6.02718774119336, -3.8206977126664334,
                   7.042060845479335]),
        (True, 7, [-5.348238346778781, -2.044191460314227, -1.258462935262104,
                   -12.685687205373183, -0.45851982752182563, -6.94252332253024,
                   8.933920558080718, 14.047741081198433]),
    ],
)
def test_categorical_focal_rows_in_float64(regime, from_logits, label, row):
    # float64 has no wider type to hide roundings in: the stated 4 ULP hold with the top
    # entry exact, 1 - q corrected for its roundings (logits: exp split into two parts, the
    # row sum exact).
    t = np.eye(len(row))[[label]]
    y = np.float64([row])
    logits = [R.mpf(v) if from_logits else mpmath.log(R.mpf(v)) for v in row]
    reference = [R.mp_categorical_focal_logits([R.mpf(v) for v in t[0]], logits, 2.0, 0.25)]
    value = regime.run(
        lambda a, b: S.categorical_focal_crossentropy(a, b, from_logits=from_logits), t, y
    )
    assert value.dtype == np.float64
    errors = R.ulp_error(value, np.array(reference, dtype=object), "float64")
    assert errors.max() <= 4, errors


def test_kl_divergence_of_float64_distributions_that_differ_in_the_last_digit(regime):
    # t - p is +-2^-54 in two entries and cancels exactly: summed with the parts p phi(t/p)
    # (about 1e-32 each), it rounded them away (1.8e-32 for 1.2e-32, 2.2e15 ULP).
    t = np.full((1, 4), 0.25)
    p = np.array([[0.25 + 2.0**-54, 0.25 - 2.0**-54, 0.25, 0.25]])
    value = regime.run(S.kl_divergence, t, p)
    reference = [R.mp_kl_divergence_row([R.mpf(v) for v in t[0]], [R.mpf(v) for v in p[0]],
                                        float(np.finfo(np.float64).tiny))]
    errors = R.ulp_error(value, np.array(reference, dtype=object), "float64")
    assert errors.max() <= 4, (value, reference)


@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_overlap_losses_in_float64_within_4_ulp_for_up_to_32_values(regime, name):
    # The float64 budget: each sum rounds in float64 (nothing wider), so it is stated for up
    # to 32 summed values. Rows of 8 (axis=-1) and batches of 32 (axis=None), targets 0 or
    # 1 or soft, predictions of every spread; references at 650 digits (as the accuracy
    # benchmark's for float64).
    rng = np.random.default_rng(11)
    t = (rng.random((400, 8)) < 0.5) * rng.choice([1.0, 0.7], (400, 1))
    p = rng.random((400, 8)) ** rng.uniform(0.2, 5.0, (400, 1))
    loss = getattr(S, name)
    rows = regime.run(lambda a, b: loss(a, b, axis=-1), t, p)
    batches = [regime.run(loss, t[k:k + 4], p[k:k + 4]) for k in range(0, 80, 4)]

    def reference(tr, pr):
        tr, pr = [R.mpf(v) for v in tr.ravel()], [R.mpf(v) for v in pr.ravel()]
        if name == "dice":
            return R.mp_dice_loss(tr, pr, 0)
        return R.mp_tversky_loss(tr, pr, R.mpf(0.5), R.mpf(0.5), 0)

    with mpmath.workdps(650):
        row_refs = np.array([reference(t[i], p[i]) for i in range(400)], dtype=object)
        batch_refs = np.array(
            [reference(t[k:k + 4], p[k:k + 4]) for k in range(0, 80, 4)], dtype=object
        )
        errors = np.concatenate([R.ulp_error(rows, row_refs, "float64"),
                                 R.ulp_error(np.array(batches), batch_refs, "float64")])
    assert errors.max() <= 4, errors.max()


def test_nt_xent_on_embeddings_with_exact_similarities(regime):
    # Rows of +-c (c a power of 2) have similarities in {0, +-1/2, +-1}: the logits s / t
    # are exact at t = 2^-3, so the reference is the loss of the kernel's own logits. The
    # worst of 300 such batches: 4.5 ULP with the row's log-sum-exp in float32 (6 stated
    # then); in float64, 1.
    x = np.float32([
        [-4, -4, -4, -4], [2, 2, -2, 2], [-1 / 16, 1 / 16, 1 / 16, 1 / 16], [-1, 1, -1, 1],
        [-4, -4, -4, -4], [1 / 16, -1 / 16, 1 / 16, 1 / 16], [1 / 4, 1 / 4, -1 / 4, 1 / 4],
        [-1 / 4, 1 / 4, 1 / 4, -1 / 4], [-2, 2, 2, 2], [-1, -1, 1, 1],
        [-1 / 8, -1 / 8, 1 / 8, 1 / 8], [1 / 8, 1 / 8, 1 / 8, 1 / 8], [1 / 2, 1 / 2, 1 / 2, 1 / 2],
        [-4, -4, 4, 4], [2, 2, -2, 2], [1 / 2, -1 / 2, 1 / 2, -1 / 2],
    ])
    temperature = 0.125
    reference = mp_nt_xent([[R.mpf(float(v)) for v in row] for row in x], temperature)
    value = regime.run(lambda v: S.nt_xent(None, v, temperature=temperature), x)
    errors = R.ulp_error(value, np.array(reference, dtype=object), F32)
    assert errors.max() <= 1, errors


def test_cross_entropy_from_logits_with_flushed_terms(regime):
    # A result above the smallest normal (7.1e-37) made of terms below it, which TF's CPU
    # kernels flush to zero: within the stated allowance of tiny per class (2.8% here).
    x = np.float32([[-11.598718, 0.9581021, 0.60505134, -10.636884, 5.0502434, -60.074413,
                     88.31628, -6.8051567]])
    t = np.float32([[0, 0, 0, 0, 0, 0, 1, 0]])
    reference = R.reference_cross_entropy_rows(R.mp_categorical_crossentropy_logits, t, x)[0]
    tiny = float(np.finfo(np.float32).tiny)
    for value in (
        regime.run(lambda a, b: S.categorical_crossentropy(a, b, from_logits=True), t, x)[0],
        regime.run(
            lambda a, b: S.sparse_categorical_crossentropy(a, b, from_logits=True),
            np.int32([6]), x,
        )[0],
    ):
        slack = float(abs(R.mpf(value) - reference)) - 4 * float(R.ulp_of(reference, F32))
        assert slack <= x.shape[1] * tiny and value != float(reference), value


@pytest.mark.parametrize(
    "from_logits, t, y",
    [
        # Soft targets: 8.5 ULP from logits and 6.5 from probabilities with 1 - p_t and
        # the cross-entropy in float32 (16 stated then).
        (True, 0.3595437705516815, 7.611390590667725),
        (False, 0.3974296748638153, 0.89714115858078),
        # The worst of 5e6 random rows each way with the loss formed in float64 (gamma 2,
        # with and without class balancing and label smoothing): 2.3 ULP from
        # probabilities (the float32 log p), 0.5 from logits (float64 exp).
        (False, 1.0, 0.8781002759933472),
        (False, 1.7895986275107134e-06, 0.061722610145807266),
        (True, 0.8968431353569031, 0.0037844402249902487),
        # A hard target with a confident prediction: (1 - p_t)^2 bce ~ exp(-3|x|)
        # amplified float32 exp's error 3 times (3.4 ULP with it).
        (True, 1.6416677681263536e-05, -5.833532333374023),
        # A negative target with a tiny probability: 1 - p rounds to 1 in float32, and
        # log(1 - p) = -p comes from the rounding's correction alone.
        (False, 0.0, 5.7e-11),
    ],
)
def test_binary_focal_rows(regime, from_logits, t, y):
    # The stated budget: 3 ULP (the loss in float64 from float64 exp, or from float32 log
    # with the rounding of 1 - p corrected, rounded once).
    target, prediction = np.float32([[t]]), np.float32([[y]])
    z, v = R.mpf(float(target[0, 0])), R.mpf(float(prediction[0, 0]))
    if from_logits:
        reference = R.mp_binary_focal_logits(z, v, 2.0)
    else:
        reference = R.mp_binary_focal_probabilities(z, v, 2.0)
    value = regime.run(
        lambda a, b: S.binary_focal_crossentropy(a, b, gamma=2.0, from_logits=from_logits),
        target, prediction,
    )
    errors = R.ulp_error(value, np.array([reference], dtype=object), F32)
    assert errors.max() <= 3, errors


def test_binary_focal_with_gamma_0_and_class_balancing(regime):
    # gamma = 0 is the plain cross-entropy, weighted by alpha t + (1 - alpha)(1 - t): the
    # weight formed in float32 rounded twice more (3.5 ULP here against the stated 3).
    target, logit = np.float32([[0.18986663]]), np.float32([[2.9003513e-06]])
    reference = R.mp_binary_focal_logits(
        R.mpf(float(target[0, 0])), R.mpf(float(logit[0, 0])), 0, alpha=0.25
    )
    value = regime.run(
        lambda a, b: S.binary_focal_crossentropy(
            a, b, apply_class_balancing=True, alpha=0.25, gamma=0.0, from_logits=True
        ),
        target, logit,
    )
    errors = R.ulp_error(value, np.array([reference], dtype=object), F32)
    assert errors.max() <= 3, errors

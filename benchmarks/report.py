"""The report: targets checked, and ``summary.md`` built from the section JSON files.

Everything here reads the JSON files of an output directory, so the summary
of a partial rerun still covers every section measured there. Targets are
measured, not asserted: a missed target is listed with the numbers and the
reason (``WHY`` holds the reasons found by reading the kernels; a case with
no entry gets the common reason of its target, ``GENERIC_WHY``).

The targets are issue 12's: medians of same-round ratios stableops / Keras,
float32, forward + backward, every case at every size from
``TARGET_MIN_SIZE`` to ``TARGET_MAX_SIZE`` elements. A miss whose 25th
percentile meets the target is inside the round-to-round spread: it is
marked ``~`` and counts as met, and the summary says so.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

from benchmarks.cases import CASES, CASES_BY_NAME, SPEED_VARIANTS

TARGET_MIN_SIZE, TARGET_MAX_SIZE = 2**14, 2**24
EAGER_MIN_SIZE = 2**20
# Speed, per mode: (target id, largest ratio, smallest size held to it).
SPEED_TARGETS = {
    "function": ("function", 1.00, TARGET_MIN_SIZE),  # model.fit's default on CPU
    "xla": ("compiled", 1.05, TARGET_MIN_SIZE),
    "eager": ("eager", 1.00, EAGER_MIN_SIZE),
}
E2E_STEP_MAX = 1.03  # model.fit step time, every model and policy, both compile modes
E2E_COMPILES = {
    "graph": "function",
    "xla": "xla",
}  # end-to-end compile mode -> the speed mode it runs
E2E_COMPILE_NAMES = {
    "graph": "jit_compile=False",
    "xla": "jit_compile=True",
    "eager": "run_eagerly=True",
}
MEMORY_MAX = {"function": 1.0, "xla": 1.25}  # peak memory ratio, per-op and end to end
COMPILE_OVERHEAD_MAX_S = 2.0  # first-fit compile overhead, stableops minus Keras, seconds
COMPILE_OVERHEAD_MODELS = ("cnn",)
ULP_MAX = 4.0  # every case, eager and XLA (the contract's ceiling on any op's budget)
ULP_TARGETS = {"float32": "ulp", "float64": "ulp64"}  # dtype -> target id, both held to ULP_MAX
SECTION_FILES = ("bandwidth", "speed", "accuracy", "gradients", "memory", "end_to_end")
MODES_ORDER = ("eager", "function", "xla")

# Trades between a ULP budget and speed (contract rule 7, issue 12 item 4: a budget may rise to
# at most 4 ULP for parity, and no further), printed in the summary's "Trades" section: case ->
# "ULP before -> after, speed before -> after", e.g. "elu": "float32 0.8 -> 3.1 ULP; function
# 2^20 1.62 -> 0.97, xla 2^20 1.10 -> 1.01". Empty: none made.
TRADES: dict[str, str] = {
    "softmax": (
        "budget 16 -> 3 ULP, speed given for it: the contract's 4-ULP ceiling (rule 7) comes "
        "before parity. The float32 row sum of the exponentials added its roundings to every "
        "entry (11.8 ULP on rows of 64 against mpmath); now the exponentials are summed and "
        "normalized in float64 and each entry rounded once (2.1 ULP). Single core at 2^20, one "
        "process, alternating with Keras: under XLA 0.98 -> 1.10, plain tf.function 1.16 -> "
        "1.27 (2^14: 0.99 -> 1.14 and 1.17 -> 1.29; 2^22: 1.02 -> 1.13 and 1.20 -> 1.16). "
        "Tried: a float64 sum of the float32 products with a float32 normalization, 4.3 ULP at "
        "rows of 1024, 1.10 and 1.20. Since 5a36db2 each corrected exponential is "
        "rounded to float32 once more before the float64 sum (`written_once`: formed in one "
        "loop that the others read), 2.1 -> 2.4 ULP against mpmath at worst (1.5 -> "
        "1.6 in this benchmark's sample; the budget stays 3): one core at 2^20, under XLA "
        "1.63 -> 1.10, plain tf.function 1.74 -> 1.47. With the correction as a division by "
        "1 - z_low instead (no division by 1): 3.0 ULP, the same speed"
    ),
    "categorical_focal_crossentropy": (
        "budget 16 -> 4 ULP from logits, -> 2 from probabilities, speed given for it (rule 7's "
        "ceiling): (1 - q)^gamma doubled the roundings of a float32 softmax and its 1 - q (15.2 "
        "and 11.6 ULP); log q and 1 - q are now formed in float64 and the loss summed there "
        "(3.7 and 1.8 ULP in 1.2e7 and 4e6 random rows). Single core at 2^20 ([8192, 128]), "
        "alternating with Keras: from logits under XLA 0.92 -> 1.12, plain tf.function 0.51 -> "
        "0.60 (with float64 exp, 0.5 ULP: 1.35 and 0.71); from probabilities 0.97 -> 1.08 and "
        "0.42 -> 0.48 (a float64 log per element: 2.17 and 0.91)"
    ),
    "binary_crossentropy": (
        "budget unchanged (3 ULP); log(1 - p) is log(w) + d (2 - w) with w = 1 - p rounded and "
        "d its exact rounding error, where it was the compensated log1p series (0.6 ULP) below "
        "p = 1/2 beside a log above: measured against mpmath on [1e-30, 1), float32 0.6 -> 1.6 "
        "ULP under XLA and 2.9 eagerly (TF's eager float32 log), float64 1.0; single core at "
        "2^20 under XLA, one process, alternating: 1.69 -> 1.23 (binary focal, through the same "
        "log(1 - p): 1.78 -> 1.16)"
    ),
    "gaussian_kl": (
        "value budget unchanged (4 ULP); the log-variance slope expm1(d)/2 is exp(d)/2 - 1/2 "
        "from the value's exp (d/2 + d^2/4 below 2^-8): within 8 ULP of the larger of exp(d)/2 "
        "and 1/2 (the terms that cancel, the hand-written gradient's error) where it was within "
        "8 ULP of expm1(d)/2 itself (the value plus d/2, which made XLA evaluate the "
        "polynomial in the gradient's fusion too); single core at 2^20 under XLA, one process, "
        "against the hand-written formula, medians of seven alternating runs: 1.09 -> 1.04 (ranges "
        "1.02-1.14 -> 1.00-1.06); new / old in the same process: plain tf.function 0.92-0.96, "
        "eagerly 0.95-0.98"
    ),
    "binary_focal_crossentropy": (
        "budget 16 -> 3 ULP, speed given for it (rule 7's ceiling): with soft targets the float32 "
        "roundings of 1 - p_t (amplified gamma times) and of the cross-entropy reached 8.5 ULP "
        "from logits and 6.5 from probabilities; both and their product are now formed in "
        "float64 and rounded once (0.5 and 2.3 ULP in 5e6 random rows each). One core, "
        "[16384, 64], alternating with Keras: from logits under XLA 1.17 -> 1.30, plain "
        "tf.function 0.38 -> 0.43 (a float32 exp instead of float64's: 3.4 ULP on confident hard "
        "targets); from probabilities 1.00 -> 1.27 and 0.29 -> 0.36"
    ),
    "mean_squared_logarithmic_error": (
        "budget 12 -> 4 ULP (6 before the random search found 10.1 on rows of one entry), speed "
        "given for it (rule 7's ceiling): log1p(q) is log(w) plus the rounding of w = 1 + q over "
        "w, with the quotient's three roundings corrected in float64 and the squares summed "
        "there (3.5 ULP against mpmath; XLA's float32 log1p of the rounded quotient was 2.4 ULP "
        "off, doubled by the square). Single core at 2^20, alternating with Keras: under XLA "
        "1.27 -> 1.71, plain tf.function 0.45 -> 0.61. Tried: the corrections without the "
        "quotient's (6.8 ULP) 1.19; XLA's log1p with the written-out gradient (8.4 ULP) 1.09; "
        "the quotient in float64 2.2; the compensated log1p series 4.24. Since 65eaaa9 "
        "log1p(q) is (w log(w) + r) / w, the float64 division last, and q is |a - t| "
        "times the reciprocal of 1 + min: XLA writes the log error out once and fuses every "
        "step before it into that loop, where it repeated the cheap last steps in the sum's "
        "and the gradient's loops and wrote out the quotient, log(w), two reciprocals and the "
        "squares (same ULP): one core at 2^20, one process, alternating, 1.80 -> 1.26-1.41 "
        "under XLA, 0.78 -> 0.58-0.62 in a plain tf.function"
    ),
    "logaddexp": (
        "budget 5 -> 3 ULP in float32: x - y exact in float64, the float32 exp of its rounding "
        "corrected, log1p of the tail a float64 polynomial, the sum rounded once (4.5 -> 2.3 "
        "ULP). Not a benchmark case; at 2^20, one core, against keras.ops.logaddexp: under XLA "
        "0.97 -> 1.01, plain tf.function 0.35 -> 0.43 (a float64 exp: 1.45; a float64 log1p: "
        "4.5). float64 input, budget 5 -> 2 ULP: exp(-|x - y|) split into two parts to 0.3 ULP "
        "(XLA's float64 exp is 1.7 ULP off), summed with log1p's parts and the maximum before "
        "one rounding (4.7 -> 1.04 ULP); 0.49 -> 0.55 and 0.42 -> 0.45 against Keras's float64"
    ),
}

# Reasons for missed targets, keyed by (target id, case): found by reading the kernels and by the
# CPU-time ratios (which background load barely moves). A case with no entry gets GENERIC_WHY.
_ROW_REDUCTIONS = (
    "the stable row reduction (`_shifted_exponentials`) carries x - max as a TwoSum pair and "
    "corrects "
    "exp(z) by (1 + z_low), and makes three reductions per row (max, the sum of the non-maximal "
    "exponentials, "
    "the count of ties) where TF's kernel makes two (max, sum); each is a pass over the row, and "
    "the backward "
    "pass repeats the work. logsumexp, single core at 2^20: 2.0-2.1, 1.56-1.61 since the "
    "exponentials below the maximum are one buffer for the sum and the gradient (XLA wrote "
    "p and p without the maxima; peak memory under XLA 4.89 -> 2.93x); without the count of "
    "ties 1.52-1.59 (before that change), without it, the TwoSum and the log1p series 1.28; the "
    "count in the same reduction as the sum (a stacked, a complex or a variadic reduce) "
    "2.2-3.9, the first maximum from argmax 2.7-2.8 (one core, this session) or top_k 93: "
    "none reaches 1.05 within 4 ULP. Since 5db9d5c both row sums are float64 sums "
    "that XLA forms and sums in one loop (`_internal/reductions.float64_sum`), where the "
    "terms and the ties' indicator were each written out for YNNPACK: one core, alternating "
    "with Keras, logsumexp 1.76 -> 1.23 and log_softmax 2.06 -> 1.71 at 2^22, categorical "
    "cross-entropy from logits 1.36 -> 1.11 at 2^20, 2^14 unchanged; two-core runs of "
    "logsumexp at 2^20 spread 1.2-1.6 before and after. Since 5a36db2 and afcd45a the TwoSum's "
    "guard is a NaN test (`is_finite` cost up to a tenth: log_softmax 1.45 -> 1.35 at 2^20, "
    "one core), and where the gradient reads the terms below the maximum again (logsumexp, "
    "sparse cross-entropy) they are written once (`written_once`), with -1 at the maxima, "
    "and the sums and the gradient read that array alone, where the gradient formed them "
    "again with their TwoSum and the count and the gradient compared x with the maximum: "
    "logsumexp 1.45-1.56 -> 1.33-1.41 at 2^20 (one core, alternating the code; at 2^22 "
    "and 2^24 within the spread: 1.63-1.64 -> 1.59-1.77 and 1.64 -> 1.70-1.73)"
)
_CROSS_ENTROPY = (
    "the loss is sum(z) log1p(s) - sum(z (x - max)) from the stable row reduction's pieces (see "
    "`logsumexp`: the TwoSum of x - max, three reductions per row), plus the target's mass and "
    "the target-weighted sum: five reductions per row where TF's fused kernel computes the "
    "loss and its gradient (softmax - labels) in one pass. Single core at 2^20: 1.60-1.68 "
    "(1.98 when the loss reduced a row of log_softmax)"
)


def _flushed(result: str, dtype: str) -> str:
    """The reason of a row op whose exact result just above ``dtype``'s smallest normal came
    out 0."""
    return (
        f"the worst input's exact result is {result}, just above {dtype}'s smallest normal "
        "number, and the kernel returns 0 (an intermediate below the smallest normal is flushed "
        "to zero): with the unit floored at the smallest normal (the bracketed number in "
        "Accuracy) the error is 2 ULP"
    )


_TERMS_CANCEL = (
    "the worst input's loss is a small difference of larger terms of the definition (log-variance "
    "against "
    "the scaled squared error; exp(x) against y x): an error of an ULP of the terms is tens to "
    "hundreds of "
    "ULPs of the result (the hand-written formula's error there is as large)"
)
_PAIRWISE = (
    "the Gram form (one matmul) gives the distances, as in the hand-written loss, but each call "
    "also checks every pair for cancellation in it (one more pass over the batch x batch "
    "distances) and takes explicit differences (row by row) when one "
    "cancels; batch-hard triplet recomputes its chosen distances from differences"
)
WHY: dict[tuple[str, str], str] = {
    ("function", "dice"): (
        "Keras runs multiply, three sums over the whole batch, times 2, two adds (one of 1e-7), "
        "divide, 1 - ratio: 9 TF kernels. At 2^14 a step is about 0.3 ms, what the compiled "
        "call's dispatch costs (the common reason above); since 9b48cf5 the loop "
        "also sums the overlap in float64 (1 - L for the gradient outside the target, which "
        "cancelled near a loss of 1): two cores at 2^20, alternating with Keras, 0.82-0.84 -> "
        "0.88-0.92 in a plain tf.function, 0.66-0.72 -> 0.77-0.82 under XLA"
    ),
    ("compiled", "binary_crossentropy"): (
        "log(1 - p) is one log of w = 1 - p plus its exact rounding error d (2 - w) since "
        "268a566 (the compensated log1p series, a division and a second log before: "
        "one core at 2^20, one process, alternating, 1.69 -> 1.23), with 1 - z carried with "
        "its rounding error and the NaN check for infinite inputs; Keras takes one log per "
        "side. Two-core runs 1.07-1.30 at 2^20. Since c3f32e0 the 1 - z pair is Fast2Sum's "
        "(exact for |z| <= 1: three operations where TwoSum took six and a NaN guard): one "
        "core, alternating with the commit before, 2^18 1.17 -> 1.12, 2^20 1.09 -> 1.05. "
        "Measured one piece at a time (one core, 2^18-2^20): the NaN check costs about 3%, "
        "the rounding correction d (2 - w) 5-8%"
    ),
    ("compiled", "binary_crossentropy_logits"): (
        "softplus(x) - x z split at x = 0 into two non-negative terms (double where, and the "
        "0 x inf guard for infinite logits) with the compensated log1p series of exp(-|x|), "
        "its quotient a reciprocal times the numerator so that XLA fuses it (a quotient with "
        "five users was a pass of its own: one core at 2^20, one process, 1.08-1.13 -> "
        "1.01-1.02), where TF's formula is max(x, 0) - x z + log1p(exp(-|x|)) (24 ULP). The "
        "two-core misses are inside the spread of runs of unchanged code (0.86 at 2^20 in "
        "the committed run)"
    ),
    ("function", "softmax"): (
        "Keras runs one fused TF kernel (Softmax, oneDNN's: one pass over the row) and ~4 for "
        "its gradient, and XLA's own code makes a pass over memory per row reduction and per "
        "output. On this machine a pass over 4 MiB costs about 0.4 ms (a row maximum alone "
        "0.43-0.45 ms at 2^20, one core: memory-bound); XLA's plain softmax forward takes "
        "1.18-1.23 ms against the kernel's 0.75-0.81, and the stable one 1.38-1.48 (four passes: "
        "the maximum, the corrected exponentials written once, their float64 sum, the output; "
        "the 3-ULP budget, see Trades). Tried: the exponentials formed again in the sum's and "
        "the output's loops instead of written (three reads and a write instead of four and "
        "two), 1.39 -> 1.72 ms (the TwoSum, exp and float64 work twice); rows in blocks that "
        "stay in L2 (a while loop over 128-2048 rows) made XLA's plain softmax slower, 1.19 -> "
        "1.43-1.72 ms (its output buffer is filled first: 0.43 ms). The backward call from the "
        "output is faster than Keras's gradient ops: forward and backward, one core, 2^20, "
        "1.05 (static batch) and 1.08 (unknown batch). Since ba8fb6b the benchmark "
        "gives an op a random cotangent: with all ones TF's constant folding removed Keras's "
        "products with them (1.70 against 2.14 ms; stableops 2.49 and 2.31): 1.46 -> 1.20 at "
        "2^20. Earlier (`written_once`, the corrected exponentials formed in one loop; the "
        "TwoSum's guard a NaN test): one core at 2^20, 1.74 -> 1.47"
    ),
    ("eager", "softmax"): (
        "Keras runs one fused TF kernel (Softmax) and ~4 for its gradient; an eager stableops "
        "call runs the forward and the backward pass as compiled calls of XLA's slower softmax "
        "code (see the plain tf.function's reason). Since 5a36db2 (`written_once`): "
        "one core, alternating with Keras, 1.12 -> 0.98 at 2^20, 1.23 -> 1.09 at 2^22"
    ),
    ("compiled", "binary_focal_crossentropy"): (
        "it builds on the stable binary cross-entropy (see above), and the product with the "
        "focal factor needs the cross-entropy's value and its slope at every element, where "
        "the plain loss needs only the slope elementwise. With log(1 - p) as one log plus its "
        "rounding error (since 268a566), one core at 2^20, one process, alternating: 1.78 "
        "-> 1.16; in the committed run 0.90 at 2^20, 1.08-1.15 at three other sizes. Since "
        "4d4f050 the gradient forms the cross-entropy again in the input's "
        "precision from the same logs, where its float64 value made XLA form the float64 "
        "cross-entropy a second time in the gradient's loop: one core at 2^20, alternating, "
        "0.90-0.91x the time before under XLA and in a plain tf.function (2^14 0.98). What is "
        "left is the float64 forward pass: the value alone 4.9 ms against Keras's 2.7"
    ),
    ("compiled", "categorical_crossentropy_logits"): (
        _CROSS_ENTROPY + ". Since 734d472 the target-weighted sum is a float64 sum, so nothing "
        "full-size but the exponentials is written beside the gradient (peak memory at 2^24 134 "
        "-> 72 MiB in a plain tf.function and 133 -> 68 under XLA), and since 2026-12-06 "
        "the gradient reads the row sums' exponentials instead of forming them again "
        "(XLA writes the gradient into their buffer: the same peak; one core, 2^20, 8 classes "
        "4.50 -> 2.34 under XLA and 1.56 -> 0.91 in a plain tf.function, 128 classes 1.46 -> "
        "1.19 and 0.80 -> 0.66). Before, forming them again (734d472), one core, "
        "alternating with Keras: 2^20 under XLA 1.27 -> 1.28-1.34, in a plain tf.function "
        "0.98 -> 1.00; 2^22 1.15 -> 1.08-1.17 and 0.64 -> 0.56-0.59 (eagerly 0.44 -> 0.37: "
        "fewer fresh allocations); two cores at 2^20, one process, 1.12 -> 1.23 and 0.87 -> 0.96. "
        "Since 83312fc the target-weighted sum is one float64 subtraction and product of "
        "float32-selected operands, not the float32 TwoSum and product in the summing loop "
        "(AMD EPYC, two cores, same session: 2^20 in a plain tf.function 1.06 -> 0.83; "
        "under XLA 1.30 -> 1.00, within the spread: 1.29 in a later run)"
    ),
    ("compiled", "sparse_categorical_crossentropy_logits"): (
        "the label's log-probability comes from its logit and the row's stable pieces (no row of "
        "log-probabilities), but those pieces are the stable row reduction's (see `logsumexp`): "
        "the TwoSum of x - max and three reductions per row where TF's kernel makes two. "
        "Single core at 2^20: 1.12 (1.78 when gathered from a log-probability row); 0.90-1.02 "
        "(against 1.19-1.24 in the same harness) since the row reduction writes one buffer of "
        "exponentials, not two (peak memory under XLA 2.48 -> 1.01x Keras's). Since 5a36db2 and "
        "afcd45a the terms below the maximum are written once for the sums and the "
        "gradient (`written_once`; see `logsumexp`): one core at 2^20, alternating the code, "
        "0.98-1.03 -> 0.80-0.82"
    ),
    ("compiled", "binary_crossentropy_one_output"): (
        "the kernel of `binary_crossentropy` (its compensated log(1 - p): see that case) on "
        "[rows, 1]. Under jit_compile=True both sides are inlined into the caller's "
        "computation with the caller's [rows, 1] shapes, whose loops XLA on CPU (TF 2.21) runs "
        "one element at a time (LLVM's <1 x float>), so the stable form's extra arithmetic "
        "is not hidden behind memory traffic as at width 64. A reshape to one axis inside "
        "the computation leaves XLA's loops as they are (a cross-entropy at 2^18, one core: "
        "0.477 against 0.479 ms); the plain tf.function's one-axis call is the kernel's own"
    ),
    ("compiled", "mean_squared_error_one_output"): (
        "both sides inlined into the caller's computation on [rows, 1], which XLA on CPU "
        "loops over one element at a time (see `binary_crossentropy_one_output`); the "
        "optimized programs of the kernel's value and gradient hold the same subtract, "
        "square and doubling as Keras's, so what is left is the two loops' spread"
    ),
    ("function", "binary_crossentropy_one_output"): (
        "Keras runs the same ~10 TF kernels; at 2^14 a step is the compiled call's launch "
        "(the common reason). Since 2026-12-07 the compiled call takes the columns as one "
        "axis (`kernel._columns`: XLA ran its loops over [rows, 1] one element at a time)"
    ),
    ("function", "mean_squared_error_one_output"): (
        "Keras runs subtract, square and mean, three TF kernels that stream memory; the "
        "compiled call's launch at 2^14 (the common reason). Since 2026-12-07 the compiled "
        "call takes the columns as one axis (`kernel._columns`): one core, alternating with "
        "Keras, 1.47 -> 1.33 at 2^18, 1.33 -> 1.23 at 2^20; two cores at 2^20 1.02 -> 0.96"
    ),
    ("compiled", "sparse_categorical_crossentropy_logits_10_classes"): (
        "the kernel of `sparse_categorical_crossentropy_logits` on rows of 10 classes: the "
        "per-row work (the maximum, two float64 sums, the label's TwoSum and log1p) is a tenth "
        "of the elements' where at 128 classes it is 1/128, and LLVM vectorizes a loop over "
        "rows of 10 eight lanes wide, the last two entries one at a time. Since 2026-12-07 no "
        "loop selects by a row's boolean broadcast along the row (XLA ran such loops one "
        "element at a time on rows narrower than 32) and the row's log1p series is formed "
        "once (`tests/test_xla_loops.py`): one core at 2^20, alternating with Keras, 1.78 -> "
        "1.32 (8 classes 2.46 -> 1.45). On two cores XLA splits each loop between the cores, "
        "which on these rows costs more than it gains: at 2^20 5.5 ms against 3.3 on one core "
        "(Keras's XLA program 4.1 against 2.5)"
    ),
    ("function", "sparse_categorical_crossentropy_logits_10_classes"): (
        "Keras runs one fused TF kernel, which two cores speed up (at 2^20 8.0 ms on one "
        "core, 5.1 on two), while the compiled call's loops, split between the cores, slow "
        "down (4.1 -> 6.1 ms; see XLA). On one core 0.63 -> 0.51 since 2026-12-07 (see XLA), "
        "on two 1.31 -> 1.16"
    ),
    ("eager", "sparse_categorical_crossentropy_logits_10_classes"): (
        "as in a plain tf.function: Keras's fused kernel gains from the second core, the "
        "compiled call's split loops lose (one core at 2^20, alternating, 0.69 -> 0.62 since "
        "2026-12-07)"
    ),
    ("compiled", "logsumexp"): _ROW_REDUCTIONS,
    ("compiled", "softmax"): (
        "the stable row reduction carries x - max as a TwoSum pair and corrects exp(z) by "
        "(1 + z_low), and sums and normalizes in float64 (the 3-ULP budget: see Trades). Since "
        "5a36db2 the corrected exponentials end in a division (`written_once`): XLA "
        "forms them in one loop and the sum, the value and the gradient read them, where each "
        "of those loops formed them again from x (optimized HLO: five readers of x beside the "
        "maximum's). One core, alternating with Keras: 1.58 -> 1.13 at 2^18, 1.63 -> 1.10 at "
        "2^20, 1.61 -> 1.11 at 2^22. The misses left are at 2^14 (the common reason) and in "
        "the two cores' spread"
    ),
    ("compiled", "log_softmax"): (
        _ROW_REDUCTIONS + ". The value is (x - m) - log1p(s) (z_low only in the sum), an empty "
        "row's -inf comes from a per-row log1p(s) = inf, and the backward pass under XLA is "
        "g - exp(y) sum(g) (the other regimes' formula) instead of a softmax from the forward "
        "pass's exponentials (two cores at 2^20, alternating, 2.50 -> 1.67). Since fa13d40 "
        "the value is its own expression of x, where it shared z = x - m with the sums "
        "and XLA wrote z out as a full-size buffer (optimized HLO), and sum(g) is a float64 sum "
        "in the select's loop (`float64_sum`, the masked upstream was written out for "
        "YNNPACK): one core, 2^20, alternating with Keras, 1.76 -> 1.37 under XLA, 0.97 -> "
        "0.91 in a plain tf.function, 1.16 -> 1.03 eagerly; peak memory under XLA 197 -> 131 "
        "MiB (Keras 129). What is left is the arithmetic: the tail and the count of ties, the "
        "TwoSum, the mask of -inf outputs in the backward pass"
    ),
    ("compiled", "cosine_similarity"): (
        "three float64 sums per row (a^2, b^2, a b, each formed and summed in one loop: "
        "`float64_sum`) and a float64 gradient where Keras sums plainer float32 expressions. "
        "Float32 rows are summed and normalized in float64 since 84b87bb (exact products, no "
        "check of the sums, no tf.cond: XLA allocated its scaled branch's normalized rows on "
        "every call, 166.5 -> 75 MiB peak at 2^24); one core, alternating with Keras, 0.36 -> "
        "0.42 at 2^20. The NaN test sits in the sum of a^2 alone: in the sum of a b, XLA split "
        "that heavier loop into two tasks on two cores (2^14: 0.93 -> 1.08-1.14)"
    ),
    ("function", "cosine_similarity"): (
        "at 2^14 (0.34 ms a call) the compiled call's dispatch: two cores, 40 alternating "
        "rounds, 1.00 and 1.01 against Keras (the code before 84b87bb: 1.02 and 1.03)"
    ),
    ("compiled", "log_cosh"): (
        "both sides of the switch at |x| = 1 run for every element (double where): a polynomial "
        "on one side (fitted to the Taylor series: 8 terms for 17 in float32; single core at "
        "2^20 0.95-1.04 -> 0.80-0.89), exp and a compensated log1p series on the other; Keras "
        "computes x + softplus(-2x) - log 2 once. Since 22f7b7e nothing full-size is "
        "written out beside the value and the gradient (tanh in the gradient only, log1p's "
        "quotient as a reciprocal): one core, alternating, 2.67 -> 0.96 at 2^22, 0.96-1.02 "
        "from 2^14 to 2^24; the misses left are at 2^14 (the two-task split, see the common "
        "reason) and within the spread. Since the row mean is a float64 sum (float64_mean, one "
        "loop, no buffer): one core, alternating with Keras, 2^14 1.04 -> 1.00, 2^20 0.93 -> "
        "0.74, 2^22 0.92 -> 0.74"
    ),
    ("eager", "elu"): (
        "Keras runs one fused TF kernel (Elu) and one for its gradient (EluGrad), which takes "
        "the slope from the output (y + 1: no exp, but it cancels where x << 0). Since "
        "9d7a300, from 2^18 entries, the forward call returns the value alone and the "
        "backward pass is a compiled call on the input (the slope was written beside the value "
        "and kept alive: peak memory 1.33 -> 1.00x Keras's eagerly at 2^24); one core, one "
        "process, alternating with Keras: 2^20 1.37 -> 1.18-1.23, 2^22 1.30 -> 0.86-0.88. What "
        "is left is the exp in the backward pass and the two compiled calls' dispatch"
    ),
    ("function", "elu"): (
        "Keras runs one fused TF kernel (Elu) and one for its gradient (EluGrad), which takes "
        "the slope from the output (y + 1: no exp, but it cancels where x << 0, 0 for x < -17 "
        "in float32); stableops's slope is exp(x), so its two passes hold an exp each, "
        "whether the forward call returns the slope (row-local, as now) or the backward "
        "recomputes it: one core, 2^20, one process, alternating with Keras, 1.36 and 1.35 "
        "(2^22: 1.39 and 1.25-1.36; eagerly recomputing is 2.4 -> 3.6 at 2^14, one more "
        "compiled call). Since a5d1e41 the value below -1 comes from the slope (the exp has "
        "one user: XLA wrote it out as a third full-size array) and in a graph the compiled "
        "call takes the input as one axis: 2^20, one core, 1.29 -> 1.03; 2^22, 1.51 -> 1.13 "
        "(two cores 1.76 -> 1.38, where the CPU-time ratio is near 1: the compiled call's "
        "loops split across the two threads, Keras's kernels on Eigen's pool). Each nested "
        "compiled call also costs more than the same XLA code "
        "compiled whole on two cores: exp(x) at 2^20, 0.84-0.89 ms called from a plain "
        "tf.function against 0.62-0.71 ms as a jit_compile function (one core: 0.82-0.84 "
        "against 0.80-0.81). With the benchmark's random cotangent (since ba8fb6b), "
        "one core, 2^20, unknown batch: 1.62 against 1.49 ms (1.09); with the all-ones one "
        "1.81 against 1.48 (a full-size array of ones written, then read by the product with "
        "the slope; with a static batch dimension 1.54-1.58). Tried: the backward pass a "
        "compiled call on the input in a graph too (the forward call writing the value alone): "
        "two cores, 2^20 1.18-1.21 -> 1.05-1.07, 2^22 1.15-1.25 -> 0.87-0.93, but the CNN's "
        "model.fit peak memory rose from 16-19 to 18-24 MiB (Keras 13-15): that call writes a "
        "buffer of its own while the upstream gradient is alive, where the row-local product "
        "is written into the upstream's buffer. Not kept"
    ),
    ("function", "nt_xent"): (
        "Keras runs l2_normalize, one matmul and the fused SparseSoftmaxCrossEntropyWithLogits "
        "kernel; stableops's row log-sum-exp is formed in float64 (its 1-ULP budget: 4.5 ULP "
        "in float32). Since 20257ca the loss is row-local in its logits (two kernels: "
        "the logits, one matmul, then the loss of each row), so its forward call also returns "
        "the gradient for the logits and the backward pass recomputes only the logits' "
        "gradient, where one kernel's backward call ran the whole loss again. One core, "
        "alternating with the hand-written loss: at [256, 256] (2^18 and up) 1.30-1.36 -> "
        "1.15; at [64, 256] (2^14) 1.36 -> 1.44, a third compiled call's dispatch (0.556 -> "
        "0.567 ms); under XLA 1.07-1.11 before and after"
    ),
    ("compiled", "elu"): (
        "expm1 is a software polynomial (7 terms in float32, fitted on [-1, 0]; 11 as a Taylor "
        "polynomial, 0.85-0.88 -> 0.79-0.83 single core at 2^20) evaluated for every element "
        "beside the exp that serves the other branch and the slope; XLA's expm1 is one call "
        "(but up to 4.4 ULP off). The misses left are at 2^14 (the two-task split of the "
        "common reason); from 2^20 it is 0.63-0.75 since a5d1e41 (one exp user)"
    ),
    ("compiled", "nt_xent"): (
        "the common reason above, within the two cores' spread: alternating with the "
        "hand-written loss in one process (two cores, 200 rounds) 0.99 at 2^18 and 1.00 at 2^20"
    ),
    ("compiled", "gaussian_nll"): (
        "the overflow guard of e^2 exp(-s): exp(-s/2) as one factor or two (an abs, two compares "
        "and three selects per element), where the hand-written formula multiplies by exp(-s); "
        "with one core (no thread-scheduling noise) 1.03-1.05 at 2^14 and 2^19"
    ),
    ("compiled", "poisson_nll"): (
        "exp(x) past the overflow threshold as a constant times a finite factor (a compare and two "
        "selects per element: 3-4% of the time at 2^22, two cores, against the same kernel "
        "without them; the gradient's fusion reads x again to select its form, one more "
        "full-size read than the hand-written gradient's, also with the selection encoded in "
        "the sign of the stored exp, which XLA moves back into the consumers); the per-sample "
        "sum kept apart from the batch mean "
        "(`_internal/reductions.per_sample_sum`; XLA merged them into one slower reduction of "
        "the whole tensor): 1.11-1.15 -> 1.04-1.08 at 2^22, 1.10 -> 1.04 at 2^24 (two cores, "
        "one process, alternating)"
    ),
    ("compiled", "gaussian_kl"): (
        "(exp(d) - 1 - d)/2 is a polynomial on [-1, 2] (9 terms in float32, fitted; the Taylor "
        "series took 13 on [-2, 2]), evaluated for every element beside exp (double where): the "
        "hand-written term cancels there (1.7e7 ULP). Measured single-core at 2^20 in one "
        "process: 1.46-1.52 with the Taylor series, 1.35-1.37 fitted, 1.22 with exp(d)/2 as "
        "exp(d - K) M (no overflow select; d - K exact); then, in seven alternating runs of the "
        "loss class against the keras.ops formula, 1.09 -> 1.04 with the slope from the same exp "
        "(see Trades; the slope from the value made XLA evaluate the polynomial in the "
        "gradient's fusion too); also tried: a separate expm1 series for "
        "the slope, XLA's expm1, an optimization barrier, exp itself from the series (range "
        "reduction, 2^k from the bits): all slower. The per-sample sum kept apart from the "
        "batch mean (`_internal/reductions.per_sample_sum`): 1.09-1.12 -> 1.02-1.08 at 2^20, "
        "1.07-1.08 -> 1.04-1.07 at 2^22 (two cores, one process, alternating). With 4x the "
        "rounds (`--rounds-scale 4`) the sizes from 2^18 are within the spread; 2^14 stays "
        "1.11-1.19 in three runs: XLA splits the polynomial's fusion (31 operations per "
        "element for 16 bytes) into two tasks there and no fusion of the hand-written loss "
        "(see the common reason): unsplit, pinned to one core, 1.01 (q25-q75 0.99-1.04, 40 "
        "alternating rounds, twice) against 1.14 and 1.16 on both cores. A fusion light enough "
        "to stay on one thread (no more operations than bytes) has no room for the polynomial "
        "the 4-ULP budget needs (2n + 15 operations for degree n; degree 7 at 2 eps), so this "
        "miss is not met without giving up the budget. "
        "Tried and not kept: the slope's own exp (of d, 0 near 0) so that the value's exp "
        "has one user: one full-size fusion fewer in the HLO, no change measured (alternating "
        "runs of 30 rounds: 2^14 1.17 and 1.11 against 1.11 and 1.19)"
    ),
    ("compiled", "mean_squared_logarithmic_error"): (
        "the log error is formed in float64 for the 4-ULP budget (see Trades) and written out "
        "once for the sum and the gradient (8 bytes an element), with a float64 division per "
        "element, where Keras's loops take two float32 logs; 2^14: the common reason above"
    ),
    ("compiled", "kl_divergence"): (
        "the row sum is accurate since fe6666e (6.7e2 -> 2 ULP here, 3.4 in the "
        "tests, for two nearly equal distributions): each term is p phi(t/p) + (t - p), p phi "
        "from a series in s = (t - p)/(t + p) (a reciprocal, 5 fitted terms) where t/p is in "
        "[1/2, 2], beside log(t/p) for the other terms, and the row is summed in float64 "
        "through folded_row_sum (one loop, no buffer); Keras takes one division and one log "
        "and sums in float32. One core, one process, alternating, against the float32 row sum "
        "before: 0.96-1.04x at 2^14-2^24 (1.27-1.33x with a plain float64 reduce_sum, which "
        "writes the terms out; 1.69x with s as a quotient, which XLA writes out as a pass of "
        "its own). Since 2d8a83f the ratio t/p is t times the reciprocal of p: as a "
        "quotient read by the log and by its rounding's correction, XLA wrote it out as a "
        "full-size array (one core at 2^20, alternating with Keras, 1.36-1.42 -> 1.23). "
        "Since cf94a33 each term is one float64 expression whose float32 operands "
        "float32 selects choose: with a float64 select between two float64 forms LLVM "
        "vectorized the summing loop 4 lanes wide on AVX2, 8 now (AMD EPYC, one core, 2^20: "
        "4.30 -> 2.92 ms, Keras 2.23)"
    ),
    **{
        (target, "categorical_focal_crossentropy"): (
            "log q and 1 - q of the normalized row come from p directly, with a written-out "
            "gradient, and since 795af16 they and the loss are formed in float64 for "
            "the 4-ULP ceiling (15.2 and 11.6 ULP in float32; see Trades): one core at 2^20, "
            "against Keras, from probabilities 0.97 -> 1.08 under XLA and 0.42 -> 0.48 in a "
            "plain tf.function. Since 2d8a83f the gradient's row sum is a float64 "
            "sum (one loop; the float32 sum's terms were written out for YNNPACK): one core "
            "under XLA, 2^14 1.22 -> 1.09. Since c3f32e0 log q is the float32 log of a float32 "
            "number near q formed from float32 products (the row's reciprocal rounded to "
            "float32), where that loop held the float64 quotient and its rounding to float32: "
            "the log's loop 255 -> 145 us at [2048, 128] (per-thunk profile), one core under "
            "XLA, alternating with the commit before, 2^18 1.43 -> 1.35, 2^20 1.05 -> 1.00. "
            "Since the gradient's upstream of 1 - q (the focal factor's chain) ends in "
            "written_once's division, it is formed in one loop, where the gradient's row sum "
            "and the gradient formed it again (peak memory unchanged): one core under XLA, "
            "alternating with the commit before, 2^16 1.25-1.28 -> 1.16-1.22, 2^18 1.33-1.36 "
            "-> 1.23-1.32, 2^20 0.95-1.00 -> 0.88-0.96; on two cores within their spread "
            "(2^14 1.35-1.45, 2^18 1.21-1.27 in three runs). What is left at 2^14-2^18 is the "
            "float64 arithmetic of log q and 1 - q, formed in two loops: the loss's row sum "
            "and that chain's"
        )
        for target in ("compiled", "function", "memory")
    },
    **{
        (target, "mean_absolute_percentage_error"): (
            "the mean is over the nonzero targets, so their count per row is a second "
            "reduction over y_true (a pass Keras does not make). Since a2686ba the "
            "quotient has one user (XLA wrote it out as a pass of its own): one core at 2^20, "
            "one process, 1.75 -> 1.2; the count in one stacked (1.95) or complex (1.36) "
            "reduction with the sum, or from a plain reduce_sum (1.38): slower; so is counting "
            "only where some target is 0 (a tf.cond on reduce_any, the row length otherwise): "
            "1.27 -> 1.77 at 2^20 and 1.20 -> 1.66 at 2^22 (one core, alternating with Keras)"
        )
        for target in ("compiled", "function", "memory")
    },
    ("compiled", "poisson"): (
        "the terms are formed unscaled and the overflow scale taken only where a row's sum is "
        "not finite (a tf.cond on the inputs themselves) since 069c2ea: the scale's "
        "test was a pass over both inputs before the terms. One core at 2^20, one process, "
        "against Keras: 1.26 -> 1.00; the committed run's misses are inside the two cores' "
        "spread (q25 1.00). Since the terms are summed in float64 (float64_sum, one loop): "
        "one core, alternating with Keras, 2^20 1.15 -> 1.07, 2^22 1.09 -> 0.95"
    ),
    ("ulp", "poisson"): (
        "the worst input's loss is a small difference of larger terms (p against t log p: "
        "4.66 - 4.62 = 0.043, 24 ULP of the result, in the AVX-512 AMD run at 1c16e2c; "
        "1.37 - 1.56 = -0.19, 11 ULP, in the runs before it): a fraction of an ULP of the "
        "terms is tens of ULPs of the result (the documented budget: 4 ULP of "
        "max(|p|, |t log p|))"
    ),
    **{
        (target, "tversky"): (
            "the misses, false alarms and true positives are three sums of computed terms, as "
            "Keras's (each weight applied after its sum: before it, terms near the smallest "
            "normal were flushed to 0). Since 907478c they are float64 sums over the "
            "whole batch that XLA forms in one loop per row, the rows' sums added apart "
            "(`float64_sum`), where float32 sums wrote each term out as a full-size buffer for "
            "YNNPACK: one core at 2^20, alternating with Keras, 0.95 -> 0.21 under XLA and "
            "1.43 -> 0.41 in a plain tf.function (Dice's two sums of its inputs stay float32: "
            "YNNPACK reads an input in place, 0.52 -> 0.76 in float64)"
        )
        for target in ("compiled", "function")
    },
    **{
        (target, "leaky_relu"): (
            "the same computation on both sides: stableops's leaky_relu is TF's LeakyRelu "
            "(LeakyReluGrad for the gradient), as Keras's is. The plain tf.function graphs "
            "have the same ops, and the optimized XLA HLO is identical (21 instructions, "
            "compared after renaming); every miss is the spread between two timings of one "
            "computation"
        )
        for target in ("compiled", "function", "eager")
    },
    **{
        (target, "mean_absolute_error"): (
            "the kernel is Keras's formula (subtract, abs, mean) as one XLA computation; the run "
            "before, of the same code, met the target at every size: the two cores' spread"
        )
        for target in ("compiled", "function")
    },
    ("compiled", "categorical_hinge"): (
        "the kernel is Keras's formula (the sum of t p, the max of (1 - t) p, the hinge) as "
        "one XLA computation; its gradient counts tied maxima and detects NaN in one "
        "reduction (two before: one core at 2^20, one process, 1.02 -> 0.87). Since "
        "283acd9 the sum of t p and that count are float64 sums that XLA forms in one "
        "loop (`float64_sum`; in float32 both were written out for YNNPACK): one core, "
        "alternating with Keras, 1.12 -> 0.74 at 2^22 and 0.92 -> 0.75 at 2^20"
    ),
    ("end_to_end", "mlp"): (
        "two cores' thread scheduling, not the kernels: on one core (taskset) the MLP's "
        "jit_compile=False step is 713 us against Keras's 712 us (1.00; each of stableops's "
        "loss, ELU and LeakyReLU alone 0.99-1.01), and Keras's own step is 1.6-2x slower on "
        "two cores than on one (the CPU-time ratio on two cores, 1.25, counts threads "
        "waiting around the compiled calls). jit_compile=True, fits alternating with Keras's "
        "in one process (15 rounds): 0.94 on two cores, 0.99 on one"
    ),
    ("end_to_end", "gru"): (
        "on one core (taskset) the GRU's step is 1.01x Keras's with jit_compile=False and 1.00x "
        "with jit_compile=True (median of same-round ratios, this harness): the two-core miss "
        "is thread scheduling (its q25 with jit_compile=False is 1.02)"
    ),
    ("end_to_end", "cnn"): (
        "ELU was most of the gap: at the CNN's activations ([128, 26, 26, 16], 16 channels "
        "innermost) XLA on CPU ran its loops 2.5-3x slower than over one long axis, and it "
        "wrote the exponential out as a third array; since a5d1e41 (one axis in a graph, the "
        "exponential with one user) ELU's forward and backward there went 2.05 -> 1.22x "
        "Keras's (one core). The CNN's train_on_batch step with the default compile, "
        "alternating with Keras in one process (15 rounds of 20 steps): 1.13 -> 1.05 on one "
        "core, 1.20 -> 1.12 on two. model.fit on one core times whole scheduler ticks (15.6 "
        "ms steps) and cannot separate them; two-core runs of unchanged code have spread "
        "from 0.99 to 1.54. The mixed_float16 CNN under XLA (1.26 in the run at 7cd8a6d, "
        "0.93 in the run at a5d1e41): in back-to-back processes of this harness (9 rounds) "
        "stableops's step took 29.0 ms with a5d1e41's code and 27.9-28.5 ms with 7cd8a6d's, "
        "Keras's 31.6 and 21.6-23.2 ms (ratios 1.00 against 1.23-1.29): Keras's own step moves, "
        "not stableops's. With the default compile that model's steps took 512-544 ms on both "
        "sides in the run at 7cd8a6d (31-64 ms at a5d1e41)"
    ),
    ("compile_overhead", "cnn"): (
        "not compilation: in the run at 7cd8a6d the mixed_float16 CNN's steps with the "
        "default compile took 512 or 1024 ms on both sides (a stall of whole half-seconds, "
        "where the run at a5d1e41 took 31-64 ms), and stableops's first fit took 41.8 s "
        "against Keras's 22.3 s (each 40 such steps); rerun alone, 20.8 against 21.1 s. "
        "The float32 CNN's overhead was 0.54 s "
        "more than Keras's with the default compile and 1.64 s with jit_compile=True; under "
        "mixed_float16 with jit_compile=True, -0.31 s"
    ),
    ("memory", "cnn"): (
        "ELU's slope, not the loss: ELU keeps exp(x) (5.3 MiB at [128, 26, 26, 16]) between the "
        "passes (see elu under Memory), where Keras's EluGrad takes the slope from the output, "
        "which the next convolution keeps anyway. With TF's allocator statistics (oneDNN on, "
        "median of five warm fits alternating): Keras's model 14.4 MiB, with stableops's ELU "
        "19.7 MiB, with stableops's LeakyReLU 12.8 MiB: one slope buffer more. The peak RSS "
        "this machine's run measures (oneDNN off) adds the allocator's churn: 96-121 against "
        "65-76 MiB, and 1.36, 0.91, 1.31, 1.33x in runs of unchanged code. The slope from the "
        "output (y + 1) cancels where x << 0 (0 below about -17 in float32)"
    ),
    **{
        ("memory", model): (
            "within the measurement's spread (peak RSS of a fit, a few MiB): runs of unchanged "
            "code measured the MLP 1.11, 0.93, 1.15 and 1.07 in a plain tf.function and the GRU "
            "1.11, 1.04 and 1.12 (under XLA 2.42, 1.00, 0.99); the GRU calls no stableops "
            "layer with a full-size buffer of its own (LeakyReLU is TF's kernel) and its loss "
            "keeps one value per example"
        )
        for model in ("mlp", "gru")
    },
    **{
        ("memory", case): (
            "parity within the allocator's granularity: the kernel keeps one per-example vector "
            "(512 KiB at 2^24) beside the full-size gradient that both keep, and the peak TF's "
            "allocator reports moves by 32 MiB with unchanged code (each of the two losses has "
            "measured 1.00 and 1.20 in the plain tf.function, alone and within the full run)"
        )
        for case in ("gaussian_nll", "gaussian_kl")
    },
    **{
        ("memory", case): (
            "since 5db9d5c the row reduction writes no buffer for its sums (the "
            "ties' indicator x == max and the terms were written out for YNNPACK; now float64 "
            "sums formed in one XLA loop, `float64_sum`): 2^24, peak over the inputs, "
            "logsumexp 130 -> 68 MiB (Keras 66 under XLA, 129 in a plain tf.function), "
            "sparse cross-entropy from logits 131 -> 68 (Keras 66), categorical from logits "
            "195-320 -> 134 (Keras 65-128: its fused kernel's backprop times the upstream "
            "gradient, in place or not, moves between runs). What is left is the row-local "
            "backward pass: the forward call returns the gradient for a unit upstream, and "
            "its product with the upstream gradient is a buffer of its own. log_softmax's "
            "extra buffer under XLA was z = x - max, shared by the sums and the value: 197 -> "
            "131 MiB (Keras 129) since fa13d40, the value its own expression of x. Its plain "
            "tf.function peak, 193.0 against 192.5 MiB, is its backward pass's float64 row "
            "sums (1 MiB at 2^24, the float32 ones 0.5 MiB): kept for that pass's time (one "
            "fused loop where the masked upstream gradient was written out for YNNPACK)"
        )
        for case in ("logsumexp", "log_softmax", "sparse_categorical_crossentropy_logits")
    },
    ("memory", "categorical_crossentropy_logits"): (
        "since 734d472 nothing full-size is written beside the gradient (its "
        "exponentials formed again, the target-weighted sum in float64): 2^24, peak over the "
        "inputs, 134 -> 72 MiB in a plain tf.function (Keras 65-128: its fused kernel's backprop "
        "times the upstream gradient, in place or not, moves between runs) and 133 -> 68 under "
        "XLA (Keras 129). What is left is the row-local backward pass: the forward call returns "
        "the gradient for a unit upstream, and its product with the upstream gradient is a "
        "buffer of its own"
    ),
    ("memory", "sparse_categorical_crossentropy_logits_10_classes"): (
        "on rows of 10 classes the rows' values are a tenth of the input's elements: XLA's "
        "temporaries for the two float64 row sums and the float32 per-row values take 53 MiB "
        "at 2^24 (4 MiB at 128 classes; 66 MiB before 2026-12-07, the log1p series and the "
        "selects by a row's boolean repeated per element), beside the gradient the forward "
        "call returns and its product with the upstream gradient"
    ),
    ("memory", "nt_xent"): (
        "at this size (inputs of 257 KiB) the allocator's peak moves in steps of 1 MiB: 2 "
        "against 1 MiB in the full run, 1 against 1 MiB (1.26x in bytes) in a memory-only "
        "run, the same before and after 5db9d5c"
    ),
    ("memory", "binary_focal_crossentropy"): (
        "the focal terms are formed in float64 for the 3-ULP budget (see Trades): under XLA their "
        "float64 intermediates (8 bytes an element) are alive beside the gradient"
    ),
    ("memory", "mean_squared_logarithmic_error"): (
        "the log errors are formed in float64 for the 4-ULP budget (see Trades): XLA writes "
        "them out once (8 bytes an element) for the sum and the gradient. Before 65eaaa9 "
        "it wrote four float32 intermediates and the float64 squares: 2^24, 2.00 -> "
        "1.67 under XLA, 1.42 -> 0.92 in a plain tf.function"
    ),
    ("memory", "softmax"): (
        "the backward pass is a compiled call, and XLA writes its result into a buffer of its "
        "own, where Keras's gradient ops (TF element-wise kernels) write into the upstream "
        "gradient's buffer when it has no other use: one full-size buffer more (2^24, plain "
        "tf.function: 195 against 129 MiB, value and gradient included)"
    ),
    ("memory", "elu"): (
        "the slope exp(x) is a full-size buffer alive between the passes (the forward call "
        "returns it) where Keras's EluGrad takes it from the output and writes into the upstream "
        "gradient's buffer: 201 against 134 MiB at 2^24 in a plain tf.function. Recomputing the "
        "slope in a compiled backward call measured the same 201 MiB: XLA writes the gradient "
        "into a buffer of its own"
    ),
    ("compiled", "huber"): (
        "since b0fcf73 the row mean is a float64 sum that XLA forms in one loop "
        "(`float64_mean`, no buffer): one core, alternating with Keras, 0.98 -> 0.78 at 2^22 "
        "(a run before: 0.94 there, and 1.02 with TF_CPU_ALLOCATOR_USE_BFC=true). The miss "
        "left is at 2^14, the common reason (the two-task split): pinned to one core, 0.98"
    ),
    ("compiled", "hinge"): (
        "since b0fcf73 the row mean is a float64 sum that XLA forms in one loop "
        "(`float64_mean`, no buffer): one core, alternating with Keras, 1.01 -> 0.75 at 2^22. "
        "The miss left is at 2^14, inside the spread; pinned to one core, 0.95 there"
    ),
    **{
        (target, case): _flushed(result, dtype)
        for target, result, dtype in (
            ("ulp", "2.4e-38", "float32"), ("ulp64", "4.5e-308", "float64"),
        )
        for case in (
            "categorical_crossentropy_logits", "sparse_categorical_crossentropy_logits",
            "logsumexp", "log_softmax",
        )
    },  # fmt: skip
    ("ulp", "gaussian_nll"): _TERMS_CANCEL,
    ("ulp", "poisson_nll"): _TERMS_CANCEL,
    ("ulp", "triplet_loss"): (
        "margin + d(a, p) - d(a, n) for near-duplicate embeddings of size 1e3: each distance is "
        "exact to an "
        "ULP of the embeddings' scale, hundreds of ULPs of a loss near the margin"
    ),
    ("ulp", "contrastive_loss"): (
        "a mean of squared distances and squared hinges, each distance rounded once: a few ULP "
        "more than the "
        "4-ULP target on near-duplicate batches"
    ),
    ("ulp", "nt_xent"): (
        "the cosine similarities are rounded before they are divided by the temperature: an ULP "
        "of 1/t each, on inputs whose similarities are not exact (the loss's documented budget "
        "is 1 ULP for exact logits, 0.5 measured: its log-sum-exp is formed in float64)"
    ),
    ("ulp", "ctc"): (
        "the worst input's loss, 2.5e-13, is -log(p + q) for one frame's two likely classes, "
        "p + q = 1 - 2.5e-13: it cancels inside the float64 log-probabilities (1.6e-17 absolute: "
        "180 ULP of the float32 result; Keras's float32 gives 0). Since the forward-backward "
        "pass of its own (float64, log 0 = -inf, each log-sum-exp as max + log1p), the grid is "
        "within 0.5 ULP and losses above Keras's log-0 floor (~707) are the definition's, where "
        "Keras's stop at ~707 (1.7e7 ULP at logits of 9.2e18)"
    ),
    **{
        (target, case): _PAIRWISE
        for target in ("compiled", "function", "eager", "memory")
        for case in ("triplet_loss", "contrastive_loss")
        if target not in ("function", "memory")
    },
    ("memory", "triplet_loss"): (
        "the partners' compiled call holds the scaled embeddings, the Gram form, its masks and "
        "the masked indices of a [256, 256] batch at once (1.25 MiB of XLA temporaries for "
        "256 KiB of embeddings; XLA's memory-usage report), where Keras's graph frees each "
        "tensor after its last use; 1.50 -> 1.75x since adace89, where the mining ran inside "
        "the one kernel's forward and backward calls (1.58 -> 1.84 MB)"
    ),
    ("memory", "contrastive_loss"): (
        "the compiled calls hold the scaled embeddings, the Gram form, the distances and the "
        "pair terms of a [256, 256] batch at once (XLA temporaries), where Keras's graph frees "
        "each tensor after its last use; this size's peaks move in steps of the allocator's: "
        "the same code measured 1.38 and 1.84 MB in two runs (d849c3a and the commit before "
        "it, each memory-only, 1.84 MB)"
    ),
    ("function", "triplet_loss"): (
        "at batch 64 (2^14) a step is about 0.3 ms: batch-hard triplet makes three compiled "
        "calls (the partners, chosen with the Gram form and its cancellation check; each "
        "anchor's loss from its two partners' differences; that loss's backward pass), "
        "where the hand-written loss runs about 30 TF kernels, and on two cores XLA hands "
        "each call's independent loops to the other thread (one core: 1.03). Since adace89 "
        "the partners have a call of their own, so the backward pass no longer mines again, "
        "and safe_norm sums float64 squares without scaling; since d849c3a the norms are the "
        "Gram matrix's diagonal and the NaN test is in the scale's maximum. One core, "
        "alternating with the hand-written loss, [64, 256] 1.23 -> 1.03, [256, 256] 1.03 -> "
        "0.69; two cores at 2^14 1.90 -> 1.19 (AMD EPYC)"
    ),
    ("function", "contrastive_loss"): (
        "at batch 64 (2^14) a step is about 0.3 ms: two compiled calls (the forward pass; "
        "the backward pass, which forms the Gram form and its cancellation check again) "
        "where the hand-written loss runs about 20 TF kernels, and on two cores XLA hands "
        "each call's independent loops to the other thread. Since d849c3a the norms are "
        "the Gram matrix's diagonal and the NaN test is in the scale's maximum (two passes "
        "over the batch fewer in each call): one core, alternating with the hand-written "
        "loss, [64, 256] 1.07 -> 1.00, [256, 256] 1.10 -> 1.05; two cores at 2^14 1.53 -> "
        "1.19 (AMD EPYC)"
    ),
    # float64: every case is computed in float64, with nothing wider to hide a rounding in.
    ("ulp64", "ctc"): (
        "the grid's losses of a few of float64's smallest normals (8.3e-308 the worst shown, "
        "2.3e-307) come from three exponentials per frame each below the smallest normal: "
        "flushed to zero, the loss is 0 (at most 10.2 ULP with the unit floored at the "
        "smallest normal). The random sample's worst is float32's "
        "(see the float32 ULP target): a loss of 2.5e-13 that cancels inside the "
        "log-probabilities, 4.9e-18 absolute (0.04 ULP of 1)"
    ),
    ("ulp64", "cosine_similarity"): (
        "within the documented budget near orthogonality, 1 ULP of 1: the grid's worst is 1.8e-17 "
        "for an exact 0 (0.16 ULP of 1), the random sample's 3.1e-17 absolute (0.28 ULP of 1) "
        "for a similarity of 4.9e-4. float32 rows sum exact products in float64; float64 rows "
        "have nothing wider"
    ),
    ("ulp64", "poisson"): (
        "the worst input's loss is a small difference of larger terms (p against t log p; the "
        "AVX2 run: 4.66 - 4.62 = 0.043, 28 ULP of the result, 0.2 ULP of the terms; the "
        "AVX-512 AMD run: 10 - 11.51 = -1.51, 4.9 ULP, 0.6 of the terms): within the documented "
        "budget, 4 ULP of max(|p|, |t log p|)"
    ),
    ("ulp64", "poisson_nll"): (
        "the worst input's loss is a small difference of larger terms (exp(x) against y x: 4.530 "
        "- 4.532 = -0.0022): 407 ULP of the result is 0.2 ULP of the terms (the hand-written "
        "formula's error there is as large)"
    ),
    ("ulp64", "triplet_loss"): (
        "as in float32: margin + d(a, p) - d(a, n) for near-duplicate embeddings of size 1e3, "
        "each distance exact to an ULP of the embeddings' scale, hundreds of ULPs of a loss "
        "near the margin"
    ),
    ("ulp64", "contrastive_loss"): (
        "as in float32: a mean of squared distances and squared hinges, each distance rounded "
        "once: a few ULP more than 4 on near-duplicate batches"
    ),
    ("ulp64", "nt_xent"): (
        "as in float32: the cosine similarities are rounded before they are divided by the "
        "temperature, an ULP of 1/t each, on inputs whose similarities are not exact; here "
        "the log-sum-exp has nothing wider than float64 either"
    ),
}

GENERIC_WHY = {
    "function": (
        "in a plain tf.function each stableops kernel call is one nested XLA computation (its "
        "backward pass "
        "one more, or a multiplication for the row-local losses) against Keras's graph of "
        "separate TF "
        "kernels: at 2^14 and below that launch is what a call costs (a row-local kernel that only "
        "sums a product: 253 against TF's own ops' 205 us per forward and backward at 2^10, one "
        "core); where Keras runs one fused TF kernel "
        "(softmax, the cross-entropies from logits) or the stable formula has much more "
        "arithmetic (see the "
        "XLA reasons), one XLA fusion does not make up for it, and XLA on CPU may run a fusion on "
        "fewer "
        "threads than Eigen's kernels use. A nested compiled call also costs more than the same "
        "XLA code compiled whole: exp(x) 2 at 2^20, two cores, 0.84-0.89 ms called from a plain "
        "tf.function against 0.62-0.71 ms as a jit_compile function"
    ),
    "eager": (
        "an eager stableops call runs its forward pass and its gradient as compiled XLA functions "
        "(one "
        "tf.function dispatch each, tens of microseconds); where Keras runs one fused TF kernel, "
        "or the stable "
        "formula has much more arithmetic (see the XLA reasons), the fused XLA loop does not make "
        "up for it"
    ),
    "compiled": (
        "both sides are compiled by XLA into fused loops (a nested stableops kernel call is "
        "inlined into the "
        "outer computation), so the gap is the extra arithmetic of the stable formula that "
        "Keras's kernel skips. At 2^14 (a step of about 0.4 ms) most misses are where XLA runs "
        "the work: its CPU cost model splits a fusion with more operations per element than "
        "bytes into two tasks (outer_dimension_partitions 2 in the optimized HLO) and keeps "
        "a lighter one on one thread up to 256 KiB (the hand-written gaussian_kl's fusions are "
        "split from 2^16), and on these two cores handing half a fusion to the other thread "
        "costs about 50 us. Pinned to one core (taskset, no split), 20-40 alternating rounds "
        "at 2^14: gaussian_kl 1.14-1.16 -> 1.01, log_cosh 1.10 -> 0.97, "
        "mean_squared_logarithmic_error 1.12 -> 1.02, categorical_focal_crossentropy 1.14 -> "
        "1.04, binary_crossentropy_logits 1.10 -> 0.98. From 2^22 up, the default CPU "
        "allocator (malloc) returns freed temporaries of 16 MiB to the system after a call, and "
        "a kernel with more of them than Keras's faults in fresh pages on every call: with "
        "TF_CPU_ALLOCATOR_USE_BFC=true (TensorFlow's pooling allocator; one core, 2^22) "
        "categorical_crossentropy_logits 3.10 -> 1.44, cosine_similarity 1.92 -> 0.69, "
        "logsumexp 2.27 -> 1.67, log_softmax and binary_crossentropy unchanged (1.86, 1.21)"
    ),
    "end_to_end": (
        "the step time adds up the kernels the model calls: see the function (jit_compile=False) "
        "and XLA "
        "(jit_compile=True) ratios of its activations and loss"
    ),
    "memory": (
        "the stable formula keeps more intermediates alive at its peak than Keras's (see Memory); "
        "XLA on CPU (TF 2.21) hands each row reduction of a computed expression to YNNPACK, "
        "which reads it from a buffer of the input's size (seen in the optimized HLO: "
        "Keras's cosine_similarity materializes a*a and b*b), so every extra float32 reduction "
        "of the stable formula is one more full-size buffer (a float64 sum through "
        "`float64_sum` writes none), and XLA allocates a tf.cond's branch buffers on every call, "
        "taken or not"
    ),
    "compile_overhead": (
        "every stableops kernel is one more XLA computation to compile on the first fit (forward "
        "and backward), "
        "where Keras's plain tf.function compiles nothing"
    ),
    "finite": "see the worst input in accuracy.json",
    "gradients": "see tests/test_gradient_accuracy.py's message for the element",
    "ulp": "see the worst input in accuracy.json",
    "ulp64": "see the worst input in accuracy.json",
}


def load_sections(out: Path) -> dict:
    sections = {}
    for name in (*SECTION_FILES, "run"):
        path = out / f"{name}.json"
        if path.exists():
            sections[name] = json.loads(path.read_text())
    return sections


def _num(value) -> float:
    if isinstance(value, str):
        return float(value)  # "inf", "-inf", "nan"
    return float("nan") if value is None else float(value)


def _pow2(size: int) -> str:
    return f"2^{int(round(math.log2(size)))}"


def _fmt_ratio(value: float, limit: float | None = None) -> str:
    """A ratio; held to ``limit``, a miss never prints as the limit itself (``_fmt_vs_limit``)."""
    if not math.isfinite(value):
        return "-"
    return f"{value:.2f}" if limit is None else _fmt_vs_limit(value, limit)


def _fmt_vs_limit(value: float, limit: float) -> str:
    """``value`` with 2 decimals, or 3 where 2 would print a miss as its limit ("1.00 > 1.00")."""
    text = f"{value:.2f}"
    if value > limit and text == f"{limit:.2f}":
        text = f"{value:.3f}"
    return text


def _fmt_ulp(value) -> str:
    value = _num(value)
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    return f"{value:.2g}" if value < 1000 else f"{value:.1e}"


def _fmt_bytes(value: float) -> str:
    return f"{value / 2**20:.0f} MiB" if value >= 2**20 else f"{value / 2**10:.0f} KiB"


def _fmt_seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def _fmt_losses(keras_loss, stableops_loss) -> str:
    if keras_loss is None or stableops_loss is None:
        return "-"
    return f"{keras_loss:.4f} / {stableops_loss:.4f}"


def _find(rows, **where):
    """The first row whose fields equal ``where``, or None."""
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items())), None)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _why(target: str, case: str) -> str:
    """The reason for one case's miss (a target's common reason is printed once, above)."""
    if (target, case) in WHY:
        return WHY[(target, case)]
    if target in ("eager", "function") and case in CASES_BY_NAME:
        return f"Keras runs {CASES_BY_NAME[case].keras_note}"
    return "the common reason above"


# ----------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------


def _cpu(row) -> str:
    return f"; CPU time {row['cpu_ratio']['median']:.2f}" if "cpu_ratio" in row else ""


def _ratio_rows(sections, baseline="keras"):
    speed = sections.get("speed", {}).get("data", {})
    return [
        r for r in speed.get("ratios", []) if r["baseline"] == baseline and r["impl"] == "stableops"
    ]


def speed_limit(
    mode: str, size: int, dtype: str = "float32", case: str | None = None
) -> float | None:
    """The largest ratio a speed row is held to, or None where no target applies.

    A row of ``case`` below the target's smallest size is held to it when the case's inputs
    there are those of the smallest size: the metric-learning and CTC inputs stop growing at a
    capped batch, so their largest size measured is the eager target's workload (``run_speed``
    does not measure the same inputs again).
    """
    if mode not in SPEED_TARGETS or dtype != "float32":
        return None
    _, limit, min_size = SPEED_TARGETS[mode]
    if min_size <= size <= TARGET_MAX_SIZE:
        return limit
    if case is not None and size < min_size and _same_workload(case, size, min_size):
        return limit
    return None


@functools.lru_cache(maxsize=None)
def _input_shapes(case: str, size: int) -> tuple:
    arrays = CASES_BY_NAME[case].make_inputs(size, np.dtype("float32"), np.random.default_rng(0))
    return tuple(a.shape for a in arrays)


def _same_workload(case: str, size: int, other: int) -> bool:
    """Whether ``case``'s speed inputs at ``size`` have the shapes of those at ``other``."""
    return case in CASES_BY_NAME and _input_shapes(case, size) == _input_shapes(case, other)


def _ratio_miss(case: str, where: str, row: dict, limit: float, why: str) -> dict | None:
    """A miss of ``row['ratio']`` against ``limit`` (None if met); noise if its q25 meets it."""
    ratio = row["ratio"]
    if ratio["median"] <= limit:
        return None
    median = _fmt_vs_limit(ratio["median"], limit)
    detail = f"{where}{median} > {limit:.2f} (q25 {ratio['q25']:.2f}{_cpu(row)})"
    return {"case": case, "detail": detail, "within_noise": ratio["q25"] <= limit, "why": why}


def _e2e_name(row) -> str:
    policy = row.get("policy", "float32")
    return row["model"] + ("" if policy == "float32" else f" {policy}")


def _e2e_compile(row) -> str:
    return E2E_COMPILE_NAMES.get(row["compile"], row["compile"])


def evaluate_targets(sections: dict) -> list[dict]:
    """Each target: status "met", "missed" or "not measured", with the misses and why."""
    targets = []
    ratios = [r for r in _ratio_rows(sections) if r["dtype"] == "float32"]
    availability = _availability(sections)

    # Speed per mode: every case at every size in the target range (see speed_limit).
    texts = {
        "function": "plain tf.function (model.fit's default on CPU)",
        "xla": "tf.function(jit_compile=True)",
        "eager": f"eager at >= {_pow2(EAGER_MIN_SIZE)} (a case whose inputs stop growing below "
        "it: at its largest size)",
    }
    for mode, (target_id, limit, min_size) in SPEED_TARGETS.items():
        rows = [
            r
            for r in ratios
            if r["mode"] == mode and speed_limit(mode, r["size"], case=r["case"]) is not None
        ]
        misses = [
            _ratio_miss(r["case"], f"{_pow2(r['size'])}: ", r, limit, _why(target_id, r["case"]))
            for r in rows
        ]
        sizes = f"{_pow2(min_size)}-{_pow2(TARGET_MAX_SIZE)}"
        text = f"{texts[mode]}, forward+backward, stableops/Keras <= {limit:.2f} ({sizes})"
        unmeasured = _unmeasured(availability, rows, f"no float32 {mode} row at {sizes}")
        targets.append(_target(target_id, text, rows, [m for m in misses if m], unmeasured))

    # End to end: step time of every model, policy and compile mode that a target covers.
    e2e = [
        r
        for r in sections.get("end_to_end", {}).get("data", {}).get("rows", [])
        if r["compile"] in E2E_COMPILES
    ]
    step_rows = [r for r in e2e if "ratio" in r]
    misses = [
        _ratio_miss(
            _e2e_name(r), f"{_e2e_compile(r)}: ", r, E2E_STEP_MAX, _why("end_to_end", r["model"])
        )
        for r in step_rows
    ]
    text = (
        "model.fit step time, each model, jit_compile False and True, stableops/Keras <= "
        f"{E2E_STEP_MAX:.2f}"
    )
    targets.append(_e2e_target("end_to_end", text, e2e, step_rows, [m for m in misses if m]))

    # Peak memory: per op (memory section) and per model, under XLA and in a plain tf.function.
    memory_rows, misses = [], []
    for case, mode, ratio in _memory_ratios(sections):
        memory_rows.append({"case": case})
        limit = MEMORY_MAX[mode]
        if ratio > limit:
            detail = f"{mode}: {_fmt_vs_limit(ratio, limit)} > {limit:.2f}"
            misses.append({"case": case, "detail": detail, "why": _why("memory", case)})
    for r in e2e:
        if "memory_ratio" in r:
            memory_rows.append({"case": _e2e_name(r)})
            limit = MEMORY_MAX[E2E_COMPILES[r["compile"]]]
            if r["memory_ratio"] > limit:
                ratio = _fmt_vs_limit(r["memory_ratio"], limit)
                detail = f"model.fit {_e2e_compile(r)}: {ratio} > {limit:.2f}"
                misses.append(
                    {"case": _e2e_name(r), "detail": detail, "why": _why("memory", r["model"])}
                )
    limits = " / ".join(f"{MEMORY_MAX[m]:.2f} ({m})" for m in ("xla", "function"))
    text = f"peak memory of forward+backward and of a model.fit, stableops/Keras <= {limits}"
    unmeasured = _unmeasured(availability, memory_rows, "no memory row", _memory_gaps(sections))
    unmeasured += [
        f"{_e2e_name(r)} {_e2e_compile(r)} ({_e2e_memory_gap(r)})"
        for r in e2e
        if "memory_ratio" not in r
    ]
    targets.append(_target("memory", text, memory_rows, misses, unmeasured))

    # First-fit compile overhead (CNN).
    overhead_rows = [
        r
        for r in e2e
        if r["model"] in COMPILE_OVERHEAD_MODELS and "compile_overhead_extra_seconds" in r
    ]
    misses = [
        {
            "case": _e2e_name(r),
            "detail": f"{_e2e_compile(r)}: "
            f"{_fmt_vs_limit(r['compile_overhead_extra_seconds'], COMPILE_OVERHEAD_MAX_S)} s "
            "more than Keras's",
            "why": _why("compile_overhead", r["model"]),
        }
        for r in overhead_rows
        if r["compile_overhead_extra_seconds"] > COMPILE_OVERHEAD_MAX_S
    ]
    models = ", ".join(COMPILE_OVERHEAD_MODELS)
    text = (
        f"compile overhead of the first fit ({models}): <= Keras's + {COMPILE_OVERHEAD_MAX_S:g} s"
    )
    cnn_rows = [r for r in e2e if r["model"] in COMPILE_OVERHEAD_MODELS]
    targets.append(_e2e_target("compile_overhead", text, cnn_rows, overhead_rows, misses))

    # Accuracy: finite, and <= ULP_MAX in float32 on every case (stableops).
    acc = [
        r
        for r in sections.get("accuracy", {}).get("data", {}).get("rows", [])
        if r.get("impl") == "stableops"
    ]
    ok_rows = [r for r in acc if "error" not in r]
    misses = [
        {
            "case": r["case"],
            "detail": f"{r['dtype']} {r['mode']}: {r['nonfinite_values']} non-finite values, "
            f"{r['nonfinite_grad_samples']} samples with non-finite gradients",
            "why": _why("finite", r["case"]) + f" (e.g. inputs {r['worst']['inputs']})",
        }
        for r in ok_rows
        if r["nonfinite_values"] or r["nonfinite_grad_samples"]
    ]
    misses += [
        {
            "case": r["case"],
            "detail": f"{r['dtype']} {r['mode']}: {r['error']}",
            "why": "the call raised",
        }
        for r in acc
        if "error" in r
    ]
    text = "zero non-finite values or gradients for finite inputs (stableops)"
    unmeasured = _unmeasured(availability, acc, "no accuracy row")
    targets.append(_target("finite", text, acc, misses, unmeasured))

    for dtype, target_id in ULP_TARGETS.items():
        measured = [r for r in ok_rows if r["dtype"] == dtype]
        misses = []
        for r in measured:
            worst = max(_num(r["max_ulp_grid"]), _num(r["max_ulp_random"]))
            if worst > ULP_MAX:
                misses.append(
                    {
                        "case": r["case"],
                        "detail": f"{r['mode']}: {_fmt_ulp(worst)} ULP at inputs "
                        f"{r['worst']['inputs']} "
                        f"(got {r['worst']['got']!r}, want {r['worst']['want']})",
                        "why": _why(target_id, r["case"]),
                    }
                )
        text = f"<= {ULP_MAX:g} ULP in {dtype} on every case, eager and XLA (stableops)"
        unmeasured = _unmeasured(availability, measured, f"no {dtype} accuracy row without error")
        targets.append(_target(target_id, text, measured, misses, unmeasured))

    # Gradients: within each case's budget against mpmath, none non-finite or dead (stableops).
    grads = [
        r
        for r in sections.get("gradients", {}).get("data", {}).get("rows", [])
        if r.get("impl") == "stableops"
    ]
    misses = [
        {"case": r["case"], "detail": f"{r['mode']}: {r['error']}", "why": "the call raised"}
        for r in grads
        if "error" in r
    ]
    misses += [
        {
            "case": r["case"],
            "detail": f"{r['mode']}, with respect to the {_wrt(r)}: {_gradient_cell(r)} "
            f"(budget {r['budget']:g}; {r['over_budget']} elements over it)",
            "why": _why("gradients", r["case"]),
        }
        for r in grads
        if "error" not in r and (r["over_budget"] or r["nonfinite"] or r["dead"])
    ]
    text = (
        "gradients within each case's budget against mpmath, none non-finite or dead, eager and "
        "XLA (stableops)"
    )
    unmeasured = _unmeasured(availability, grads, "no gradient row")
    targets.append(_target("gradients", text, grads, misses, unmeasured))
    return targets


def _wrt(row) -> str:
    return "target" if row["wrt"] == "target" else "prediction"


def _gradient_cell(row) -> str:
    """Worst ULP, and the counts of non-finite and dead gradients where there are any."""
    if "error" in row:
        return "error"
    cell = _fmt_ulp(row["worst_ulp"])
    counts = [f"{row[k]} {label}" for k, label in (("nonfinite", "nf"), ("dead", "dead")) if row[k]]
    return cell + (f" ({', '.join(counts)})" if counts else "")


def _memory_ratio(rows, case: str, mode: str) -> float | None:
    """stableops / Keras peak of one case and mode; None without both rows or a Keras peak."""
    s = _find(rows, case=case, mode=mode, impl="stableops")
    k = _find(rows, case=case, mode=mode, impl="keras")
    if not (s and k and k["peak_extra_bytes"]):
        return None
    return s["peak_extra_bytes"] / k["peak_extra_bytes"]


def _memory_ratios(sections):
    """(case, mode, stableops / Keras peak) of the targeted modes with a Keras peak above 0."""
    rows = sections.get("memory", {}).get("data", {}).get("rows", [])
    out = []
    for case in CASES:
        for mode in MEMORY_MAX:
            ratio = _memory_ratio(rows, case.name, mode)
            if ratio is not None:
                out.append((case.name, mode, ratio))
    return out


def _memory_gaps(sections) -> dict[str, str]:
    """case -> why a targeted mode of a case with memory rows has no ratio, where one has none."""
    rows = sections.get("memory", {}).get("data", {}).get("rows", [])
    gaps = {}
    for case in {r["case"] for r in rows}:
        why = []
        for mode in MEMORY_MAX:
            if _memory_ratio(rows, case, mode) is None:
                k = _find(rows, case=case, mode=mode, impl="keras")
                zero = k is not None and not k["peak_extra_bytes"]
                # A Keras peak of 0 gives no ratio: not measured, rather than met or missed.
                why.append(f"{mode}: " + ("Keras peak of 0 bytes" if zero else "no row"))
        if why:
            gaps[case] = "; ".join(why)
    return gaps


def _e2e_memory_gap(row) -> str:
    """Why a model.fit row has no memory ratio."""
    flavours = row["flavours"]
    missing = [f for f in ("stableops", "keras") if flavours[f].get("peak_extra_bytes") is None]
    if missing:
        return "no peak of " + " and ".join(missing)
    return "Keras peak of 0 bytes"


def _status(measured_rows, misses) -> str:
    """Misses that are all within the round-to-round spread count as met (the summary says so)."""
    if not measured_rows:
        return "not measured"
    return "met" if all(m.get("within_noise") for m in misses) else "missed"


def _not_available(impls: dict) -> str | None:
    """Why a case was not measured where a contestant did not probe ok: "stableops unavailable",
    "stableops error", "Keras unavailable"; None where both did."""
    stableops = impls.get("stableops", {}).get("status")
    if stableops != "ok":
        return f"stableops {stableops or 'not probed'}"
    keras = impls.get("keras", {}).get("status", "ok")
    return None if keras == "ok" else f"Keras {keras}"


def _unmeasured(availability, measured_rows, why: str, gaps: dict | None = None) -> list[str]:
    """Every case the run probed that has no row in ``measured_rows`` (or has an entry in
    ``gaps``: case -> why), as "case (why)": a target must not drop a case silently. A speed
    variant (``SPEED_VARIANTS``) is measured by its base case's rows."""
    measured = {r["case"] for r in measured_rows}
    measured |= {variant for variant, base in SPEED_VARIANTS.items() if base in measured}
    gaps = gaps or {}
    out = []
    for case in CASES:
        name = case.name
        if name in availability and (name not in measured or name in gaps):
            out.append(f"{name} ({_not_available(availability[name]) or gaps.get(name, why)})")
    return out


def _target(target_id, text, measured_rows, misses, unmeasured):
    return {
        "id": target_id,
        "target": text,
        "status": _status(measured_rows, misses),
        "misses": misses,
        "unmeasured": unmeasured,
    }


def _e2e_target(target_id, text, rows, measured_rows, misses):
    unmeasured = sorted(
        {f"{_e2e_name(r)} {_e2e_compile(r)}" for r in rows if r not in measured_rows}
    )
    status = _status(measured_rows, misses)
    return {
        "id": target_id,
        "target": text,
        "status": status,
        "misses": misses,
        "unmeasured": unmeasured,
    }


def _availability(sections) -> dict:
    merged = {}
    for name in (*SECTION_FILES, "run"):
        merged.update(sections.get(name, {}).get("availability", {}))
    return merged


# ----------------------------------------------------------------------------
# summary.md
# ----------------------------------------------------------------------------


def _speed_tables(sections) -> list[str]:
    speed = sections.get("speed", {}).get("data")
    if not speed:
        return []
    out = ["## Speed: stableops / Keras, forward + backward", ""]
    out.append(
        "Median over interleaved rounds of the same-round ratio (below 1: stableops faster). "
        f"Marks (float32, {_pow2(TARGET_MIN_SIZE)}-{_pow2(TARGET_MAX_SIZE)}; eager from "
        f"{_pow2(EAGER_MIN_SIZE)}, or at the largest size of a case whose inputs stop growing "
        f"below it): `✗` misses its target ({_speed_target_text()}), `~` misses it "
        "by less than "
        "the round-to-round spread (q25 within target: counts as met). `-`: not measured "
        "(implementation "
        "unavailable, or the same inputs as a smaller size: the metric-learning and CTC batches "
        "stop growing at a capped batch). `function` (a `tf.function` without XLA) is what "
        "`model.fit` runs by default on a machine without a GPU or TPU: Keras's "
        '`jit_compile="auto"` turns '
        "XLA off there."
    )
    out.append("")
    ratios = _ratio_rows(sections)
    for dtype in sorted({r["dtype"] for r in ratios}, key=lambda d: (d != "float32", d)):
        sizes = sorted({r["size"] for r in ratios if r["dtype"] == dtype})
        if len(sizes) == 1:  # one size (float16): one table, a column per mode
            rows = []
            for case in CASES:
                matches = [
                    _find(ratios, case=case.name, dtype=dtype, mode=m, size=sizes[0])
                    for m in MODES_ORDER
                ]
                cells = [_mark(r, m) if r else "-" for r, m in zip(matches, MODES_ORDER)]
                cells += [_cpu_short(r).strip(" ()") if r else "-" for r in matches]
                if any(c != "-" for c in cells):
                    rows.append([case.name, *cells])
            header = ["case", *MODES_ORDER, *[f"{m} CPU time" for m in MODES_ORDER]]
            out += [
                f"**{dtype}, {_pow2(sizes[0])}** (wall, then CPU-time ratio)",
                "",
                _table(header, rows),
                "",
            ]
            continue
        for mode in MODES_ORDER:
            rows = []
            for case in CASES:
                cells = []
                for size in sizes:
                    match = _find(ratios, case=case.name, dtype=dtype, mode=mode, size=size)
                    cells.append(_mark(match, mode) if match else "-")
                if any(c != "-" for c in cells):
                    rows.append([case.name, *cells])
            if rows:
                out += [
                    f"**{mode}, {dtype}**",
                    "",
                    _table(["case", *[_pow2(s) for s in sizes]], rows),
                    "",
                ]
    big = [
        r
        for r in ratios
        if r["dtype"] == "float32" and r["size"] >= EAGER_MIN_SIZE and "cpu_ratio" in r
    ]
    if big:
        sizes = sorted({r["size"] for r in big})
        rows = []
        for case in CASES:
            cells = []
            for mode in ("eager", "function", "xla"):
                for size in sizes:
                    match = _find(big, case=case.name, mode=mode, size=size)
                    cells.append(_fmt_ratio(match["cpu_ratio"]["median"]) if match else "-")
            if any(c != "-" for c in cells):
                rows.append([case.name, *cells])
        header = ["case"] + [
            f"{mode} {_pow2(size)}" for mode in ("eager", "function", "xla") for size in sizes
        ]
        out += [
            "**CPU-time ratio stableops / Keras, float32** (process CPU time of the same samples: "
            "the work done, "
            "far less sensitive to other processes on the cores than wall time, but blind to how "
            "many cores a "
            "kernel keeps busy)",
            "",
            _table(header, rows),
            "",
        ]
    tf_rows = _ratio_rows(sections, baseline="tf.nn")
    if tf_rows:
        largest = max(r["size"] for r in tf_rows if r["dtype"] == "float32")
        rows = []
        for case in CASES:
            cells = []
            for mode in ("eager", "function", "xla"):
                match = _find(tf_rows, case=case.name, dtype="float32", mode=mode, size=largest)
                cells.append(_fmt_ratio(match["ratio"]["median"]) if match else "-")
            if any(c != "-" for c in cells):
                rows.append([case.name, *cells])
        if rows:
            title = f"**stableops / tf.nn (or tf.math), float32, {_pow2(largest)}**"
            out += [title, "", _table(["case", "eager", "function", "xla"], rows), ""]
    out += _absolute_table(speed)
    return out


def _speed_target_text() -> str:
    return ", ".join(f"{mode} <= {limit:.2f}" for mode, (_, limit, _) in SPEED_TARGETS.items())


def _marked(ratio: dict, limit: float | None) -> str:
    """The median, marked `✗` if it misses ``limit``, `~` if only within the spread (q25)."""
    if limit is None or ratio["median"] <= limit:
        return _fmt_ratio(ratio["median"])
    return _fmt_ratio(ratio["median"], limit) + (" ~" if ratio["q25"] <= limit else " ✗")


def _mark(row, mode) -> str:
    return _marked(row["ratio"], speed_limit(mode, row["size"], row["dtype"], row["case"]))


def _absolute_table(speed) -> list[str]:
    timings = [t for t in speed.get("timings", []) if t["dtype"] == "float32"]
    if not timings:
        return []
    largest = max(t["size"] for t in timings)
    impls, modes = ("stableops", "keras", "tf.nn"), ("eager", "function", "xla")
    header = ["case"] + [f"{impl} {mode}" for impl in impls for mode in modes]
    rows = []
    for case in CASES:
        cells = []
        for impl in ("stableops", "keras", "tf.nn"):
            for mode in ("eager", "function", "xla"):
                match = _find(timings, case=case.name, impl=impl, mode=mode, size=largest)
                cells.append(_fmt_seconds(match["seconds"]["median"]) if match else "-")
        if any(c != "-" for c in cells):
            rows.append([case.name, *cells])
    if not rows:
        return []
    return [
        f"**Median time per call, float32, {_pow2(largest)} elements**",
        "",
        _table(header, rows),
        "",
    ]


def _limits_tables(sections) -> list[str]:
    from benchmarks.bandwidth import limits_table

    bandwidth = sections.get("bandwidth", {}).get("data")
    speed = sections.get("speed", {}).get("data")
    if not bandwidth and not speed:
        return []
    out = ["## Limits: memory bandwidth", ""]
    if bandwidth:
        rows = [
            [name, f"{m['best_gbps']:.1f}", f"{m['median_gbps']:.1f}"]
            for name, m in bandwidth["methods"].items()
        ]
        out += [
            f"Measured at the start of the run on {_fmt_bytes(bandwidth['array_bytes'])} float32 "
            "arrays (bytes "
            f"read + written per second); the limit is the best of the in-place methods: "
            f"**{bandwidth['limit_gbps']:.1f} GB/s**. `numpy_copy_fresh` writes into a new array, "
            "paying the "
            "first-touch page faults every new TF output buffer pays.",
            "",
            _table(["method", "best GB/s", "median GB/s"], rows),
            "",
        ]
    if speed and speed.get("timings"):
        float32 = [t["size"] for t in speed["timings"] if t["dtype"] == "float32"]
        largest = max(float32) if float32 else 0
        limit_rows = [
            r for r in limits_table(speed, bandwidth, CASES, largest) if r["dtype"] == "float32"
        ]
        rows = []
        for case in CASES:
            for impl in ("stableops", "keras", "tf.nn"):
                cells = []
                for mode in ("eager", "function", "xla"):
                    r = _find(limit_rows, case=case.name, impl=impl, mode=mode)
                    if r is None:
                        cells.append("-")
                        continue
                    share = r.get("fraction_of_copy", r["fraction_of_limit"])
                    rate = f"{r['achieved_gbps']:.1f} GB/s"
                    cells.append(f"{rate} ({100 * share:.0f}%)" if share is not None else rate)
                if any(c != "-" for c in cells):
                    first = next(r for r in limit_rows if r["case"] == case.name)
                    copy = f"{first['copy_gbps']:.1f} GB/s" if "copy_gbps" in first else "-"
                    rows.append([case.name, impl, _fmt_bytes(first["bytes"]), copy, *cells])
        if rows:
            out += [
                f"Elementwise cases at {_pow2(largest)} float32: compulsory traffic (inputs read "
                "once, value and "
                "gradient written once), the rate of a numpy copy of that traffic timed in the "
                "same rounds, and "
                "the traffic rate each implementation reaches, in percent of that copy (median of "
                "same-round "
                "ratios). Well below 100%: compute- or overhead-bound, or the data crosses memory "
                "more than once "
                "(eager: every op writes an intermediate; forward and backward are separate "
                "passes).",
                "",
                _table(["case", "impl", "traffic", "copy rate", "eager", "function", "xla"], rows),
                "",
            ]
    return out


def _accuracy_tables(sections) -> list[str]:
    acc = sections.get("accuracy", {}).get("data")
    if not acc or not acc.get("rows"):
        return []
    rows = acc["rows"]
    out = ["## Accuracy: max error in ULPs against mpmath, and non-finite outputs", ""]
    out.append(
        "Same inputs for every implementation: an edge grid (the dtype's extremes; only inputs "
        "whose exact "
        "value and gradient are finite) and a random sample. Cells: max ULP on the grid / on the "
        "random "
        "sample; `nf` = non-finite values / samples with a non-finite gradient (all should be 0). "
        "A value clipped by an epsilon counts its full error (Keras clips probabilities to [1e-7, "
        "1 - 1e-7]). "
        "In brackets: the max when the unit is floored at the smallest normal number, i.e. when "
        "an absolute "
        "error up to that number counts as 1 ULP (TF and XLA flush subnormal intermediates to "
        "zero, so a "
        "result just above the smallest normal can be millions of its own ULPs off; the targets "
        "use the "
        "strict number)."
    )
    out.append("")
    for dtype in sorted({r["dtype"] for r in rows}, key=lambda d: (d != "float32", d)):
        for mode in acc.get("modes", ("eager", "xla")):
            body = []
            for case in CASES:
                cells, any_row = [], False
                for impl in ("stableops", "keras", "tf.nn"):
                    r = _find(rows, case=case.name, impl=impl, mode=mode, dtype=dtype)
                    if r is None:
                        cells += ["-", "-"]
                        continue
                    any_row = True
                    if "error" in r:
                        cells += ["error", "-"]
                        continue
                    cells += [
                        f"{_ulp_cell(r, 'grid')} / {_ulp_cell(r, 'random')}",
                        f"{r['nonfinite_values']} / {r['nonfinite_grad_samples']}",
                    ]
                if any_row:
                    body.append([case.name, *cells])
            if body:
                header = ["case", "stableops ULP", "nf", "Keras ULP", "nf", "tf.nn ULP", "nf"]
                out += [f"**{dtype}, {mode}**", "", _table(header, body), ""]
    return out


def _gradient_table(sections) -> list[str]:
    data = sections.get("gradients", {}).get("data")
    if not data or not data.get("rows"):
        return []
    rows = data["rows"]
    out = ["## Gradients: max error in ULPs against mpmath's derivatives", ""]
    out.append(
        f"float32, {data['method']}. The sample of each case (its edge grid's rows, thinned, and "
        "seeded random rows) and its budget are those of tests/test_gradient_accuracy.py; a "
        "budget is stableops's, measured once over the full grid (benchmarks/gradients.py names "
        "each measurement). Cells: worst ULP over the checked elements, then the counts of "
        "non-finite (`nf`) and dead gradients where there are any."
    )
    out.append("")
    modes = data.get("modes", ("eager", "xla"))
    body = []
    for case in dict.fromkeys(r["case"] for r in rows):
        for wrt in dict.fromkeys(r["wrt"] for r in rows if r["case"] == case):
            cells = []
            budget = None
            for impl in ("stableops", "keras"):
                for mode in modes:
                    r = _find(rows, case=case, wrt=wrt, impl=impl, mode=mode)
                    cells.append("-" if r is None else _gradient_cell(r))
                    budget = budget if r is None else r["budget"]
            label = "target" if wrt == "target" else "prediction"
            body.append([case, label, f"{budget:g}", *cells])
    header = ["case", "with respect to", "budget",
              *[f"{impl} {mode}" for impl in ("stableops", "Keras") for mode in modes]]
    out += [_table(header, body), ""]
    return out


def _ulp_cell(row, part: str) -> str:
    """Max ULP; where flushed subnormal intermediates explain it, the flush-aware max follows."""
    strict, flushed = row[f"max_ulp_{part}"], row.get(f"max_ulp_{part}_flush_aware")
    cell = _fmt_ulp(strict)
    if flushed is not None and _num(flushed) < _num(strict):
        cell += f" [{_fmt_ulp(flushed)}]"
    return cell


def _memory_cell(ratio: float | None, limit: float | None) -> str:
    """The ratio, marked `✗` as the memory target counts it: unrounded against its limit."""
    if ratio is None:
        return "-"
    if limit is None:
        return f"{ratio:.2f}"
    return _fmt_vs_limit(ratio, limit) + (" ✗" if ratio > limit else "")


def _memory_table(sections) -> list[str]:
    mem = sections.get("memory", {}).get("data")
    if not mem:
        return []
    out = ["## Memory: peak extra memory of one forward + backward", ""]
    if not mem.get("supported"):
        return out + [
            "Not measured: neither TF's CPU allocator statistics nor /proc/self/clear_refs work "
            "here.",
            "",
        ]
    modes = [m for m in MODES_ORDER if any(r["mode"] == m for r in mem["rows"])]
    rows = []
    for case in CASES:
        cells = []
        for mode in modes:
            s = _find(mem["rows"], case=case.name, mode=mode, impl="stableops")
            k = _find(mem["rows"], case=case.name, mode=mode, impl="keras")
            cells += [
                _fmt_bytes(s["peak_extra_bytes"]) if s else "-",
                _fmt_bytes(k["peak_extra_bytes"]) if k else "-",
                _memory_cell(_memory_ratio(mem["rows"], case.name, mode), MEMORY_MAX.get(mode)),
            ]
        if any(c != "-" for c in cells):
            size = next(r for r in mem["rows"] if r["case"] == case.name)
            rows.append([case.name, _fmt_bytes(size["input_bytes"]), *cells])
    header = ["case", "inputs"] + [
        f"{h} {m}" for m in modes for h in ("stableops", "Keras", "ratio")
    ]
    targets = ", ".join(f"{m} <= {limit:.2f}" for m, limit in MEMORY_MAX.items())
    return out + [
        f"float32, {_pow2(mem['size'])} elements; {mem['method']}. Targets: {targets} (`✗`: "
        "missed).",
        "",
        _table(header, rows),
        "",
    ]


def _fmt_e2e_ratio(row) -> str:
    if "ratio" not in row:
        return "-"
    limit = E2E_STEP_MAX if row["compile"] in E2E_COMPILES else None
    return f"{_marked(row['ratio'], limit)} ({row['ratio']['q25']:.2f}-{row['ratio']['q75']:.2f})"


def _end_to_end_table(sections) -> list[str]:
    e2e = sections.get("end_to_end", {}).get("data")
    if not e2e or not e2e.get("rows"):
        return []
    rows = []
    for r in e2e["rows"]:
        s, k = r["flavours"]["stableops"], r["flavours"]["keras"]
        memory = "-"
        if s.get("peak_extra_bytes") is not None and k.get("peak_extra_bytes") is not None:
            memory = f"{_fmt_bytes(k['peak_extra_bytes'])} / {_fmt_bytes(s['peak_extra_bytes'])}"
            memory += f" ({r['memory_ratio']:.2f})" if "memory_ratio" in r else ""
        overhead = "-"
        if "compile_overhead_extra_seconds" in r:
            overhead = (
                f"{k['compile_overhead_seconds']:.2f} / {s['compile_overhead_seconds']:.2f} s"
            )
        rows.append(
            [
                _e2e_name(r),
                _e2e_compile(r),
                _fmt_seconds(k["step_seconds"]) if k["step_seconds"] else k["note"],
                _fmt_seconds(s["step_seconds"]) if s["step_seconds"] else s["note"],
                _fmt_e2e_ratio(r),
                f"{r['cpu_ratio']['median']:.2f}" if "cpu_ratio" in r else "-",
                memory,
                overhead,
                _fmt_losses(k["final_loss"], s["final_loss"]),
            ]
        )
    data = sorted({f"{r['model']}: {r['data']}" for r in e2e["rows"] if r.get("data")})
    methods = sorted({r["memory_method"] for r in e2e["rows"] if r.get("memory_method")})
    notes = sorted({r["flavours"]["stableops"]["note"] for r in e2e["rows"]})
    return [
        "## End to end: model.fit",
        "",
        f'{e2e["method"]}. `jit_compile=False` is what Keras\'s default (`"auto"`) uses on a '
        "machine without a "
        f"GPU or TPU. Targets: step ratio <= {E2E_STEP_MAX:.2f} in both compile modes (`✗` "
        "missed, `~` within the "
        f"spread), peak memory ratio <= {MEMORY_MAX['xla']:.2f} (XLA) / "
        f"{MEMORY_MAX['function']:.2f} "
        "(jit_compile=False), first-fit compile overhead of the "
        f"{', '.join(COMPILE_OVERHEAD_MODELS)} at most "
        f"{COMPILE_OVERHEAD_MAX_S:g} s above Keras's. Compile overhead = first fit - median warm "
        "fit.",
        "",
        *[f"- data: {d}" for d in data],
        *[f"- peak memory: {m}" for m in methods],
        *[f"- stableops flavour: {n}" for n in notes],
        "",
        _table(
            [
                "model",
                "compile",
                "Keras step",
                "stableops step",
                "ratio (q25-q75)",
                "CPU ratio",
                "peak memory Keras / stableops (ratio)",
                "compile overhead Keras / stableops",
                "last loss Keras / stableops",
            ],  # fmt: skip
            rows,
        ),
        "",
    ]


def _targets_section(targets) -> list[str]:
    rows = []
    for t in targets:
        status = {"met": "met", "missed": "**missed**", "not measured": "not measured"}[t["status"]]
        cases = sorted({m["case"] for m in t["misses"]})
        noisy = sorted(
            c for c in cases if all(m.get("within_noise") for m in t["misses"] if m["case"] == c)
        )
        detail = ""
        if cases:
            detail = f"{len(cases)} case(s) missed" + (
                f", {len(noisy)} only within noise (`~`)" if noisy else ""
            )
        if t["status"] == "met" and cases:
            detail = (
                f"met within the round-to-round spread: {len(cases)} case(s) miss only "
                "inside it (`~`)"
            )
        if t.get("unmeasured"):
            detail += ("; " if detail else "") + "not measured: " + ", ".join(t["unmeasured"])
        rows.append([t["target"], status, detail or "-"])
    out = ["## Targets", "", _table(["target", "status", "detail"], rows), ""]
    for t in targets:
        if not t["misses"]:
            continue
        verdict = "Met within noise" if t["status"] == "met" else "Missed"
        out += [f"**{verdict}: {t['target']}** (every miss with its numbers: `targets.json`)", ""]
        out += [f"Common reason: {GENERIC_WHY[t['id']]}.", ""]
        body = []
        by_case = {}
        for m in t["misses"]:
            by_case.setdefault(m["case"], []).append(m)
        for case, misses in by_case.items():
            noise = all(m.get("within_noise") for m in misses)
            details = "; ".join(m["detail"] for m in misses[:3])
            details += f"; +{len(misses) - 3} more" if len(misses) > 3 else ""
            body.append([f"`{case}`" + (" ~" if noise else ""), details, misses[0]["why"]])
        out += [_table(["case", "misses", "why"], body), ""]
        if any(all(m.get("within_noise") for m in ms) for ms in by_case.values()):
            out += [
                "`~`: every miss of that case is within the round-to-round spread (its q25 meets "
                "the target); "
                "it counts as met.",
                "",
            ]
    return out


def _trades_section() -> list[str]:
    out = ["## Trades between accuracy and speed (budgets within 4 ULP, and their cost)", ""]
    if not TRADES:
        return out + ["None: no error budget was raised to reach speed parity.", ""]
    rows = [[f"`{case}`", trade] for case, trade in TRADES.items()]
    return out + [_table(["case", "ULP before -> after, speed before -> after"], rows), ""]


def _onednn(env, sections) -> bool | None:
    """Whether the run had TF's oneDNN kernels on: recorded since the field was added, else
    told by the memory section's method (the allocator's statistics work only with oneDNN)."""
    if env.get("onednn") is not None:
        return env["onednn"]
    method = sections.get("memory", {}).get("data", {}).get("peak_method")
    return {"allocator": True, "rss": False}.get(method)


def _onednn_sentence(onednn) -> str:
    """The header's note on TF's oneDNN kernels (``environment.onednn_enabled``); none when a
    run did not record it."""
    if onednn is None:
        return ""
    if onednn:
        return " TF's oneDNN kernels: on (Keras's softmax is one oneDNN pass over each row)."
    return (
        " TF's oneDNN kernels: off (TF's default on CPUs without AVX-512 VNNI/BF16, AVX-VNNI "
        "or AMX): Keras runs Eigen's kernels, and the memory section measures peak RSS."
    )


def _header(sections) -> list[str]:
    run = sections.get("run", {})
    env = run.get("environment", {})
    out = ["# stableops benchmarks: summary", ""]
    if env:
        runtime = run.get("runtime_seconds", {}).get("total")
        out += [
            f"Run {run.get('created', '?')} (preset `{run.get('config', {}).get('preset', '?')}`"
            + (f", {runtime / 60:.1f} min" if runtime else "")
            + f"), commit {env.get('commit')}; {env.get('cpu')}, {env.get('usable_cores')} cores, "
            f"{(env.get('memory_gib') or 0):.0f} GiB; TensorFlow {env.get('tensorflow')}, Keras "
            f"{env.get('keras')}, "
            f"Python {env.get('python')}. Load average at start: "
            f"{env.get('load_average_at_start')}."
            + (
                f" This run measured only `{run['only']}` (`--only`); the other cases' rows are "
                "from the earlier runs this directory held."
                if run.get("only")
                else ""
            )
            + (
                f" It timed {run['rounds_scale']} times the preset's rounds (`--rounds-scale`)."
                if run.get("rounds_scale", 1) > 1
                else ""
            ),
            "",
            f"float16 on this CPU: {env.get('float16', {}).get('verdict', '?')}."
            + _onednn_sentence(_onednn(env, sections)),
            "",
        ]
    other_runs = [
        f"`{name}` ({sections[name].get('created')}, preset `{sections[name].get('preset')}`)"
        for name in SECTION_FILES
        if name in sections and run and sections[name].get("created") != run.get("created")
    ]
    if other_runs:
        out += [
            "Sections measured by other (partial) runs than the header's: "
            + ", ".join(other_runs)
            + ".",
            "",
        ]
    unavailable = sorted(
        (case, impl, a["detail"])
        for case, impls in _availability(sections).items()
        for impl, a in impls.items()
        if a["status"] != "ok"
    )
    if unavailable:
        out += ["Not measured (implementation unavailable or failing when the run started):", ""]
        out += [f"- `{case}` {impl}: {detail}" for case, impl, detail in unavailable]
        out.append("")
    return out


HEADLINE_SIZE = 2**20


def _worst_ulp(row, suffix: str = "") -> float:
    return max(_num(row[f"max_ulp_grid{suffix}"]), _num(row[f"max_ulp_random{suffix}"]))


def _cpu_short(row) -> str:
    return f" ({row['cpu_ratio']['median']:.2f})" if "cpu_ratio" in row else ""


def headline_table(sections) -> list[str]:
    """One row per case: ratios at 2^20 in each mode, float32 accuracy of stableops and Keras."""
    float32 = [r for r in _ratio_rows(sections) if r["dtype"] == "float32"]
    sizes = {r["size"] for r in float32}
    size = HEADLINE_SIZE if HEADLINE_SIZE in sizes or not sizes else max(sizes)
    accuracy = sections.get("accuracy", {}).get("data", {}).get("rows", [])
    rows = []
    for case in CASES:
        # A case whose inputs stopped growing was measured at the smaller size only.
        measured = [r["size"] for r in float32 if r["case"] == case.name and r["size"] <= size]
        ratios = [r for r in float32 if r["size"] == max(measured, default=size)]
        cells = []
        for mode in ("eager", "function", "xla"):
            match = _find(ratios, case=case.name, mode=mode)
            cells.append(
                f"{_fmt_ratio(match['ratio']['median'])}{_cpu_short(match)}" if match else "-"
            )
        for impl in ("stableops", "keras"):
            worst, flushed, nonfinite = [], [], 0
            for mode in ("eager", "xla"):
                r = _find(accuracy, case=case.name, impl=impl, mode=mode, dtype="float32")
                if r and "error" not in r:
                    worst.append(_worst_ulp(r))
                    flushed.append(
                        _worst_ulp(r, "_flush_aware")
                        if "max_ulp_grid_flush_aware" in r
                        else worst[-1]
                    )
                    nonfinite += r["nonfinite_values"] + r["nonfinite_grad_samples"]
            cell = "-"
            if worst:
                cell = _fmt_ulp(max(worst))
                cell += f" [{_fmt_ulp(max(flushed))}]" if max(flushed) < max(worst) else ""
                cell += f" ({nonfinite} nf)" if nonfinite else ""
            cells.append(cell)
        if any(c != "-" for c in cells):
            rows.append([f"`{case.name}`", *cells])
    if not rows:
        return []
    header = [
        "case", "eager", "tf.function", "XLA", "max ULP stableops", "max ULP Keras",
    ]  # fmt: skip
    return [
        f"## Headline: float32, {_pow2(size)} elements",
        "",
        "Time ratio stableops / Keras of forward + backward, wall time (CPU time in parentheses; "
        "below 1: "
        "stableops faster; `tf.function` without XLA is `model.fit`'s default on CPU-only "
        "machines), and the "
        "worst float32 error over the edge grid and the random sample, eager or XLA, in ULPs (in "
        "brackets: with "
        "the unit floored at the smallest normal number; `nf`: non-finite values or gradients "
        "where the exact "
        "ones are finite). The metric-learning and CTC rows are at the largest size measured "
        "for them (their inputs stop growing at a capped batch).",
        "",
        _table(header, rows),
        "",
    ]


def build_summary(sections: dict, targets: list[dict]) -> str:
    parts = (
        _header(sections) + headline_table(sections) + _targets_section(targets) + _trades_section()
    )
    parts += _speed_tables(sections) + _limits_tables(sections) + _accuracy_tables(sections)
    parts += _gradient_table(sections)
    parts += _memory_table(sections) + _end_to_end_table(sections)
    plots = [p for p in ("speed_ratio.png", "speed_times.png", "accuracy.png", "bandwidth.png")]
    parts += ["## Plots", "", *[f"- `{p}`" for p in plots], ""]
    return "\n".join(parts)


def write_report(out: Path, plots: bool = True) -> str:
    sections = load_sections(out)
    targets = evaluate_targets(sections)
    (out / "targets.json").write_text(json.dumps(targets, indent=1) + "\n")
    if plots:
        from benchmarks.plots import write_plots

        write_plots(sections, out)
    summary = build_summary(sections, targets)
    (out / "summary.md").write_text(summary)
    return summary

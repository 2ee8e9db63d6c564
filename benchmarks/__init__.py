"""Benchmarks: stableops against the Keras built-ins and ``tf.nn``, as ratios.

One run (``python -m benchmarks`` or ``make bench``) measures

* **speed**: forward + backward time of every loss and hot op, eager,
  ``tf.function`` and ``tf.function(jit_compile=True)``, over a ladder of
  sizes, medians of interleaved rounds, ratio stableops / Keras per case
  (``speed.py``);
* **limits**: bytes an elementwise loss must move per call against this
  machine's measured memory bandwidth (``bandwidth.py``);
* **accuracy**: maximum error in ULPs against mpmath over an edge grid and a
  random sample, and counts of non-finite values and gradients (``accuracy.py``);
* **gradients**: maximum error of stableops's and Keras's gradients in ULPs
  against mpmath's derivatives, and counts of non-finite and dead gradients
  (``gradients.py``; the same sample holds stableops to its budgets in
  ``tests/test_gradient_accuracy.py``);
* **memory**: peak memory of forward + backward at the largest size
  (``memory.py``);
* **end to end**: an MLP, a CNN and a GRU trained with ``model.fit``, with
  ``jit_compile`` off (Keras's default on CPU) and on, the CNN also under
  ``mixed_float16``: step time, peak memory, first-fit compile overhead
  (``end_to_end.py``);

and writes one JSON file per section, ``summary.md`` and PNG plots
(``report.py``, ``plots.py``). The cases themselves live in ``cases.py``; a
case whose stableops implementation has not landed yet is reported as
"unavailable", never a crash.
"""

SCHEMA = "stableops-benchmarks/1"
SECTIONS = ("bandwidth", "speed", "accuracy", "gradients", "memory", "end_to_end")

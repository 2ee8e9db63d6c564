"""The doctor's findings and the report that holds them."""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap

import numpy as np

from stableops.doctor._registry import ORIGIN_CHECKS, Check, stage_rank

SEVERITIES = ("error", "warning", "info")
_SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


#: How many indices (samples, features, layers) a finding's evidence lists.
MAX_LISTED = 8


def plural(count, noun: str) -> str:
    """``"1 label"``, ``"3 labels"``.

    >>> plural(1, "label"), plural(3, "label")
    ('1 label', '3 labels')
    """
    count = int(count)
    return f"{count} {noun}{'' if count == 1 else 's'}"


def listed(indices) -> list:
    """The first ``MAX_LISTED`` indices, as Python ints (for a finding's evidence)."""
    return [int(i) for i in list(indices)[:MAX_LISTED]]


def _json_ready(value):
    """Convert NumPy scalars/arrays and non-finite floats to JSON-safe values."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def format_number(value) -> str:
    """Short, readable number: 3 significant digits, exponent when large/small."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        if value == 0:
            return "0"
        if 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3g}"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem (or suggestion) the doctor found.

    Attributes:
        check: stable identifier of the check, ``"<stage>.<what>"``, e.g.
            ``"input.outliers"``, ``"activation.dead_relu"``, ``"labels.range"``.
        severity: ``"error"`` (non-finite now, or invalid), ``"warning"``
            (likely to go non-finite or stall) or ``"info"`` (a suggestion).
        location: where: ``"input feature 3"``, ``"layer 'dense_1'"``,
            ``"labels"``, ``"loss"``.
        message: one-line description of the problem.
        evidence: the numbers behind it (JSON-ready scalars and short lists).
        fix: what to do about it.
    """

    check: str
    severity: str
    location: str
    message: str
    evidence: dict
    fix: str

    def __post_init__(self):
        if self.severity not in _SEVERITY_RANK:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict:
        return _json_ready(dataclasses.asdict(self))

    def evidence_text(self) -> str:
        return ", ".join(f"{k}={format_number(v)}" for k, v in self.evidence.items())


def finding(check: Check, *, location, message, evidence=None, fix=None, severity=None) -> Finding:
    """A :class:`Finding` of a registered check, with its default severity and fix."""
    return Finding(
        check=check.id,
        severity=severity or check.severity,
        location=location,
        message=message,
        evidence=dict(evidence or {}),
        fix=fix or check.fix,
    )


class Report:
    """What ``stableops.diagnose`` found: an ordered list of :class:`Finding`.

    ``print(report)`` gives a table (most severe first); ``report.to_dict()``
    gives JSON-ready data. ``report.errors``/``warnings``/``problems`` filter by
    severity, ``report.find(check)`` by check id, and ``report.likely_cause``
    is the error (or else warning) earliest in the data flow: weights, inputs,
    labels, activations, loss, gradients, optimizer, trial run (see
    ``stableops/doctor/_registry.py``).

    Attributes:
        findings: all findings, most severe first.
        context: what was examined (model name, samples, loss, dtype policy).
        notes: checks that were skipped and why.
    """

    def __init__(self, findings=(), *, context=None, notes=()):
        self.findings = sorted(
            findings,
            key=lambda f: (_SEVERITY_RANK[f.severity], stage_rank(f.check)),
        )
        self.context = dict(context or {})
        self.notes = list(notes)

    # ----------------------------------------------------------------- queries
    @property
    def errors(self):
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self):
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def problems(self):
        """Errors and warnings (everything but suggestions)."""
        return [f for f in self.findings if f.severity != "info"]

    @property
    def ok(self) -> bool:
        """True when there is no error and no warning."""
        return not self.problems

    def find(self, check: str):
        """Findings whose check id is ``check`` or starts with ``check + '.'``."""
        return [f for f in self.findings if f.check == check or f.check.startswith(check + ".")]

    @property
    def likely_cause(self):
        """The most severe finding earliest in the data flow, or ``None``."""
        for severity in ("error", "warning"):
            candidates = [f for f in self.findings if f.severity == severity]
            if candidates:
                return min(candidates, key=lambda f: stage_rank(f.check))
        return None

    @property
    def first_non_finite(self):
        """The finding that says where values first went non-finite, or ``None``.

        The earliest in the data flow of the checks that name an origin (non-finite
        or float16-overflowing inputs, a layer's outputs, the loss, the gradients);
        its evidence names the ``layer`` and ``op`` where the check could find them.
        """
        for check in ORIGIN_CHECKS:
            found = self.find(check.id)
            if found:
                return found[0]
        return None

    def __len__(self):
        return len(self.findings)

    def __iter__(self):
        return iter(self.findings)

    # ----------------------------------------------------------------- output
    def to_dict(self) -> dict:
        cause = self.likely_cause
        return _json_ready(
            {
                "context": self.context,
                "ok": self.ok,
                "counts": {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES},
                "likely_cause": None if cause is None else cause.to_dict(),
                "findings": [f.to_dict() for f in self.findings],
                "notes": self.notes,
            }
        )

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary_line(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        parts = [f"{counts[s]} {s}{'s' if counts[s] != 1 else ''}" for s in SEVERITIES]
        return ", ".join(parts)

    def format(self, width: int = 100) -> str:
        """The report as a table: one block per finding."""
        ctx = self.context
        head = "stableops doctor report"
        if ctx:
            head += " — " + ", ".join(f"{k}: {format_number(v)}" for k, v in ctx.items())
        lines = textwrap.wrap(head, width) or [head]
        lines.append(self.summary_line())
        if not self.findings:
            lines.append("No problems found.")
        else:
            loc_width = min(max(len(f.location) for f in self.findings), 28)
            check_width = max(len(f.check) for f in self.findings)
            header = (
                f"{'#':>2}  {'SEVERITY':<8} {'CHECK':<{check_width}}  "
                f"{'LOCATION':<{loc_width}}  FINDING"
            )
            lines.append(header)
            lines.append("-" * min(width, max(len(header), 60)))
            indent = " " * 4
            for number, f in enumerate(self.findings, 1):
                first = (
                    f"{number:>2}  {f.severity.upper():<8} {f.check:<{check_width}}  "
                    f"{f.location:<{loc_width}}  "
                )
                body = textwrap.wrap(f.message, max(width - len(first), 30)) or [""]
                lines.append(first + body[0])
                lines.extend(" " * len(first) + part for part in body[1:])
                if f.evidence:
                    lines.extend(
                        textwrap.wrap(
                            "evidence: " + f.evidence_text(),
                            width,
                            initial_indent=indent,
                            subsequent_indent=indent + "  ",
                        )
                    )
                if f.fix:
                    lines.extend(
                        textwrap.wrap(
                            "fix: " + f.fix,
                            width,
                            initial_indent=indent,
                            subsequent_indent=indent + "  ",
                        )
                    )
        for note in self.notes:
            lines.extend(textwrap.wrap("note: " + note, width, subsequent_indent="  "))
        return "\n".join(lines)

    def __str__(self):
        return self.format()

    def __repr__(self):
        return f"Report({self.summary_line()})"


#: The stages whose checks read the data checks' sample (``input``, ``labels``); the others
#: see the model's smaller sample, drawn from it.
DATA_STAGES = frozenset({"input", "labels"})

#: Evidence entries that list samples, by their place in the sample the check saw.
SAMPLE_LISTS = ("samples", "fully_masked_rows")


def in_user_rows(report, data_rows=None, model_rows=None):
    """``report`` with the samples its evidence lists named by the user's rows.

    The checks see samples of the user's data and list the samples they flag
    by their place in them; a user needs the row of their own data.
    ``data_rows``: the user's row of each row of the data checks' sample;
    ``model_rows``: the data sample's row of each row of the model's sample
    (both as ``_data.take_sample(..., return_rows=True)`` gives them; ``None``:
    the sample is the rows in order).

    >>> from stableops.doctor._registry import LOSS_NON_FINITE
    >>> model_stage = finding(LOSS_NON_FINITE, location="loss", message="",
    ...                       evidence={"samples": [0, 2]})
    >>> in_user_rows(Report([model_stage]), np.arange(0, 100, 10), [1, 5, 7]).findings[0].evidence
    {'samples': [10, 70]}
    """
    data_rows = None if data_rows is None else np.asarray(data_rows, dtype=np.int64)
    model_rows = None if model_rows is None else np.asarray(model_rows, dtype=np.int64)
    if data_rows is not None:
        # The model sample's rows, through the data sample, in the user's data.
        model_rows = data_rows if model_rows is None else data_rows[model_rows]
    findings = []
    for f in report.findings:
        rows = data_rows if f.check.split(".", 1)[0] in DATA_STAGES else model_rows
        evidence = dict(f.evidence)
        for key in SAMPLE_LISTS:
            # A list of positions; ``input.single_sample_batch``'s "samples" is a count.
            if rows is not None and isinstance(evidence.get(key), list):
                evidence[key] = [int(rows[i]) for i in evidence[key]]
        findings.append(dataclasses.replace(f, evidence=evidence))
    return Report(findings, context=report.context, notes=report.notes)

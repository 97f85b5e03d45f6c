"""Flags: values outside reference intervals, and sample-level warnings.

A flag is a plain dict so that it goes unchanged into JSON, FHIR, Excel and the Prefect artifact::

    {"cell": "neutrophil" | None, "direction": "high" | "low" | None, "code": str, "kind": "percent" |
     "absolute" | "nrbc" | "sample", "value": float | None, "interval": [low, high] | None,
     "ci_outside": bool | None, "grade": "definite" | "possible" | None, "message": str}

A value equal to an interval limit is inside the interval.  ``ci_outside`` is True when the whole 95 %
confidence interval of the raw count lies beyond the limit.

Percentage and NRBC flags are decided on the differential *corrected for the model's measured confusion*
(``wbcproc.correction``) when the model's sidecar carries it: a flag is raised when the reported value is
beyond the limit *and* the probability that the true value lies beyond it is at least 0.5 (grade
``possible``: the corrected value itself is beyond) and is ``definite`` from 0.95.  "NRBC present"
needs, in addition, more erythroblast calls than misclassification alone explains (the limit of blank in
``wbcproc.correction``).  Without a confusion matrix the raw count decides, graded by ``ci_outside``.  Measured as a screening test in ``benchmarks/flags.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wbcproc.aggregate import Differential
from wbcproc.classes import DISPLAY_NAMES, WBC_CLASSES
from wbcproc.config import ReferenceIntervals, Settings
from wbcproc.correction import Corrected, NrbcDetection

# Conventional names for abnormal proportions, used in messages only.
_TERMS = {
    ("neutrophil", "high"): "neutrophilia",
    ("neutrophil", "low"): "neutropenia",
    ("lymphocyte", "high"): "lymphocytosis",
    ("lymphocyte", "low"): "lymphopenia",
    ("monocyte", "high"): "monocytosis",
    ("monocyte", "low"): "monocytopenia",
    ("eosinophil", "high"): "eosinophilia",
    ("eosinophil", "low"): "eosinopenia",
    ("basophil", "high"): "basophilia",
    ("basophil", "low"): "basopenia",
    ("ig", "high"): "left shift",
    ("ig", "low"): "",
}


KINDS = ("percent", "absolute", "nrbc", "sample")
DEFINITE = 0.95  # probability beyond the limit for a definite flag
POSSIBLE = 0.5  # ... for a possible one: the corrected value itself is beyond the limit

# A withheld flag on a smaller count says that counting this many white cells narrows it: at 200 cells the
# screening benchmark meets its left-shift targets (false 1.1 %, 3-5 % IG found in 98 % of samples; at 100:
# 3.4 % and 87 %), and much of the 100-cell leak is band cells at the band / metamyelocyte border that no
# model here calls reliably (docs/flags.md).
RECOUNT_CELLS = 200


def _flag(cell, direction, code, value, interval, ci_outside, message, *, kind, grade=None, **extra) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"flag kind {kind!r}; expected one of {KINDS}")
    return {
        "cell": cell,
        "direction": direction,
        "code": code,
        "kind": kind,
        "value": value,
        "interval": list(interval) if interval is not None else None,
        "ci_outside": ci_outside,
        "grade": grade,
        "message": message,
        **extra,
    }


def sample_flag(code: str, message: str, value: float | None = None) -> dict[str, Any]:
    return _flag(None, None, code, value, None, None, message, kind="sample")


def flag_label(f: dict[str, Any]) -> str:
    """HIGH / LOW with the grade, e.g. "HIGH (possible)": how the Summary sheet and the UI artifact show a flag."""
    return f["direction"].upper() + (f" ({f['grade']})" if f.get("grade") else "")


@dataclass(frozen=True)
class Evidence:
    """What the corrected differential says about each limit of the reference intervals, read from
    :mod:`wbcproc.correction` once per differential; every flag rule below reads these numbers."""

    percent: dict[str, float]  # corrected share of each white cell class
    ci95: dict[str, tuple[float, float]]
    nrbc_per_100_wbc: float
    beyond: dict[tuple[str, str, str], float]  # (kind, cell, "high"/"low") -> P(true value beyond the limit)
    nrbc: NrbcDetection  # erythroblast calls against the limit of blank at the NRBC limit

    @classmethod
    def of(cls, diff: Differential, ref: ReferenceIntervals, corrected: Corrected | None) -> Evidence | None:
        if corrected is None or diff.wbc_total == 0:
            return None
        beyond: dict[tuple[str, str, str], float] = {}
        for cell in WBC_CLASSES:
            lo, hi = ref.percent[cell]
            beyond["percent", cell, "high"] = corrected.prob_above(cell, hi)
            beyond["percent", cell, "low"] = corrected.prob_below(cell, lo)
        if diff.absolute is not None:  # a limit on the count is one on the share, given the analyser's WBC count
            wbc_count = diff.extra["wbc_count"]
            for cell, (lo, hi) in ref.absolute.items():
                beyond["absolute", cell, "high"] = corrected.prob_above(cell, 100 * hi / wbc_count)
                beyond["absolute", cell, "low"] = corrected.prob_below(cell, 100 * lo / wbc_count)
        limit = ref.nrbc_max_per_100_wbc
        beyond["nrbc", "erythroblast", "high"] = corrected.prob_above("erythroblast", limit)
        return cls(
            dict(corrected.percent), dict(corrected.ci95), corrected.nrbc_per_100_wbc, beyond,
            corrected.nrbc_detection(limit),
        )  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """A differential's flags in report order, the flags the correction withheld, and the classes behind them."""

    flags: list[dict[str, Any]]
    withheld: list[dict[str, Any]]
    drivers: set[str]


def decide_flags(
    diff: Differential,
    ref: ReferenceIntervals,
    corrected: Corrected | None = None,
    *,
    sample: Sequence[dict[str, Any]] = (),
    first: Sequence[dict[str, Any]] = (),
) -> Decision:
    """The one place a report's flags are decided, for the preliminary report (the model's differential,
    ``corrected`` for its measured confusion) and the final one (the verified differential: nothing to correct,
    so nothing withheld).  Order: ``first`` (the domain guard's), the interval flags, then the ``sample``
    flags; the same order in every report format."""
    ev = Evidence.of(diff, ref, corrected)
    flags = [*first, *_interval_flags(diff, ref, ev), *sample]
    withheld = _withheld_flags(diff, ref, ev, flags)
    return Decision(flags, withheld, flag_drivers(flags, withheld))


# Classes that are rare in normal blood (upper reference limits of a few percent, none for NRBC and IG): a
# high flag on one of them rests on a handful of cells, and each must be seen to confirm or dismiss it - a
# left shift is its IG cells, NRBC its erythroblasts.  A high neutrophil, lymphocyte or monocyte share rests
# on dozens of cells; the reviewer checks that class's gallery as a whole, not every cell one by one (86 of
# 100 cells marked on an 83 % neutrophil slide is not a review load anyone carries).
ONE_BY_ONE = frozenset({"ig", "erythroblast", "basophil", "eosinophil"})


def flag_drivers(flags: list[dict[str, Any]], withheld: list[dict[str, Any]] = ()) -> set[str]:
    """Classes whose every cell a reviewer must see: the rare classes (``ONE_BY_ONE``) behind a raised high
    flag (e.g. the IG cells of a left shift) or a withheld one (``withheld_flags``).  Those cells are listed
    first and marked for review whatever their confidence, so verification starts where it matters - and a
    withheld flag the cells do support is raised on the final report, from the verified counts."""
    raised = {f["cell"] for f in flags if f["cell"] and f["direction"] == "high" and f["kind"] in ("percent", "nrbc")}
    return (raised | {w["cell"] for w in withheld if w["direction"] == "high"}) & ONE_BY_ONE


def withheld_flags(
    diff: Differential, ref: ReferenceIntervals, corrected: Corrected | None, flags: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Values reported beyond their limit whose flag the correction withheld (the model's measured confusion
    explains them: probability beyond the limit < 0.5), given the ``flags`` ``interval_flags`` raised on the
    same differential.  Not flags - a prompt: the report names them and
    marks their cells for verification, because a withheld left shift at 3 % IG is sometimes real (the
    screening benchmark finds 87 % of 3-5 % IG samples at 100 cells; verification finds the rest)."""
    return _withheld_flags(diff, ref, Evidence.of(diff, ref, corrected), flags)


def _withheld_flags(
    diff: Differential, ref: ReferenceIntervals, ev: Evidence | None, flags: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if ev is None:
        return []
    raised = {(f["cell"], f["direction"]) for f in flags if f["kind"] in ("percent", "nrbc")}
    out = []
    for cell in WBC_CLASSES:
        value, (lo, hi) = diff.percent[cell], ref.percent[cell]
        assert value is not None
        for direction, outside, limit in (("high", value > hi, hi), ("low", value < lo, lo)):
            if outside and (cell, direction) not in raised:
                prob = ev.beyond["percent", cell, direction]
                text = f"{DISPLAY_NAMES[cell]} {value:.1f} %"
                out.append(_withheld(cell, direction, value, limit, prob, text, "%", diff.wbc_total))
    nrbc = diff.nrbc_per_100_wbc
    if nrbc is not None and nrbc > ref.nrbc_max_per_100_wbc and ("erythroblast", "high") not in raised:
        prob = ev.beyond["nrbc", "erythroblast", "high"]
        text = f"{diff.counts['erythroblast']} NRBC ({nrbc:.1f} per 100 WBC)"
        out.append(
            _withheld("erythroblast", "high", nrbc, ref.nrbc_max_per_100_wbc, prob, text, "per 100 WBC", diff.wbc_total)
        )
    return out


def _withheld(
    cell: str, direction: str, value: float, limit: float, prob: float, text: str, unit: str, counted: int
) -> dict[str, Any]:
    recount = (
        f"; {counted} white cells counted: a count of {RECOUNT_CELLS} or more narrows it"
        if counted < RECOUNT_CELLS
        else ""
    )
    return {
        "cell": cell,
        "direction": direction,
        "value": round(value, 2),
        "limit": limit,
        "probability": round(float(prob), 3),
        "message": f"{text} is {direction}er than {limit:g} {unit} as called, but within what the model's own "
        f"misclassifications explain (P = {prob:.2f}); flag withheld - verify the marked cells{recount}",
    }


def grade(probability: float) -> str | None:
    """``definite`` / ``possible`` / None (not flagged) from the probability beyond the limit."""
    if probability >= DEFINITE:
        return "definite"
    if probability >= POSSIBLE:
        return "possible"
    return None


def _graded(raw_outside: bool, ci_out: bool, probability: float | None) -> str | None:
    """The grade of a flag: from the corrected differential when there is one, else from the raw count.
    A value reported inside its interval is never flagged: the report must not say "low" beside a number
    the reader sees within the limits."""
    if not raw_outside:
        return None
    if probability is not None:
        return grade(probability)
    return "definite" if ci_out else "possible"


def _percent_flags(diff: Differential, ref: ReferenceIntervals, ev: Evidence | None, cell: str) -> list[dict[str, Any]]:
    value = diff.percent[cell]
    lo, hi = ref.percent[cell]
    ci = diff.ci95[cell]
    assert value is not None and ci is not None
    flags = []
    for direction, outside, ci_out, prob in (
        ("high", value > hi, ci[0] > hi, ev.beyond["percent", cell, "high"] if ev else None),
        ("low", value < lo, ci[1] < lo, ev.beyond["percent", cell, "low"] if ev else None),
    ):
        g = _graded(outside, ci_out, prob)
        if g is None:
            continue
        term = _TERMS[(cell, direction)]
        code = "LEFT_SHIFT" if (cell, direction) == ("ig", "high") else f"{cell.upper()}_PCT_{direction.upper()}"
        extra: dict[str, Any] = {}
        how = ""
        if ev is not None:
            cv, (clo, chi) = ev.percent[cell], ev.ci95[cell]
            extra = {"corrected_value": round(cv, 2), "corrected_ci95": [round(clo, 2), round(chi, 2)],
                     "probability": round(float(prob), 3)}  # fmt: skip
            how = f"; corrected for the model's confusion {cv:.1f} % ({clo:.1f}-{chi:.1f}), P = {prob:.2f}"
        message = (
            f"{g}: {DISPLAY_NAMES[cell]} {value:.1f} % (95% CI {ci[0]:.1f}-{ci[1]:.1f}) {direction} "
            f"vs reference {lo:g}-{hi:g} %" + (f" ({term})" if term else "") + how
        )
        flags.append(
            _flag(cell, direction, code, round(value, 2), (lo, hi), ci_out, message, kind="percent", grade=g, **extra)
        )
    return flags


def _absolute_flags(diff: Differential, ref: ReferenceIntervals, ev: Evidence | None) -> list[dict[str, Any]]:
    """An absolute limit is a limit on the share, given the analyser's WBC count: decided on the corrected
    share like the percentages (without a correction: "possible", the raw share)."""
    flags: list[dict[str, Any]] = []
    if diff.absolute is None:
        return flags
    for cell, (lo, hi) in ref.absolute.items():
        value = diff.absolute[cell]
        for direction, outside in (("high", value > hi), ("low", value < lo)):
            prob = ev.beyond["absolute", cell, direction] if ev else None
            g = _graded(outside, False, prob) if prob is not None else ("possible" if outside else None)
            if g is None:
                continue
            how = "" if prob is None else f"; corrected for the model's confusion: P = {prob:.2f}"
            extra = {} if prob is None else {"probability": round(float(prob), 3)}
            message = (
                f"{g}: {DISPLAY_NAMES[cell]} {value:.2f} x10^9/L {direction} vs reference {lo:g}-{hi:g} x10^9/L{how}"
            )
            code = f"{cell.upper()}_ABS_{direction.upper()}"
            flags.append(
                _flag(
                    cell, direction, code, round(value, 3), (lo, hi), None, message, kind="absolute", grade=g, **extra
                )
            )
    return flags


def _nrbc_flags(diff: Differential, ref: ReferenceIntervals, ev: Evidence | None) -> list[dict[str, Any]]:
    nrbc = diff.nrbc_per_100_wbc
    limit = ref.nrbc_max_per_100_wbc
    if nrbc is None:
        return []
    prob = ev.beyond["nrbc", "erythroblast", "high"] if ev else None
    det = ev.nrbc if ev else None
    # beyond the limit of blank too: more erythroblast calls than misclassification explains
    g = _graded(nrbc > limit and (det is None or det.detected), False, prob)
    if g is None:
        return []
    extra: dict[str, Any] = {}
    how = ""
    if ev is not None and det is not None:
        cv = ev.nrbc_per_100_wbc
        extra = {"corrected_value": round(cv, 2), "probability": round(float(prob), 3),
                 "min_calls": det.min_calls, "expected_false_calls": round(det.expected_false, 2)}  # fmt: skip
        how = (
            f"; corrected for the model's confusion {cv:.1f} per 100 WBC, P = {prob:.2f}; "
            f"flagged from {det.min_calls} calls in a sample of this size (misclassification alone: "
            f"up to {det.expected_false:.2f} expected)"
        )
    message = f"{g}: {diff.counts['erythroblast']} NRBC seen ({nrbc:.1f} per 100 WBC){how}"
    return [
        _flag(
            "erythroblast",
            "high",
            "NRBC_PRESENT",
            round(nrbc, 2),
            (0.0, limit),
            None,
            message,
            kind="nrbc",
            grade=g,
            **extra,
        )
    ]


def interval_flags(
    diff: Differential, ref: ReferenceIntervals, corrected: Corrected | None = None
) -> list[dict[str, Any]]:
    """One flag for every percentage, absolute count and NRBC value outside its interval (see module doc)."""
    return _interval_flags(diff, ref, Evidence.of(diff, ref, corrected))


def _interval_flags(diff: Differential, ref: ReferenceIntervals, ev: Evidence | None) -> list[dict[str, Any]]:
    if diff.wbc_total == 0:
        return []
    flags = [f for cell in WBC_CLASSES for f in _percent_flags(diff, ref, ev, cell)]
    return flags + _absolute_flags(diff, ref, ev) + _nrbc_flags(diff, ref, ev)


def wbc_count_flags(wbc_total: int, min_wbc: int) -> list[dict[str, Any]]:
    """NO_WBC / LOW_WBC_COUNT: too few white cells for a differential to act on (also recomputed for a
    final report from its verified classes)."""
    if wbc_total == 0:
        return [sample_flag("NO_WBC", "no white cells were counted: no differential can be given", 0)]
    if wbc_total < min_wbc:
        return [
            sample_flag(
                "LOW_WBC_COUNT",
                f"only {wbc_total} WBC counted (< {min_wbc}): confidence intervals are wide",
                wbc_total,
            )
        ]
    return []


def sample_flags(
    diff: Differential,
    settings: Settings,
    *,
    n_rejected: int,
    metadata_errors: list[str],
    age_group: str | None = None,
) -> list[dict[str, Any]]:
    """Sample-level warnings (cell = None) that qualify the whole result."""
    flags = []
    ref = settings.reference
    if age_group and ref.age_groups and age_group.lower() not in ref.age_groups:
        flags.append(
            sample_flag(
                "REFERENCE_AGE_MISMATCH",
                f"patient age group {age_group!r} is not covered by the reference intervals {ref.name!r} "
                f"({ref.population or ', '.join(ref.age_groups)}): high/low flags may not apply; configure "
                "intervals for this age group",
            )
        )
    flags += wbc_count_flags(diff.wbc_total, settings.min_wbc)
    if diff.n_cells and diff.review_share > settings.max_review_share:
        flags.append(
            sample_flag(
                "REVIEW_SHARE_HIGH",
                f"{diff.n_review} of {diff.n_cells} cells ({100 * diff.review_share:.1f} %) are below the "
                f"confidence threshold and marked for review (limit {100 * settings.max_review_share:g} %)",
                round(100 * diff.review_share, 2),
            )
        )
    if n_rejected:
        flags.append(
            sample_flag("REJECTED_FILES", f"{n_rejected} file(s) could not be classified; see Rejected", n_rejected)
        )
    if metadata_errors:
        flags.append(sample_flag("METADATA_INVALID", "sample.json: " + "; ".join(metadata_errors)))
    return flags

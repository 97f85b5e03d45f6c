"""The differential corrected for the model's measured confusion, and the graded flags decided on it."""

from __future__ import annotations

import numpy as np
import pytest
from openpyxl import load_workbook

from wbcproc.aggregate import differential
from wbcproc.classes import CLASSES
from wbcproc.config import load_settings
from wbcproc.correction import confusion_probabilities, correct, unmix
from wbcproc.flags import interval_flags

K = len(CLASSES)
NEUT, IG = CLASSES.index("neutrophil"), CLASSES.index("ig")


def leaky_confusion(leak: float = 0.02, n_per_class: int = 300) -> np.ndarray:
    """Validation-like counts: every class right, except that ``leak`` of neutrophils are called IG."""
    cm = np.eye(K) * n_per_class
    cm[NEUT, IG] = round(leak * n_per_class)
    cm[NEUT, NEUT] -= cm[NEUT, IG]
    return cm


def test_unmix_recovers_a_known_composition():
    c = confusion_probabilities(leaky_confusion(0.05), prior=0.0)
    p = np.array([0.6, 0.25, 0.06, 0.03, 0.01, 0.0, 0.0, 0.05])
    called = 10_000 * (p @ c)  # what the model would call, in expectation
    np.testing.assert_allclose(unmix(called, c), p, atol=2e-3)
    assert called[IG] > 0 and unmix(called, c)[IG] < 2e-3  # the IG "cells" were leaked neutrophils


def test_unmix_is_the_identity_for_a_perfect_model():
    called = np.array([50, 30, 5, 4, 1, 2, 0, 8], dtype=float)
    np.testing.assert_allclose(unmix(called, np.eye(K)), called / called.sum(), atol=1e-9)


def _counts(neut: int, ig: int) -> dict[str, int]:
    return {"neutrophil": neut, "lymphocyte": 30, "monocyte": 5, "eosinophil": 3, "basophil": 1, "ig": ig}


@pytest.mark.parametrize(("ig_calls", "grade"), [(0, None), (1, None), (2, None), (4, "possible"), (12, "definite")])
def test_left_shift_is_graded_after_the_leak_is_taken_out(ig_calls, grade):
    """60 neutrophils leak about one IG call; one or two IG calls are no left shift, a dozen is a definite one."""
    ref = load_settings().reference
    counts = _counts(61 - ig_calls, ig_calls)
    diff = differential([c for c, k in counts.items() for _ in range(k)])
    flags = interval_flags(diff, ref, correct(diff.counts, leaky_confusion(0.02)))
    shift = [f for f in flags if f["code"] == "LEFT_SHIFT"]
    assert [f["grade"] for f in shift] == ([grade] if grade else [])
    if grade:
        f = shift[0]
        assert f["kind"] == "percent" and f["corrected_value"] < f["value"] and 0.5 <= f["probability"] <= 1
        assert grade in f["message"] and "corrected for the model's confusion" in f["message"]
    # the raw rule (no confusion matrix) flags anything above 1 %: a false left shift on a normal slide
    raw = [f for f in interval_flags(diff, ref) if f["code"] == "LEFT_SHIFT"]
    assert bool(raw) == (ig_calls >= 2)


def test_correction_is_deterministic_and_its_interval_holds_the_estimate():
    a = correct(_counts(57, 4), leaky_confusion())
    b = correct(_counts(57, 4), leaky_confusion())
    assert a.percent == b.percent and a.ci95 == b.ci95
    for c, v in a.percent.items():
        lo, hi = a.ci95[c]
        assert lo - 1e-9 <= v <= hi + 1e-9, c
    assert correct({"platelet": 5}, leaky_confusion()) is None  # no white cell: nothing to correct


def test_a_malformed_confusion_matrix_is_refused():
    with pytest.raises(ValueError, match=r"shape \(3, 3\); expected \(8, 8\)"):
        correct(_counts(60, 1), np.eye(3))


def test_flag_drivers_are_marked_and_listed_first(tmp_path, sample, tiny_model):
    """Every cell of a class behind a raised high flag is a flag driver: marked for review on the Cells
    sheet whatever its confidence, and listed before the others."""
    import json

    from wbcproc.pipeline import process_sample

    paths = process_sample(sample, tmp_path / "out", model=tiny_model)
    r = json.loads(paths["json"].read_text())
    from wbcproc.flags import ONE_BY_ONE

    high = {f["cell"] for f in r["flags"] if f["direction"] == "high" and f["kind"] in ("percent", "nrbc")}
    high |= {w["cell"] for w in r["withheld_flags"] if w["direction"] == "high"}
    assert high & ONE_BY_ONE, "the random tiny model should raise a high flag on a rare class on the fixture"
    assert set(r["flag_drivers"]) == high & ONE_BY_ONE
    drivers = [c["file"] for c in r["cells"] if c["flag_driver"]]
    assert drivers and all(c["flag_driver"] == (c["class"] in high & ONE_BY_ONE) for c in r["cells"])
    low = [c["file"] for c in r["cells"] if c["review"] and not c["flag_driver"]]
    assert r["cells_for_review"] == len(drivers) + len(low)
    wb = load_workbook(paths["xlsx"])
    ws = wb["Cells"]
    rows = [(ws.cell(row=i, column=1).value, ws.cell(row=i, column=7).value) for i in range(2, ws.max_row + 1)]
    assert [f for f, _ in rows[: len(drivers)]] == drivers
    assert all(mark == "REVIEW (flag)" for _, mark in rows[: len(drivers)])
    assert [f for f, _ in rows[len(drivers) : len(drivers) + len(low)]] == low  # low-confidence cells next
    assert sum(1 for _, mark in rows if mark) == r["cells_for_review"]
    summary = {row[0].value: row[1].value for row in wb["Summary"].iter_rows(min_row=1, max_col=2)}
    assert summary["Marked for review"].startswith(f"{r['cells_for_review']} ({len(drivers)} behind a flag, ")


def test_a_high_share_of_a_common_class_is_not_reviewed_cell_by_cell():
    """An 83 % neutrophil slide: NEUTROPHIL_PCT_HIGH is raised but no neutrophil becomes a flag driver (the
    class is checked as a whole); a left shift on the same slide makes its 3 IG cells drivers."""
    from wbcproc.flags import decide_flags

    ref = load_settings().reference
    labels = ["neutrophil"] * 83 + ["lymphocyte"] * 10 + ["monocyte"] * 4 + ["ig"] * 3
    decision = decide_flags(differential(labels), ref)
    raised = {(f["cell"], f["direction"]) for f in decision.flags}
    assert ("neutrophil", "high") in raised and ("ig", "high") in raised
    assert decision.drivers == {"ig"}


def test_clopper_pearson_upper_bound_matches_known_values():
    from wbcproc.correction import binomial_upper, poisson_tail

    assert binomial_upper(0, 1114) == pytest.approx(1 - 0.05 ** (1 / 1114), rel=1e-6)  # "rule of three"
    assert binomial_upper(5, 10) == pytest.approx(0.7779, abs=1e-3)  # scipy beta.ppf(0.95, 6, 5)
    assert binomial_upper(10, 10) == 1.0
    assert poisson_tail(0, 3.0) == 1.0
    assert poisson_tail(2, 0.5) == pytest.approx(1 - np.exp(-0.5) * 1.5)


def _with_nrbc(n_wbc: int, nrbc: int) -> dict[str, int]:
    neut = round(0.6 * n_wbc)
    lymph = n_wbc - neut - round(0.1 * n_wbc)
    return {"neutrophil": neut, "lymphocyte": lymph, "monocyte": round(0.1 * n_wbc), "erythroblast": nrbc}


@pytest.mark.parametrize(
    ("n_wbc", "nrbc", "flagged"), [(100, 1, False), (100, 2, True), (400, 3, False), (400, 4, True)]
)
def test_nrbc_present_needs_more_calls_than_misclassification_explains(n_wbc, nrbc, flagged):
    """Validation saw no false erythroblast call in ~1,100 cells: the upper bound of that rate (0.27 %)
    makes 0.27 false calls expected in 100 cells and 1.1 in 400, so one call in 100 (or three in 400) is
    within what misclassification gives 5 % of NRBC-free samples, and two (four) are not."""
    cm = np.eye(K) * 140  # 8 x 140 validation cells, none wrongly called anything
    counts = _with_nrbc(n_wbc, nrbc)
    diff = differential([c for c, k in counts.items() for _ in range(k)])
    cor = correct(diff.counts, cm)
    nrbc_flags = [f for f in interval_flags(diff, load_settings().reference, cor) if f["code"] == "NRBC_PRESENT"]
    assert bool(nrbc_flags) == flagged
    assert [f for f in interval_flags(diff, load_settings().reference) if f["code"] == "NRBC_PRESENT"]  # raw rule
    if flagged:
        f = nrbc_flags[0]
        assert f["min_calls"] == nrbc
        assert f["expected_false_calls"] == pytest.approx(round((1 - 0.05 ** (1 / 980)) * n_wbc, 2))
        assert f"flagged from {nrbc} calls" in f["message"]


def test_a_withheld_left_shift_is_named_and_its_cells_are_marked_for_verification():
    """Two IG calls among 61 neutrophils: the correction withholds the flag (leak explains it), but the
    report says so and the IG cells are flag drivers - verification confirms or dismisses them."""
    from wbcproc.flags import flag_drivers, withheld_flags

    ref = load_settings().reference
    counts = _counts(59, 2)
    diff = differential([c for c, k in counts.items() for _ in range(k)])
    cor = correct(diff.counts, leaky_confusion(0.02))
    flags = interval_flags(diff, ref, cor)
    assert not [f for f in flags if f["code"] == "LEFT_SHIFT"]
    held = withheld_flags(diff, ref, cor, flags)
    assert [(w["cell"], w["direction"]) for w in held] == [("ig", "high")]
    assert held[0]["probability"] < 0.5 and "flag withheld - verify the marked cells" in held[0]["message"]
    assert "100 white cells counted: a count of 200 or more narrows it" in held[0]["message"]
    assert "ig" in flag_drivers(flags, held)
    doubled = differential([c for c, k in counts.items() for _ in range(2 * k)])  # 200 cells, same mix
    cor2 = correct(doubled.counts, leaky_confusion(0.02))
    held2 = withheld_flags(doubled, ref, cor2, interval_flags(doubled, ref, cor2))
    assert [w["cell"] for w in held2] == ["ig"] and held2[0]["message"].endswith("verify the marked cells")
    assert (
        withheld_flags(diff, ref, None, interval_flags(diff, ref)) == []
    )  # no correction, nothing withheld: the raw rule flags it


def test_preliminary_and_final_flags_are_decided_by_one_function():
    """``decide_flags`` orders the domain guard's flag first, the interval flags next, the sample flags last;
    with the model's confusion it withholds the leak-explained left shift (its IG cells still drive review),
    on the verified counts (no correction) the same two IG cells raise the flag itself."""
    from wbcproc.flags import decide_flags, sample_flag

    ref = load_settings().reference
    counts = _counts(59, 2)
    diff = differential([c for c, k in counts.items() for _ in range(k)])
    domain = sample_flag("DOMAIN_SHIFT", "images unlike the training data")
    low = sample_flag("LOW_WBC_COUNT", "fewer white cells than asked")
    prelim = decide_flags(diff, ref, correct(diff.counts, leaky_confusion(0.02)), sample=[low], first=[domain])
    assert prelim.flags[0] is domain and prelim.flags[-1] is low
    assert "LEFT_SHIFT" not in {f["code"] for f in prelim.flags}
    assert [w["cell"] for w in prelim.withheld] == ["ig"] and "ig" in prelim.drivers
    final = decide_flags(diff, ref, sample=[low])
    assert final.withheld == [] and "LEFT_SHIFT" in {f["code"] for f in final.flags} and "ig" in final.drivers
    assert final.flags[-1] is low

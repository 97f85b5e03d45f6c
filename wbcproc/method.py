"""The report's method paragraph: how the cells were read and counted, by which model, and what the report
is (preliminary until verified, or final).  Written from the report's own fields, so the final report's
method is made the same way as the preliminary one's, not cut out of it."""

from __future__ import annotations

from typing import Any

PRELIMINARY = (
    " This report is preliminary until a qualified person verifies it (wbc verify): the final report is "
    "recomputed from the verified classes."
)
FINAL = (
    " Final report: every cell's class as verified by the signing person (cells without a reviewed class keep "
    "the model's class and were accepted on signing); the differential, intervals and flags are recomputed "
    "from the verified classes, flags on the verified counts without the correction for the model's confusion."
)


def method_text(model: dict[str, Any], routing: dict[str, Any] | None, *, final: bool = False) -> str:
    """The method paragraph for a report read by ``model`` (its ``name`` and ``version``), routed as
    ``routing`` says (None: not routed); ``final`` for the report recomputed from the verified classes."""
    return (
        "Each cell image is decoded with OpenCV, prepared as the model's sidecar prescribes and classified "
        f"by {model['name']} {model['version']} (ONNX Runtime); single-cell images are framed at the sample's "
        "median red-cell diameter where it can be measured (one slide, one magnification). Percentages are of "
        "the WBC total (neutrophils, lymphocytes, monocytes, eosinophils, basophils, immature granulocytes); "
        "NRBC per 100 WBC; 95% confidence intervals are exact binomial (Clopper-Pearson). Cells below the "
        "review threshold are counted with the model's class and marked REVIEW."
        + _routing(routing)
        + (FINAL if final else PRELIMINARY)
    )


def _routing(routing: dict[str, Any] | None) -> str:
    if routing is None:
        return ""
    routed = routing["routed_model"]
    return (
        f" The model in use, {routed['name']} {routed['version']}, is a laboratory model routed with its parent: "
        f"{routing['why']}, so this slide was read by {routing['read_by']['name']} {routing['read_by']['version']}."
    )

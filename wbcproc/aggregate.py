"""Per-cell results -> the sample's differential (counts, percentages, exact CIs, absolute counts).

Clinical conventions: the WBC denominator is neutrophils + lymphocytes + monocytes + eosinophils +
basophils + immature granulocytes.  NRBC (erythroblasts) are reported per 100 WBC, platelets as the
number seen; neither is part of the denominator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from wbcproc.classes import CLASSES, WBC_CLASSES
from wbcproc.stats import clopper_pearson


@dataclass(frozen=True)
class CellResult:
    file: str
    label: str
    confidence: float
    runner_up: str
    runner_up_confidence: float
    review: bool
    notes: tuple[str, ...] = ()
    box: tuple[int, int, int, int] | None = None  # for cells found in a field image
    field: str | None = None  # the field image's file name

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("label")
        d["notes"] = list(self.notes)
        d["box"] = None if self.box is None else list(self.box)
        return d


@dataclass(frozen=True)
class Differential:
    counts: dict[str, int]
    wbc_total: int
    percent: dict[str, float | None]
    ci95: dict[str, tuple[float, float] | None]
    absolute: dict[str, float] | None
    nrbc_per_100_wbc: float | None
    platelets_seen: int
    n_cells: int
    n_review: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def review_share(self) -> float:
        return self.n_review / self.n_cells if self.n_cells else 0.0

    def report_fields(self) -> dict[str, Any]:
        """The differential as a JSON report carries it (preliminary and final alike), rounded for reading."""
        return {
            "counts": {c: self.counts[c] for c in CLASSES},
            "wbc_total": self.wbc_total,
            "percent": {c: _r(self.percent[c]) for c in WBC_CLASSES},
            "ci95": {c: (None if self.ci95[c] is None else [_r(v) for v in self.ci95[c]]) for c in WBC_CLASSES},
            "absolute": None if self.absolute is None else {c: round(v, 4) for c, v in self.absolute.items()},
            "absolute_unit": "10*9/L",
            "nrbc_per_100_wbc": _r(self.nrbc_per_100_wbc),
            "platelets_seen": self.platelets_seen,
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def differential(labels: Iterable[str], reviews: Iterable[bool] = (), wbc_count: float | None = None) -> Differential:
    """Count labels and derive the differential.  Percentages are None when no WBC were counted."""
    counts = dict.fromkeys(CLASSES, 0)
    n_cells = 0
    for label in labels:
        if label not in counts:
            raise ValueError(f"unknown class {label!r}; expected one of {list(CLASSES)}")
        counts[label] += 1
        n_cells += 1
    n_review = sum(1 for r in reviews if r)
    total = sum(counts[c] for c in WBC_CLASSES)
    percent: dict[str, float | None] = {}
    ci95: dict[str, tuple[float, float] | None] = {}
    for c in WBC_CLASSES:
        if total:
            percent[c] = 100.0 * counts[c] / total
            lo, hi = clopper_pearson(counts[c], total)
            ci95[c] = (100.0 * lo, 100.0 * hi)
        else:
            percent[c] = None
            ci95[c] = None
    absolute = None
    if wbc_count is not None and total:
        absolute = {c: wbc_count * counts[c] / total for c in WBC_CLASSES}
    nrbc = 100.0 * counts["erythroblast"] / total if total else None
    return Differential(
        counts=counts,
        wbc_total=total,
        percent=percent,
        ci95=ci95,
        absolute=absolute,
        nrbc_per_100_wbc=nrbc,
        platelets_seen=counts["platelet"],
        n_cells=n_cells,
        n_review=n_review,
        extra={} if wbc_count is None else {"wbc_count": float(wbc_count)},
    )

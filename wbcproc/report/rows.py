"""The result rows every writer shows: one per percentage, the NRBC ratio and each absolute count.

Why one list: the Excel Summary sheet, the FHIR Observations, the HL7 OBX segments and the Prefect UI
table each used to walk the report's dicts on their own (and decide on their own which flag belongs to
which row).  ``differential_rows`` is that walk, once: value, count, CI, reference interval, LOINC code,
UCUM unit and the flag raised on the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wbcproc.classes import LOINC_ABSOLUTE, LOINC_PERCENT, WBC_CLASSES

UNITS = {"percent": "%", "nrbc": "/100{WBCs}", "absolute": "10*9/L"}  # UCUM


@dataclass(frozen=True)
class ResultRow:
    cell: str  # canonical class ("erythroblast" for the NRBC ratio)
    kind: str  # "percent" | "nrbc" | "absolute" - as a flag's ``kind``
    loinc: tuple[str, str]
    value: float | None
    count: int | None  # cells counted (None for absolute counts)
    ci95: list[float] | None
    interval: tuple[float, float] | None  # reference (low, high); NRBC: (0, the laboratory's maximum)
    flag: dict[str, Any] | None  # the flag raised on this row, if any

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    @property
    def interpretation(self) -> str:
        """H / L / N, as FHIR and HL7 carry it."""
        if self.flag is None:
            return "N"
        return "H" if self.flag["direction"] == "high" else "L"


def differential_rows(r: dict[str, Any]) -> list[ResultRow]:
    """Six percentages, NRBC per 100 WBC, and the absolute counts when the analyser WBC count is known."""
    ref = r["config"]["reference_intervals"]
    flags = {(f["cell"], f["kind"]): f for f in r["flags"] if f["cell"]}
    rows = [
        ResultRow(
            cell=c,
            kind="percent",
            loinc=LOINC_PERCENT[c],
            value=r["percent"][c],
            count=r["counts"][c],
            ci95=r["ci95"][c],
            interval=tuple(ref["percent"][c]),
            flag=flags.get((c, "percent")),
        )
        for c in WBC_CLASSES
    ]
    rows.append(
        ResultRow(
            cell="erythroblast",
            kind="nrbc",
            loinc=LOINC_PERCENT["erythroblast"],
            value=r["nrbc_per_100_wbc"],
            count=r["counts"]["erythroblast"],
            ci95=None,
            interval=(0.0, float(ref["nrbc_max_per_100_wbc"])),
            flag=flags.get(("erythroblast", "nrbc")),
        )
    )
    if r["absolute"] is not None:
        for c in WBC_CLASSES:
            iv = ref["absolute"].get(c)
            rows.append(
                ResultRow(
                    cell=c,
                    kind="absolute",
                    loinc=LOINC_ABSOLUTE[c],
                    value=r["absolute"][c],
                    count=None,
                    ci95=None,
                    interval=None if iv is None else tuple(iv),
                    flag=flags.get((c, "absolute")),
                )
            )
    return rows

"""Canonical cell classes and their clinical codes: the one spelling used in files, JSON and reports."""

from __future__ import annotations

from typing import Final

#: All classes a model must be able to output (order here is the report order, not the model's).
CLASSES: Final[tuple[str, ...]] = (
    "neutrophil",
    "lymphocyte",
    "monocyte",
    "eosinophil",
    "basophil",
    "ig",
    "erythroblast",
    "platelet",
)

#: The six classes that make up the WBC denominator of the differential.  NRBC (erythroblasts) are
#: reported per 100 WBC and platelets as a count seen: neither belongs in the denominator.
WBC_CLASSES: Final[tuple[str, ...]] = CLASSES[:6]

DISPLAY_NAMES: Final[dict[str, str]] = {
    "neutrophil": "Neutrophils",
    "lymphocyte": "Lymphocytes",
    "monocyte": "Monocytes",
    "eosinophil": "Eosinophils",
    "basophil": "Basophils",
    "ig": "Immature granulocytes",
    "erythroblast": "NRBC (erythroblasts)",
    "platelet": "Platelets",
}

#: LOINC codes for the percentage (or NRBC ratio) results, and their displays.
LOINC_PERCENT: Final[dict[str, tuple[str, str]]] = {
    "neutrophil": ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
    "lymphocyte": ("736-9", "Lymphocytes/100 leukocytes in Blood by Automated count"),
    "monocyte": ("5905-5", "Monocytes/100 leukocytes in Blood by Automated count"),
    "eosinophil": ("713-8", "Eosinophils/100 leukocytes in Blood by Automated count"),
    "basophil": ("706-2", "Basophils/100 leukocytes in Blood by Automated count"),
    "ig": ("71695-1", "Immature granulocytes/100 leukocytes in Blood by Automated count"),
    "erythroblast": ("58413-6", "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count"),
}

#: LOINC codes for absolute counts (x10^9/L), used when the analyser WBC count is known.
LOINC_ABSOLUTE: Final[dict[str, tuple[str, str]]] = {
    "neutrophil": ("751-8", "Neutrophils [#/volume] in Blood by Automated count"),
    "lymphocyte": ("731-0", "Lymphocytes [#/volume] in Blood by Automated count"),
    "monocyte": ("742-7", "Monocytes [#/volume] in Blood by Automated count"),
    "eosinophil": ("711-2", "Eosinophils [#/volume] in Blood by Automated count"),
    "basophil": ("704-7", "Basophils [#/volume] in Blood by Automated count"),
    "ig": ("51584-1", "Immature granulocytes [#/volume] in Blood by Automated count"),
}


def check_class_list(classes: list[str] | tuple[str, ...], *, where: str) -> None:
    """Raise ValueError unless ``classes`` is a permutation of the canonical class names."""
    unknown = [c for c in classes if c not in CLASSES]
    dupes = sorted({c for c in classes if list(classes).count(c) > 1})
    missing = [c for c in CLASSES if c not in classes]
    if unknown or dupes or missing:
        parts = []
        if unknown:
            parts.append(f"unknown {unknown}")
        if dupes:
            parts.append(f"duplicated {dupes}")
        if missing:
            parts.append(f"missing {missing}")
        raise ValueError(
            f"{where}: class list {list(classes)} is not the canonical set ({'; '.join(parts)}); "
            f"expected each of {list(CLASSES)} exactly once"
        )

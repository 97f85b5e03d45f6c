"""Flags as a screening test: how often each flag is raised on samples whose true value is normal, and how
often it is found when the value is abnormal.

    python benchmarks/flags.py --model models/model.onnx --data ../shared/data/pbc --split test \\
        --sizes 100 200 400 --normal 2000 --per-severity 300

1. Every cell of the split (the PBC *test* split: never trained on) is classified once through the
   product's pipeline, as one sample folder (``wbc process``'s own code: sample ruler, preprocessing, ONNX
   Runtime).  Each cell keeps the class the model called.
2. Synthetic patients: a normal adult profile (every white-cell class inside its reference interval;
   immature granulocytes 0-1 %, no NRBC), or one abnormality at graded severity (IG, eosinophils,
   basophils, monocytes high; lymphocytes high/low; neutrophils high/low; NRBC per 100 WBC), plus a few
   platelets.  A patient's cells are drawn from the classified pool of each *true* class (with
   replacement); the sample's true values are those of the drawn cells.
3. The called labels go through the product's flag code twice: ``raw`` (the count as called, the plain rule:
   any value beyond its limit) and the shipped rule (``wbcproc.flags.interval_flags``
   with the differential corrected for the model's confusion, graded definite/possible).
Printed per sample size: for each flag, the false-positive rate among samples whose true value is inside
the interval, and the sensitivity by true value; and the mean absolute error of the reported percentages,
raw and corrected.  ``--markdown`` writes the tables for README/docs.

``--band-share F``: the share of band neutrophils among a patient's neutrophils (PBC's ``BNE_`` files; by
default they are drawn as the split holds them - about half, far more than in a healthy adult, where bands
are a few per cent of the white cells).  The model's IG calls among neutrophils are mostly band cells
(test split through the pipeline, model 1.2.0: 3 of 168 bands, 1 of 175 others; the script prints them),
so this sets how often a normal sample shows a false IG call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from _sets import classify_as_sample, load_set

from wbcproc.aggregate import differential
from wbcproc.classes import CLASSES, WBC_CLASSES
from wbcproc.config import load_settings
from wbcproc.correction import correct
from wbcproc.flags import interval_flags
from wbcproc.model import load_classifier

# normal adult profile: a range inside each reference interval (percent of WBC)
NORMAL = {
    "neutrophil": (45, 70),
    "lymphocyte": (22, 40),
    "monocyte": (3, 8),
    "eosinophil": (0.5, 4),
    "basophil": (0, 1.5),
    "ig": (0, 1),
}
# abnormalities at graded severity: (class, direction, values); NRBC in cells per 100 WBC
SEVERITIES = [
    ("ig", "high", (2, 3, 5, 10)),
    ("eosinophil", "high", (8, 12, 20)),
    ("basophil", "high", (3, 5, 8)),
    ("monocyte", "high", (13, 16, 20)),
    ("lymphocyte", "high", (50, 55, 65)),
    ("lymphocyte", "low", (10, 15)),
    ("neutrophil", "high", (80, 85, 90)),
    ("neutrophil", "low", (25, 30, 35)),
    ("erythroblast", "high", (1, 2, 5, 10)),
]


def profile(rng: np.random.Generator, target: tuple[str, float] | None = None) -> dict[str, float]:
    """White-cell percentages of one patient: normal, or normal with one class set to a value."""
    p = {c: rng.uniform(*NORMAL[c]) for c in WBC_CLASSES}
    if rng.random() < 0.5:
        p["ig"] = 0.0  # most healthy adults show no immature granulocyte in 100-400 cells
    if target is not None and target[0] in WBC_CLASSES:
        cls, value = target
        rest = sum(v for c, v in p.items() if c != cls)
        p = {c: (value if c == cls else v * (100 - value) / rest) for c, v in p.items()}
    total = sum(p.values())
    return {c: 100 * v / total for c, v in p.items()}


BAND, OTHER_NEUTROPHIL = "neutrophil/band", "neutrophil/other"  # sub-pools of the neutrophils (--band-share)


def draw_patient(
    rng, pools, n_wbc: int, target=None, band_share: float | None = None
) -> tuple[dict[str, int], list[str]]:
    """True counts per class and the labels the model called for the drawn cells."""
    pct = profile(rng, target)
    counts = dict(zip(WBC_CLASSES, rng.multinomial(n_wbc, [pct[c] / 100 for c in WBC_CLASSES]), strict=True))
    nrbc = target[1] if target is not None and target[0] == "erythroblast" else 0
    counts["erythroblast"] = round(nrbc * n_wbc / 100)
    counts["platelet"] = int(rng.poisson(5))
    called: list[str] = []
    for c, k in counts.items():
        parts = [(c, k)]
        if c == "neutrophil" and band_share is not None:
            bands = int(rng.binomial(k, band_share))
            parts = [(BAND, bands), (OTHER_NEUTROPHIL, k - bands)]
        for pool, m in parts:
            if m:
                called.extend(pools[pool][i] for i in rng.integers(0, len(pools[pool]), m))
    return counts, called


def truth(counts: dict[str, int], ref) -> dict[tuple[str, str], tuple[bool, float]]:
    """(cell, direction) -> (beyond the limit?, true value) for the sample's own cells."""
    wbc = sum(counts[c] for c in WBC_CLASSES)
    out = {}
    for c in WBC_CLASSES:
        v = 100 * counts[c] / wbc
        lo, hi = ref.percent[c]
        out[(c, "high")] = (v > hi, v)
        out[(c, "low")] = (v < lo, v)
    v = 100 * counts["erythroblast"] / wbc
    out[("erythroblast", "high")] = (v > ref.nrbc_max_per_100_wbc, v)
    return out


def _pools(args, clf, settings) -> dict[str, list[str]]:
    """Called labels of every cell of the split, by true class (cached in ``--predictions``)."""
    if args.predictions and args.predictions.is_file():
        return json.loads(args.predictions.read_text())
    _, items = load_set(f"pbc={args.data}@{args.split}")
    t0 = time.time()
    _, got, labels = classify_as_sample(items, clf, settings, thumbnails=False)
    pools = defaultdict(list)
    for cell in got.cells:
        pools[labels[cell.file]].append(cell.label)
        if labels[cell.file] == "neutrophil":  # copied as NNNN_<original name>
            band = cell.file.split("_", 1)[-1].upper().startswith("BNE")
            pools[BAND if band else OTHER_NEUTROPHIL].append(cell.label)
    print(f"classified {len(got.cells)} cells of {args.data}@{args.split} in {time.time() - t0:.0f} s")
    if args.predictions:
        args.predictions.write_text(json.dumps(pools))
    return pools


def _simulate(rng, pools, n: int, patients, ref, confusion, band_share=None) -> tuple[dict, list[float], list[float]]:
    """(cell, direction) -> rule -> [(true beyond?, true value, grade or None)], and the percentage errors."""
    rec: dict = defaultdict(lambda: defaultdict(list))
    err_raw, err_cor = [], []
    for target, _direction in patients:
        counts, called = draw_patient(rng, pools, n, target, band_share)
        tru = truth(counts, ref)
        diff = differential(called)
        cor = correct(diff.counts, confusion)
        wbc = sum(counts[c] for c in WBC_CLASSES)
        for c in WBC_CLASSES:
            true_pct = 100 * counts[c] / wbc
            err_raw.append(abs(diff.percent[c] - true_pct))
            err_cor.append(abs(cor.percent[c] - true_pct))
        for rule, flags in (("raw", interval_flags(diff, ref)), ("shipped", interval_flags(diff, ref, cor))):
            got = {(f["cell"], f["direction"]): f["grade"] for f in flags if f["kind"] in ("percent", "nrbc")}
            for key, (beyond, value) in tru.items():
                rec[key][rule].append((beyond, value, got.get(key)))
    return rec, err_raw, err_cor


def _sensitivities(raw, shp, inside, direction: str, sev) -> tuple[list[str], list[str]]:
    values = raw[:, 1].astype(float)
    sens, found = [], []
    edges = [*sev, np.inf] if direction == "high" else [-np.inf, *sev]
    for lo_e, hi_e in pairwise(edges):
        sel = (~inside) & (values >= lo_e) & (values < hi_e) if direction == "high" else (
            (~inside) & (values > lo_e) & (values <= hi_e))  # fmt: skip
        if sel.sum() < 20:
            continue
        s_raw = np.mean([g is not None for g in raw[sel, 2]])
        s_any = np.mean([g is not None for g in shp[sel, 2]])
        s_def = np.mean([g == "definite" for g in shp[sel, 2]])
        label = f">= {lo_e:g}" if direction == "high" else f"<= {hi_e:g}"
        sens.append(f"{label}: {s_raw:.2f} / {s_any:.2f} / {s_def:.2f} (n {sel.sum()})")
        found.append(f"{label}: {s_any:.2f}")
    return sens, found


def _table(rec: dict, n: int, perf: dict) -> list[str]:
    """The markdown table of one sample size (printed as it goes); per-flag summaries into ``perf``."""
    head = (
        "| flag | in-interval samples | false + raw rule | false + shipped (any) | false + definite "
        "| sensitivity raw / shipped (any) / definite, by true value |"
    )
    lines = [f"**{n} cells per sample**", "", head, "|---|---|---|---|---|---|"]
    for (cell, direction), rules in rec.items():
        sev = next((vals for c, d, vals in SEVERITIES if c == cell and d == direction), None)
        if sev is None:
            continue
        raw, shp = np.array(rules["raw"], dtype=object), np.array(rules["shipped"], dtype=object)
        inside = ~raw[:, 0].astype(bool)
        fp_raw = np.mean([g is not None for g in raw[inside, 2]])
        fp_any = np.mean([g is not None for g in shp[inside, 2]])
        fp_def = np.mean([g == "definite" for g in shp[inside, 2]])
        sens, found = _sensitivities(raw, shp, inside, direction, sev)
        name = f"{cell} {direction}"
        row = f"| {name} | {inside.sum()} | {fp_raw:.3f} | {fp_any:.3f} | {fp_def:.3f} | {'; '.join(sens)} |"
        perf.setdefault(str(n), {})[name] = (
            f"raised on {100 * fp_any:.1f} % of samples whose true value is normal ({100 * fp_def:.1f} % "
            f"definite); found (any grade): " + "; ".join(found)
        )
        print(row)
        lines.append(row)
    return lines


def _write_sidecar(clf, args, perf: dict) -> None:
    from wbcproc.sidecar import write_sidecar

    flag_performance = {
        "source": f"benchmarks/flags.py: synthetic patients from {Path(args.data).name} {args.split} split "
        f"(never trained on), {args.normal} normal + {args.per_severity} per abnormality and severity",
        "sizes": perf,
    }
    write_sidecar(clf.info.onnx_path, clf.info.sidecar.replace(flag_performance=flag_performance))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", required=True, help="root of class folders (PBC)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--normal", type=int, default=2000, help="normal patients per size")
    ap.add_argument("--per-severity", type=int, default=300, help="patients per abnormality and severity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--predictions", type=Path, default=None, help="cache the called labels here (JSON)")
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument(
        "--band-share",
        type=float,
        default=None,
        help="share of band cells among the neutrophils (default: as the split)",
    )
    ap.add_argument(
        "--write-sidecar", action="store_true", help="store the per-flag figures in the model's sidecar (About sheet)"
    )
    args = ap.parse_args()
    print(machine())
    settings = load_settings()
    ref = settings.reference
    clf = load_classifier(args.model, settings.threads)
    if clf.info.sidecar.confusion_val is None:
        raise SystemExit(
            f"model {clf.info.onnx_path} has no validation confusion matrix (confusion_val) to correct with"
        )
    confusion = clf.info.sidecar.confusion_val.counts
    pools = _pools(args, clf, settings)
    if args.band_share is not None and not (pools.get(BAND) and pools.get(OTHER_NEUTROPHIL)):
        raise SystemExit(
            f"--band-share {args.band_share}: no band / other neutrophil pools (PBC's BNE_ file names) in "
            f"{args.predictions or args.data}: classify again without a --predictions file written before them"
        )
    acc = np.mean([lab == c for c in CLASSES for lab in pools.get(c, [])])
    if pools.get(BAND):
        print(
            f"neutrophils: {len(pools[BAND])} band cells, {pools[BAND].count('ig')} called ig; "
            f"{len(pools[OTHER_NEUTROPHIL])} others, {pools[OTHER_NEUTROPHIL].count('ig')} called ig; "
            f"drawn with band share {'as the split' if args.band_share is None else args.band_share}"
        )
    print(
        f"model {clf.info.name} {clf.info.version}: {sum(len(pools.get(c, [])) for c in CLASSES)} cells, accuracy {acc:.4f}"
    )
    rng = np.random.default_rng(args.seed)
    bands = "" if args.band_share is None else f"; band neutrophils {100 * args.band_share:g} % of the neutrophils"
    md = [f"Model {clf.info.version}; {machine()}; patients from {args.data}@{args.split}{bands}", ""]
    perf: dict[str, dict[str, str]] = {}
    for n in args.sizes:
        t0 = time.time()
        patients = [(None, None)] * args.normal
        patients += [((c, v), d) for c, d, vals in SEVERITIES for v in vals for _ in range(args.per_severity)]
        rec, err_raw, err_cor = _simulate(rng, pools, n, patients, ref, confusion, args.band_share)
        print(f"\n=== {n} WBC per sample: {len(patients)} patients ({time.time() - t0:.0f} s) ===")
        lines = _table(rec, n, perf)
        e = f"mean absolute error of the reported percentages: raw {np.mean(err_raw):.2f} pp, corrected {np.mean(err_cor):.2f} pp"
        print(e)
        md += [*lines, "", e, ""]
    if args.markdown:
        args.markdown.write_text("\n".join(md) + "\n")
    if args.write_sidecar:
        _write_sidecar(clf, args, perf)


if __name__ == "__main__":
    main()

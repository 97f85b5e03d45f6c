#!/usr/bin/env bash
# Recipes judged on a laboratory they have never seen, and trained for shipping, in one device call
# (issue: other labs).  Each recipe in $VARIANTS (default "robust:bn stain:bn", AUGMENT:NORM) runs twice,
# all at once on the GPU with the same time budget:
#   unseen  BCCD left out of training and validation (PBC only): every BCCD cell is another lab's
#   full    all training data (PBC + BCCD training crops): the candidate to ship
#
#   bash training/gpu_twins.sh CACHE OUT BUDGET_S EVAL_NAME=EVAL_CACHE...
#
# Rule (training.selection), fixed before any run: among full runs whose validation macro-F1 is within 0.015 of the best
# full run's, keep the one whose unseen twin has the highest mean accuracy over bccd_all, camera_val and
# tight_val (packed sets; the last two from PBC *validation* cells via training.simulate).
# OUT: the kept full run's weight shards + weights-index.json + train_info.json, selection.json, runs.log.
# WORK=DIR keeps every run's folder there (a later call on the same warm machine can fetch the others);
# UNSEEN_VARIANTS (default: $VARIANTS) names the recipes that also get an unseen twin;
# TWIN_SHARDS=1 writes weight shards for the unseen twins too (a start for adaptation experiments).
set -u
CACHE=$1
OUT=$2
BUDGET=$3
shift 3
PY=${PYTHON:-python3}
VARIANTS=${VARIANTS:-"robust:bn stain:bn"}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } > "$WORK/gpu.txt" 2>&1
{ lscpu | grep -i 'model name'; grep -o -w 'avx512_vnni\|avx2\|amx_int8\|avx512f' /proc/cpuinfo | sort | uniq -c; } >> "$WORK/gpu.txt" 2>&1
evals=()
for e in "$@"; do evals+=(--eval-cache "$e"); done
common=(--cache "$CACHE" --epochs 100 --patience 30 --time-budget "$BUDGET" --seed 0 --lr 2e-3 --batch-size 256
        "${evals[@]}" ${EXTRA_ARGS:-})
pids=()
twin_shards=--no-shards
[ "${TWIN_SHARDS:-0}" = 1 ] && twin_shards=
for v in $VARIANTS; do
    aug=${v%%:*}; norm=${v##*:}
    case " ${UNSEEN_VARIANTS:-$VARIANTS} " in
    *" $v "*)
        "$PY" -m training.gpu_train "${common[@]}" --augment "$aug" --norm "$norm" --exclude-train BCCD $twin_shards \
            --out "$WORK/unseen-$aug-$norm" > "$WORK/unseen-$aug-$norm.log" 2>&1 &
        pids+=($!) ;;
    esac
    "$PY" -m training.gpu_train "${common[@]}" --augment "$aug" --norm "$norm" \
        --out "$WORK/full-$aug-$norm" > "$WORK/full-$aug-$norm.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
"$PY" - "$WORK" "$OUT" $VARIANTS <<'PY'
import json, shutil, sys
from pathlib import Path
from training.selection import PROXIES, VAL_MARGIN, choose, proxy_score
work, out, variants = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]

def info(kind, v):
    p = work / f"{kind}-{v.replace(':', '-')}" / "train_info.json"
    return json.loads(p.read_text()) if p.is_file() else None

def brief(r):
    return {"best_val_macro_f1": r["best_val_macro_f1"], "best_epoch": r["best_epoch"], "epochs_run": len(r["history"]),
            "images_per_s_last": r["history"][-1]["images_per_s"], "test_torch": r["test_torch"], "eval": r.get("eval", {})}

rows = {}
for v in variants:
    full, unseen = info("full", v), info("unseen", v)
    if full is None:
        continue
    row = {"full": brief(full)}
    if unseen is not None:
        row["unseen"] = brief(unseen)
        row["unseen_proxy_score"] = proxy_score(unseen.get("eval", {}))
    rows[v] = row
if not rows:
    print("no full run finished; see runs.log")
    chosen = None
else:
    chosen = choose({v: r["full"]["best_val_macro_f1"] for v, r in rows.items()},
                    {v: r["unseen_proxy_score"] for v, r in rows.items() if "unseen_proxy_score" in r})
    for p in sorted((work / f"full-{chosen.replace(':', '-')}").iterdir()):
        shutil.copy(p, out / p.name)
sel = {"rule": f"full runs with validation macro-F1 within {VAL_MARGIN} of the best; then the highest mean accuracy "
       "of the unseen (PBC-only) twin over " + ", ".join(PROXIES), "chosen": chosen, "variants": rows}
(out / "selection.json").write_text(json.dumps(sel, indent=2) + "\n")
print("chose", chosen)
for v, r in rows.items():
    print(v, "full val", round(r["full"]["best_val_macro_f1"], 4), "test", round(r["full"]["test_torch"]["accuracy"], 4),
          {k: round(e["accuracy"], 3) for k, e in r["full"]["eval"].items()},
          "| unseen", round(r.get("unseen_proxy_score", -1), 4),
          {k: round(e["accuracy"], 3) for k, e in r.get("unseen", {}).get("eval", {}).items()})
PY
rc=$?
{
    cat "$WORK/gpu.txt"
    for f in "$WORK"/*.log; do echo "===== $(basename "$f") ====="; cat "$f"; done
} > "$OUT/runs.log"
exit $rc

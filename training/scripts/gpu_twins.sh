#!/usr/bin/env bash
# Recipes judged on a laboratory they have never seen, and trained for shipping, in one device call.
# Each recipe in $VARIANTS (default "robust:bn stain:bn", AUGMENT:NORM) runs twice,
# all at once on the GPU with the same time budget:
#   unseen  BCCD left out of training and validation (PBC only): every BCCD cell is another lab's
#   full    all training data (PBC + BCCD training crops): the candidate to ship
#
#   bash training/scripts/gpu_twins.sh CACHE OUT BUDGET_S EVAL_NAME=EVAL_CACHE...
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
        "$PY" -m training.scripts.gpu_train "${common[@]}" --augment "$aug" --norm "$norm" --exclude-train BCCD $twin_shards \
            --out "$WORK/unseen-$aug-$norm" > "$WORK/unseen-$aug-$norm.log" 2>&1 &
        pids+=($!) ;;
    esac
    "$PY" -m training.scripts.gpu_train "${common[@]}" --augment "$aug" --norm "$norm" \
        --out "$WORK/full-$aug-$norm" > "$WORK/full-$aug-$norm.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
"$PY" -m training.scripts.select_recipe twins "$WORK" "$OUT" $VARIANTS
rc=$?
{
    cat "$WORK/gpu.txt"
    for f in "$WORK"/*.log; do echo "===== $(basename "$f") ====="; cat "$f"; done
} > "$OUT/runs.log"
exit $rc

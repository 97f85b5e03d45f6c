#!/usr/bin/env bash
# Training-side ablation for the model card (issue: other labs): three variants of the shipped recipe,
# trained at once on one GPU with the same time budget, scored on the test split and on packed sets of
# other laboratories' cells (made here with training.cache.build_cache and the shipped sidecar's spec).
#
#   [EXTRA_ARGS="--device cpu"] bash training/gpu_ablation.sh CACHE OUT BUDGET_S EVAL_NAME=EVAL_CACHE...
#
#   recipe     robust augmentation, PBC + BCCD training crops (as shipped, shorter)
#   basic-aug  the basic augmentation only (rotations/flips, scale, mild colour jitter, blur)
#   no-bccd    robust augmentation, BCCD training crops left out (PBC only)
#
# OUT gets one JSON per variant (train_info with test and eval figures) and ablation.log; no weights.
set -u
CACHE=$1
OUT=$2
BUDGET=$3
shift 3
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
evals=()
for e in "$@"; do evals+=(--eval-cache "$e"); done
common=(--cache "$CACHE" --epochs 100 --patience 30 --time-budget "$BUDGET" --seed 0 --lr 2e-3 --batch-size 256
        --no-shards "${evals[@]}" ${EXTRA_ARGS:-})
"$PY" -m training.gpu_train "${common[@]}" --augment robust --out "$WORK/recipe" > "$WORK/recipe.log" 2>&1 &
p1=$!
"$PY" -m training.gpu_train "${common[@]}" --augment basic --out "$WORK/basic-aug" > "$WORK/basic-aug.log" 2>&1 &
p2=$!
"$PY" -m training.gpu_train "${common[@]}" --augment robust --exclude-train BCCD --out "$WORK/no-bccd" \
    > "$WORK/no-bccd.log" 2>&1 &
p3=$!
wait $p1 $p2 $p3
mkdir -p "$OUT"
for v in recipe basic-aug no-bccd; do
    { echo "===== $v ====="; cat "$WORK/$v.log"; } >> "$OUT/ablation.log"
    [ -f "$WORK/$v/train_info.json" ] && cp "$WORK/$v/train_info.json" "$OUT/$v.json"
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for p in sorted(out.glob("*.json")):
    d = json.loads(p.read_text())
    ev = {k: round(v["accuracy"], 4) for k, v in d.get("eval", {}).items()}
    print(p.stem, "epochs", len(d["history"]), "best", d["best_epoch"], "val_f1", round(d["best_val_macro_f1"], 4),
          "test_acc", round(d["test_torch"]["accuracy"], 4), "eval", ev)
PY

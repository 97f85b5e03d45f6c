#!/usr/bin/env bash
# The device side of the shipped model's training (see training/gpu_train.py for the whole recipe).
#
#   bash training/gpu_run.sh CACHE OUT [BUDGET_S]
#
# Trains two configurations of the same recipe at once on one GPU (an H100 is far from full with one
# ResNet50 at 128 px) and keeps the one with the better *validation* macro-F1 - the test split is not
# looked at to choose.  OUT gets that run's fp16 weight shards + train_info.json, both runs' logs and
# a selection.json: few enough files for the device tool's limit of 8.
set -u
CACHE=$1
OUT=$2
BUDGET=${3:-210}
shift 3 || shift $#
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } > "$WORK/gpu.txt" 2>&1
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" >> "$WORK/gpu.txt" 2>&1
common=(--cache "$CACHE" --epochs 60 --patience 15 --time-budget "$BUDGET" --augment robust "$@")
"$PY" -m training.gpu_train "${common[@]}" --out "$WORK/a" --seed 0 --lr 2e-3 --batch-size 256 > "$WORK/a.log" 2>&1 &
pa=$!
"$PY" -m training.gpu_train "${common[@]}" --out "$WORK/b" --seed 1 --lr 1e-3 --batch-size 128 > "$WORK/b.log" 2>&1 &
pb=$!
wait $pa; ra=$?
wait $pb; rb=$?
"$PY" - "$WORK" "$OUT" "$ra" "$rb" <<'PY'
import json, shutil, sys
from pathlib import Path
work, out, rcs = Path(sys.argv[1]), Path(sys.argv[2]), {"a": int(sys.argv[3]), "b": int(sys.argv[4])}
out.mkdir(parents=True, exist_ok=True)
runs = {}
for k in ("a", "b"):
    info = work / k / "train_info.json"
    if rcs[k] == 0 and info.is_file():
        runs[k] = json.loads(info.read_text())
with open(out / "runs.log", "w") as fh:
    fh.write((work / "gpu.txt").read_text())
    for k in ("a", "b"):
        fh.write(f"\n===== run {k} (exit {rcs[k]}) =====\n" + (work / f"{k}.log").read_text())
if not runs:
    print("both runs failed; see runs.log"); sys.exit(1)
best = max(runs, key=lambda k: runs[k]["best_val_macro_f1"])
for p in sorted((work / best).iterdir()):
    shutil.copy(p, out / p.name)
sel = {"chosen": best, "rule": "higher best validation macro-F1",
       "runs": {k: {"best_val_macro_f1": v["best_val_macro_f1"], "best_epoch": v["best_epoch"],
                    "epochs_planned": v.get("epochs_planned"), "test_torch": v.get("test_torch"),
                    "config": {c: v["config"][c] for c in ("lr", "batch_size", "seed")}} for k, v in runs.items()}}
(out / "selection.json").write_text(json.dumps(sel, indent=2) + "\n")
print(json.dumps(sel))
PY

"""Add (or refit) the validation-derived blocks of an existing model's sidecar: the model-side half of the
domain guard (``domain.uncertainty``) and the confusion counts the differential is corrected with
(``confusion_val``).

    python -m training.scripts.refresh_guard --model models/model.onnx --cache runs/pack/cache-128.npz

``wbc train`` writes it for every new model; this is for a model exported before it existed (the shipped
1.1.0).  It runs the model file itself (ONNX Runtime) on the cache's validation split, applies the
sidecar's temperature and fits ``wbcproc.domain.fit_uncertainty``; the rest of the sidecar is unchanged
and the write is atomic.
"""

from __future__ import annotations

import argparse
import json

from training.dataset import load_cache
from training.export import ort_logits
from training.run import confusion_reference, uncertainty_reference
from wbcproc.sidecar import ConfusionReference, read_sidecar, write_sidecar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cache", required=True, help="the training cache the model was trained from")
    args = ap.parse_args()
    info = read_sidecar(args.model)
    data = load_cache(args.cache)
    if (data.spec.input_size, data.spec.colour_order) != (info.preprocess.input_size, info.preprocess.colour_order):
        raise SystemExit(
            f"cache {args.cache} is {data.spec.input_size} px {data.spec.colour_order}; the model expects "
            f"{info.preprocess.input_size} px {info.preprocess.colour_order}"
        )
    val = data.subset("val")
    if info.sidecar.domain is None:
        raise SystemExit(f"{args.model}: the sidecar has no domain reference to extend")
    logits = ort_logits(args.model, val)
    uncertainty = uncertainty_reference(logits, info.temperature, "ONNX Runtime, this model file")
    confusion = confusion_reference(logits, val.labels, "ONNX Runtime, this model file")
    side = info.sidecar.replace(
        domain={**info.sidecar.domain, "uncertainty": uncertainty},
        confusion_val=ConfusionReference.from_dict(confusion),
    )
    write_sidecar(args.model, side)
    print(json.dumps({"uncertainty": uncertainty, "confusion_val": confusion}, indent=1))


if __name__ == "__main__":
    main()

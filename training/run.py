"""A training run, step by step: data -> cache -> (search) -> train -> evaluate -> export -> parity.

Each step is a plain function so that ``wbc train`` calls them in a row and the Prefect ``retrain`` flow
runs them as tasks.  Everything a run produces lands in its run directory::

    model.onnx, model.json (the sidecar the pipeline reads), metrics.json, card.md, split.csv,
    data.json, confusion.png, confusion.csv, misclassified.png, search.csv (when a search ran), cache-*.npz
"""

from __future__ import annotations

import csv
import json
import platform
import random
import shutil
import sys
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from training.cache import build_cache
from training.data import Gathered, Item, gather, write_split
from training.dataset import CachedSet, load_cache
from training.metrics import (
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    nll,
    review_threshold,
)
from training.plots import confusion_png, gallery_png
from training.recipe import SHIPPED as RECIPE
from wbcproc import __version__
from wbcproc.classes import CLASSES
from wbcproc.framing import Framing, background_colour
from wbcproc.imageio import ImageRejected, read_image
from wbcproc.preprocess import ColourNormalisation, PreprocessSpec
from wbcproc.registry import version_stamp
from wbcproc.sidecar import (
    ConfusionReference,
    InputSpec,
    OutputSpec,
    Parity,
    Quantization,
    Sidecar,
    write_sidecar,
)
from wbcproc.stats import softmax

MODEL_NAME = "wbc-resnet50"


@dataclass
class RunOptions:
    data: list[str]
    out: str
    image_size: int = 128
    resize: str = "stretch"
    val_fraction: float = 0.10
    test_fraction: float = 0.15
    version: str | None = None
    quantize: bool = False
    search_trials: int = 0
    search_epochs: int = 3
    search_sizes: tuple[int, ...] = (96, 128, 160)
    cache_quality: int = RECIPE["cache_quality"]
    cache: str | None = None  # set by run_training when it trained from a packed cache
    from_shards: str | None = None  # set when the weights came from a GPU run's shards
    parity_tol: float = 1e-2
    normalise: bool = True  # white balance + red-cell-ruler framing in the preprocessing (see wbcproc.framing)


def make_spec(
    image_size: int, resize: str = "stretch", background: tuple[float, float, float] | None = None
) -> PreprocessSpec:
    """ImageNet mean/std, RGB (torchvision's ResNet50 convention); with ``background`` (BGR of the training
    data's slide background) also white balance and red-cell-ruler framing (see ``wbcproc.framing``)."""
    if background is None:
        return PreprocessSpec(input_size=image_size, resize=resize, colour_order="RGB")  # type: ignore[arg-type]
    return PreprocessSpec(
        input_size=image_size,
        resize=resize,  # type: ignore[arg-type]
        colour_order="RGB",
        colour_normalisation=ColourNormalisation("white_balance", reference=tuple(round(v, 1) for v in background)),
        framing=Framing(),
    )


def fit_background(items: list[Item], n: int = 400) -> tuple[float, float, float]:
    """Median slide-background colour (BGR) of up to ``n`` training images, spread over the list."""
    pick = [it for it in items if it.split == "train"] or items
    pick = pick[:: max(1, len(pick) // n)][:n]
    colours = []
    for it in pick:
        try:
            colours.append(background_colour(read_image(it.path).bgr))
        except ImageRejected:
            continue
    if not colours:
        raise ValueError("no decodable training image to measure the slide background on")
    med = np.median(np.array(colours), axis=0)
    return float(med[0]), float(med[1]), float(med[2])


def prepare_data(opts: RunOptions, log=print) -> tuple[Gathered, Path, list[tuple[str, str]]]:
    run_dir = Path(opts.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    g = gather(opts.data, val_fraction=opts.val_fraction, test_fraction=opts.test_fraction)
    log(
        f"data: {len(g.items)} unique images, {len(g.skipped)} skipped, {len(g.duplicates)} duplicates dropped, "
        f"{len(g.conflicts)} with conflicting labels excluded"
    )
    write_split(g.items, run_dir / "split.csv")
    background = fit_background(g.items) if opts.normalise else None
    if background is not None:
        log(f"slide background of the training data (BGR): {[round(v, 1) for v in background]}")
    cache_path, failed = build_cache(
        g,
        make_spec(opts.image_size, opts.resize, background),
        run_dir / f"cache-{opts.image_size}.npz",
        quality=opts.cache_quality,
    )
    for f, reason in failed:
        log(f"skipped: {f}: {reason}")
    summary = g.summary()
    summary["decode_failures"] = [{"file": f, "reason": r} for f, r in failed]
    summary["roots"] = [str(Path(d).resolve()) for d in opts.data]
    summary["fractions"] = {"val": opts.val_fraction, "test": opts.test_fraction}
    (run_dir / "data.json").write_text(json.dumps(summary, indent=2) + "\n")
    return g, cache_path, failed


def search(opts: RunOptions, base, g: Gathered, log=print) -> tuple[Any, list[dict[str, Any]]]:
    """Budgeted random search on the validation split over lr, batch size, frozen stages, input size."""
    from training.loop import train_model

    rng = random.Random(base.seed)
    space = {
        "lr": [3e-4, 1e-3, 3e-3],
        "batch_size": [64, 128, 256],
        "freeze_stages": [0, 1, 2],
        "image_size": sorted({opts.image_size, *opts.search_sizes}),
    }
    rows: list[dict[str, Any]] = []
    caches: dict[int, CachedSet] = {}
    # Every trial cache is made as the final one is: the same white balance and framing (the slide
    # background prepare_data measured, read back from its cache) and the same JPEG quality, and none overwrites
    # the main cache of the same size, so the final model trains with both.
    main = load_cache(Path(opts.out) / f"cache-{opts.image_size}.npz")
    caches[opts.image_size] = main
    norm = main.spec.colour_normalisation
    background = tuple(norm.reference) if norm is not None and norm.reference is not None else None
    for trial in range(opts.search_trials):
        pick = {k: rng.choice(v) for k, v in space.items()}
        size = pick.pop("image_size")
        if size not in caches:
            p, _ = build_cache(
                g,
                make_spec(size, opts.resize, background),
                Path(opts.out) / f"cache-{size}.npz",
                quality=opts.cache_quality,
            )
            caches[size] = load_cache(p)
        cfg = replace(base, epochs=opts.search_epochs, patience=opts.search_epochs, **pick)
        data = caches[size]
        _, info = train_model(data.subset("train"), data.subset("val"), cfg, log=lambda *_: None)
        row = {
            "trial": trial + 1,
            **pick,
            "image_size": size,
            "epochs": opts.search_epochs,
            "val_macro_f1": round(info["best_val_macro_f1"], 4),
            "seconds": round(info["train_seconds"], 1),
        }
        log(f"search {row}")
        rows.append(row)
    with open(Path(opts.out) / "search.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["trial"])
        w.writeheader()
        w.writerows(rows)
    if not rows:
        return base, rows
    best = max(rows, key=lambda r: r["val_macro_f1"])
    chosen = replace(base, lr=best["lr"], batch_size=best["batch_size"], freeze_stages=best["freeze_stages"])
    opts.image_size = best["image_size"]
    return chosen, rows


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import torchvision

    return {
        "wbc": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def calibrate_and_score(
    val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray, test_labels: np.ndarray, scored: str
) -> tuple[dict[str, Any], np.ndarray]:
    """Temperature and review threshold fitted on validation logits; test metrics of the calibrated
    probabilities (and ECE/NLL before and after).  Returns the metrics and the test probabilities."""
    temperature = fit_temperature(val_logits, val_labels)
    threshold = review_threshold(softmax(val_logits / temperature), val_labels)
    probs = softmax(test_logits / temperature)
    metrics = classification_metrics(test_labels, probs.argmax(1), CLASSES)
    metrics.update(
        ece=expected_calibration_error(softmax(test_logits), test_labels),
        ece_calibrated=expected_calibration_error(probs, test_labels),
        nll=nll(test_logits, test_labels),
        nll_calibrated=nll(test_logits, test_labels, temperature),
        temperature=temperature,
        review_threshold=threshold,
        review_share=float((probs.max(1) < threshold).mean()) if len(probs) else 0.0,
        split="test",
        scored_model=scored,
    )
    return metrics, probs


def _diagnostics(cm_rows: list[list[int]], probs: np.ndarray, test: CachedSet, rgb: bool, run_dir: Path) -> None:
    """confusion.png / confusion.csv and a gallery of up to 48 misclassified test cells."""
    confusion_png(cm_rows, list(CLASSES), run_dir / "confusion.png")
    with open(run_dir / "confusion.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["true \\ predicted", *CLASSES])
        for c, row in zip(CLASSES, cm_rows, strict=True):
            w.writerow([c, *row])
    wrong = np.flatnonzero(probs.argmax(1) != test.labels)[:48]
    gallery_png(
        test.images[wrong],
        [CLASSES[i] for i in test.labels[wrong]],
        [CLASSES[i] for i in probs.argmax(1)[wrong]],
        [float(probs[i].max()) for i in wrong],
        run_dir / "misclassified.png",
        rgb=rgb,
    )


def _sidecar(
    data: CachedSet, cfg, opts: RunOptions, train_info: dict[str, Any], metrics: dict[str, Any], *, version: str,
    counts: dict, par: dict, quant: dict | None, val_logits: np.ndarray, val_labels: np.ndarray, scored: str,
) -> Sidecar:  # fmt: skip
    """What inference reads about the exported model: its recipe, calibration (from the logits of the file that
    ships, ``scored``), data, parity, quantisation and the references the domain guard and correction use."""
    return Sidecar(
        name=MODEL_NAME,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        classes=tuple(CLASSES),
        input=InputSpec(shape=("batch", 3, data.spec.input_size, data.spec.input_size)),
        output=OutputSpec(apply="softmax(logits / temperature)"),
        preprocess=data.spec,
        temperature=metrics["temperature"],
        review_threshold=metrics["review_threshold"],
        metrics={k: metrics[k] for k in ("accuracy", "macro_f1", "ece", "ece_calibrated", "n")}
        | {"per_class_f1": {c: round(v["f1"], 4) for c, v in metrics["per_class"].items()}},
        parity=Parity.from_dict(par),
        quantization=None if quant is None else Quantization.from_dict(quant),
        data={
            "roots": [str(Path(d).resolve()) for d in opts.data]
            or sorted({source_of(f) for f in data.files}),  # from a cache: its sources
            "per_split_class": counts,
            "split_rule": f"sha256[:8]/2^32 < {opts.test_fraction} test, < {opts.test_fraction + opts.val_fraction} val",
        },
        init=train_info["init"],
        training={
            **cfg.as_dict(),
            "best_epoch": train_info["best_epoch"],
            "best_val_macro_f1": train_info["best_val_macro_f1"],
            "device": train_info["device"],
            "class_weights": train_info["class_weights"],
            "seconds": round(train_info["train_seconds"], 1),
        },
        software=_versions(),
        intended_use="Decision support for white-cell differentials on single-cell images; not a diagnosis.",
        domain={
            **domain_reference(data),
            "uncertainty": uncertainty_reference(val_logits, metrics["temperature"], scored),
        },
        confusion_val=ConfusionReference.from_dict(confusion_reference(val_logits, val_labels, scored)),
    )


def _with_float_weights(model, onnx_path: Path, sidecar, cfg, log):
    """The float weights beside the exported file, listed in its sidecar (:mod:`training.weights`): the int8
    file cannot be trained on, so a continued training or a fine-tune starts from these, on any machine."""
    from training.model import ARCHITECTURES
    from training.weights import save_float_weights

    weights = save_float_weights(model.state_dict(), onnx_path, architecture=ARCHITECTURES[cfg.norm])
    log(f"float weights: {weights.file} ({weights.parameters:,} parameters, fp16)")
    return sidecar.replace(weights=weights)


def evaluate_and_export(
    model, data: CachedSet, train_info: dict[str, Any], cfg, opts: RunOptions, g: Gathered, log=print
) -> dict[str, Any]:
    """Calibrate on val, score on test, export ONNX, check parity, write sidecar, metrics, PNGs and card."""
    import torch

    from training.export import export_onnx, ort_logits, parity, quantize_int8, weight_max_abs
    from training.loop import predict_logits

    run_dir = Path(opts.out)
    device = torch.device("cpu")
    val, test = data.subset("val"), data.subset("test")
    val_logits = predict_logits(model, val, device)
    test_logits = predict_logits(model, test, device)
    metrics, probs = calibrate_and_score(
        val_logits, val.labels, test_logits, test.labels, "PyTorch (parity-checked against the ONNX export)"
    )
    onnx_path = export_onnx(model, data.spec.input_size, run_dir / "model.onnx")
    onnx_test_logits = ort_logits(onnx_path, test)
    par = parity(test_logits, onnx_test_logits, tol=opts.parity_tol)
    scored_val_logits, scored = val_logits, "PyTorch logits of the exported weights"
    log(f"test: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; parity {par}")
    quant: dict[str, Any] | None = None
    if opts.quantize:
        q = quantize_int8(onnx_path, data.subset("train"), run_dir / "model.int8.onnx")
        q_logits = ort_logits(q, test)
        q_acc = float((q_logits.argmax(1) == test.labels).mean())
        f_acc = float((onnx_test_logits.argmax(1) == test.labels).mean())
        kept = (f_acc - q_acc) * 100 <= 0.2
        quant = {
            "weight_max_abs": weight_max_abs(q),
            "accuracy_fp32": f_acc,
            "accuracy_int8": q_acc,
            "kept": kept,
            "weights": "int8 per-channel symmetric, 7-bit range -64..64 (reduce_range)",
            "activations": "uint8 per-tensor",
            "why": "no int16 saturation in u8s8 kernels without VNNI: the same classes on every CPU",
        }
        if kept:
            # the float export stays beside the run (not shipped): it is the reference int8 is checked against
            shutil.copyfile(onnx_path, run_dir / "model.fp32.onnx")
            q.replace(onnx_path)
            par = {**par, "note": "parity measured on fp32 export; int8 kept within 0.2 accuracy points"}
            # the shipped file is the int8 one: calibrate and score *it*, so the sidecar describes what ships
            scored_val_logits, scored = ort_logits(onnx_path, val), "int8 ONNX (ONNX Runtime)"
            metrics, probs = calibrate_and_score(scored_val_logits, val.labels, q_logits, test.labels, scored)
        else:
            q.unlink()
        log(f"int8: {quant}")
    metrics["per_source"] = per_source(test, probs.argmax(1))
    _diagnostics(metrics["confusion"], probs, test, data.spec.colour_order == "RGB", run_dir)
    version = opts.version or version_stamp()
    counts = g.counts() if g is not None else cache_counts(data)
    sidecar = _sidecar(
        data, cfg, opts, train_info, metrics, version=version, counts=counts, par=par, quant=quant,
        val_logits=scored_val_logits, val_labels=val.labels, scored=scored,
    )  # fmt: skip
    sidecar = _with_float_weights(model, onnx_path, sidecar, cfg, log)
    write_sidecar(onnx_path, sidecar)
    full = {
        "test": metrics,
        "parity": par,
        "quantization": quant,
        "history": train_info["history"],
        "data": (g.summary() if g is not None else {"from_cache": True}) | {"per_split_class": counts},
    }
    (run_dir / "metrics.json").write_text(json.dumps(full, indent=2) + "\n")
    (run_dir / "card.md").write_text(model_card(sidecar.to_dict(), metrics, opts))
    return {
        "run_dir": str(run_dir),
        "version": version,
        "macro_f1": metrics["macro_f1"],
        "accuracy": metrics["accuracy"],
        "parity_passed": par["passed"],
        "metrics": metrics,
        "parity": par,
    }


def confusion_reference(val_logits: np.ndarray, labels: np.ndarray, scored: str) -> dict[str, Any]:
    """The validation confusion counts (rows true, columns called, in class order) that inference corrects
    the differential with (``wbcproc.correction``): the model's own leak between classes, measured."""
    from training.metrics import confusion

    cm = confusion(np.asarray(labels), val_logits.argmax(1), len(CLASSES))
    return {"counts": cm.astype(int).tolist(), "classes": list(CLASSES), "n": int(cm.sum()),
            "source": f"validation split, {scored}"}  # fmt: skip


def source_of(file: Any) -> str:
    """The data root an item came from: the folder above its class folder."""
    return str(Path(str(file)).parent.parent)


def per_source(data: CachedSet, pred: np.ndarray) -> dict[str, dict[str, Any]]:
    """Accuracy and macro-F1 per data root (the folder above the class folders): one lab's figure must not
    hide another's."""
    roots = np.array([source_of(f) for f in data.files])
    out = {}
    for root in sorted(set(roots)):
        m = roots == root
        cm = classification_metrics(data.labels[m], pred[m], CLASSES)
        present = [c for c, v in cm["per_class"].items() if v["support"] > 0]
        out[root] = {
            "n": int(m.sum()),
            "accuracy": cm["accuracy"],
            "macro_f1_present_classes": float(np.mean([cm["per_class"][c]["f1"] for c in present])) if present else 0.0,
        }
    return out


def domain_reference(data: CachedSet) -> dict[str, Any]:
    """Reference statistics of the training split's inputs, threshold calibrated on validation + test."""
    from wbcproc.domain import cell_features, fit_reference

    order = data.spec.colour_order
    feats = np.array([cell_features(im, order) for im in data.images])
    train = feats[data.splits == "train"]
    held = feats[data.splits != "train"]
    return fit_reference(train, held if len(held) else train)


def uncertainty_reference(val_logits: np.ndarray, temperature: float, scored: str) -> dict[str, Any]:
    """The model-side half of the domain guard (``wbcproc.domain.fit_uncertainty``), from the validation
    split's calibrated probabilities of the model that ships."""
    from wbcproc.domain import cell_uncertainty, fit_uncertainty

    return fit_uncertainty(
        cell_uncertainty(val_logits, temperature), source=f"validation split, {scored}, temperature {temperature:.4f}"
    )


def model_card(side: dict[str, Any], m: dict[str, Any], opts: RunOptions) -> str:
    per = "\n".join(
        f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for c, v in m["per_class"].items()
    )
    init = side["init"]
    init_text = init.get("used", "?") + (f" (fallback: {init['fallback_reason']})" if "fallback_reason" in init else "")
    tr = side["training"]
    cmd = " ".join(
        [
            "wbc train",
            *[f"--data {d}" for d in opts.data],
            f"--out {opts.out}",
            f"--epochs {tr['epochs']}",
            f"--image-size {side['preprocess']['input_size']}",
            f"--init {tr['init']}",
            f"--freeze-stages {tr['freeze_stages']}",
            f"--seed {tr['seed']}",
            f"--lr {tr['lr']}",
            f"--batch-size {tr['batch_size']}",
            *([f"--norm {tr['norm']}"] if tr.get("norm", "bn") != "bn" else []),
            *([f"--cache {opts.cache}"] if opts.cache else []),
            *([f"--from-shards {opts.from_shards}"] if opts.from_shards else []),
        ]
    )
    return f"""# Model card: {side["name"]} {side["version"]}

**Intended use.** {side["intended_use"]} Every result needs review by a qualified person.

## Model
- Architecture: torchvision {init.get("architecture", "ResNet50")}, final layer replaced for {len(side["classes"])} classes
  ({", ".join(side["classes"])}).
- Initialisation: {init_text}.
- Input: {side["preprocess"]["input_size"]} px, {side["preprocess"]["colour_order"]}, resize rule
  `{side["preprocess"]["resize"]}`, mean {side["preprocess"]["mean"]}, std {side["preprocess"]["std"]},
  colour normalisation: {side["preprocess"].get("colour_normalisation") or "none"}.
- Calibration: temperature {side["temperature"]:.3f} (fitted on validation NLL); review mark below
  confidence {side["review_threshold"]:.3f}.

## Data
Roots: {", ".join(side["data"]["roots"])}. Split by content hash ({side["data"]["split_rule"]}): identical
files always share a split and the test split is fixed. Cells per split and class:
`{json.dumps(side["data"]["per_split_class"])}`.

## Training
`{cmd}`

Config: `{json.dumps(tr)}`

## Results on the test split (n = {m["n"]}, ONNX export checked against PyTorch: {side["parity"]})
- Scored: {m.get("scored_model", "?")}.
- Accuracy {m["accuracy"]:.4f}, macro-F1 {m["macro_f1"]:.4f}, ECE {m["ece"]:.4f} (calibrated {m["ece_calibrated"]:.4f}).
- Per source: {"; ".join(f"{Path(k).name}: n={v['n']}, accuracy {v['accuracy']:.4f}" for k, v in m.get("per_source", {}).items())}.

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per}

## Limits
- Trained on the images under the roots above only. Other laboratories' stains, cameras and
  magnifications can lower accuracy sharply; validate on local cells before clinical use.
- Classes outside the eight listed (blasts, smudge cells, artefacts) are forced into one of them.

Software: `{json.dumps(side["software"])}`
"""


def cache_counts(data: CachedSet) -> dict[str, dict[str, int]]:
    out = {s: dict.fromkeys(CLASSES, 0) for s in ("train", "val", "test")}
    for label, split in zip(data.labels, data.splits, strict=True):
        out[str(split)][CLASSES[int(label)]] += 1
    return out


def run_training(
    opts: RunOptions,
    cfg,
    log=print,
    *,
    cache: str | None = None,
    shards_only: bool = False,
    from_shards: str | None = None,
) -> dict[str, Any]:
    """The whole run, as ``wbc train`` does it.

    ``cache``: train from an existing cache (a GPU machine that has only the packed set).
    ``shards_only``: after training write fp16 weight shards + ``train_info.json`` and stop (the GPU side).
    ``from_shards``: skip training, load those weights, then evaluate, export and check parity (the CPU side).
    """
    from training.loop import train_model
    from training.model import build_model
    from training.recipe import TrainConfig

    g = None
    opts.cache, opts.from_shards = cache, from_shards
    if cache is not None:
        cache_path = Path(cache)
        Path(opts.out).mkdir(parents=True, exist_ok=True)
    else:
        g, cache_path, _ = prepare_data(opts, log)
        if opts.search_trials:
            cfg, _ = search(opts, cfg, g, log)
            cache_path = Path(opts.out) / f"cache-{opts.image_size}.npz"
    data = load_cache(cache_path)
    if from_shards is not None:
        from training.shards import load_shards

        info = json.loads((Path(from_shards) / "train_info.json").read_text())
        if "config" in info:  # what the GPU run used, not this command's defaults, goes into the sidecar
            known = {f.name for f in fields(TrainConfig)}
            cfg = TrainConfig(**{k: v for k, v in info["config"].items() if k in known})
        model, _ = build_model("scratch", norm=cfg.norm)
        model.load_state_dict(load_shards(from_shards))
        log(f"weights from {from_shards} (trained on {info.get('device')}); evaluating and exporting here")
        return evaluate_and_export(model, data, info, cfg, opts, g, log)
    train, val = data.subset("train"), data.subset("val")
    if len(train) == 0:
        raise ValueError("no training images after the split: give more data")
    log(f"training on {len(train)} images, validating on {len(val)}, testing on {len(data.subset('test'))}")
    model, info = train_model(train, val, cfg, log)
    if shards_only:
        from training.shards import save_shards

        paths = save_shards(model.state_dict(), opts.out)
        (Path(opts.out) / "train_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        log(f"wrote {len(paths)} fp16 weight shards to {opts.out}")
        return {
            "run_dir": opts.out,
            "version": None,
            "accuracy": None,
            "macro_f1": info["best_val_macro_f1"],
            "parity_passed": None,
            "shards": [str(p) for p in paths],
        }
    return evaluate_and_export(model, data, info, cfg, opts, g, log)

"""``wbc train``, ``adapt`` and ``evaluate``: fitting and scoring models (the ``[train]`` extra for the first two)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli._app import JsonOut, _emit, _fail, app
from flows.cli._choices import Augment, Device, Norm, Optimizer, Resize, Split
from training.recipe import SHIPPED as RECIPE  # standard library only: no torch at start-up
from wbcproc import defaults

# ``wbc train``'s options, one line each (their defaults are the shipped recipe's)
_TrainData = Annotated[list[Path] | None, typer.Option("--data", help="Root of class folders; repeat for more roots.")]
_Cache = Annotated[Path | None, typer.Option(help="Train from this packed cache instead of --data.")]
_ShardsOnly = Annotated[bool, typer.Option("--shards-only", help="Write fp16 weight shards and stop (GPU side).")]
_FromShards = Annotated[
    Path | None, typer.Option("--from-shards", help="Skip training: evaluate/export these shards (CPU side).")
]
_PackOnly = Annotated[
    bool, typer.Option("--pack-only", help="Only gather, split and write the cache (to carry to a GPU).")
]
_CacheQuality = Annotated[
    int, typer.Option("--cache-quality", min=50, max=100, help="JPEG quality of the cache (85: ~46 MiB at 128 px).")
]
_Init = Annotated[
    str,
    typer.Option(
        help="imagenet | scratch | PATH: a model (its folder, model.json or model.onnx: the float weights it carries), "
        "a ResNet50 state dict (.pt, .safetensors) or a shard folder."
    ),
]
_InitHead = Annotated[
    bool, typer.Option("--init-head", help="Keep --init PATH's 8-class head too: continue that model (a warm start).")
]
_Augment = Annotated[
    Augment,
    typer.Option(
        help="Augmentation preset: robust (other labs' stains/cameras), stain (robust + other stains), "
        "mixed (stain on half the images), basic."
    ),
]
_Norm = Annotated[Norm, typer.Option(help="Normalisation: bn, or ibn (ResNet50-IBN-a: part instance norm).")]
_Normalise = Annotated[
    bool, typer.Option("--normalise/--no-normalise", help="White balance + red-cell-ruler framing (new caches).")
]
_TimeBudget = Annotated[
    float, typer.Option("--time-budget-seconds", min=0.0, help="Training time in seconds; fewer epochs if needed.")
]


def _train_config(augment: str, **fields: Any):
    """The training recipe from ``wbc train``'s options; a bad value exits 2 with one line naming it."""
    from training.recipe import TrainConfig, augmentation

    try:
        return TrainConfig(**augmentation(augment), **fields)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None


def _pack(opts, as_json: bool) -> None:
    """``wbc train --pack-only``: gather, split and write the cache; print where it is and its size."""
    from training.run import prepare_data

    g, cache_path, failed = prepare_data(opts, log=lambda m: typer.echo(m, err=True))
    size = cache_path.stat().st_size
    n = len(g.items) - len(failed)
    _emit({"cache": str(cache_path), "images": n, "bytes": size}, as_json, f"{cache_path}: {n} images, {size} bytes")


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")],
    data: _TrainData = None,
    cache: _Cache = None,
    shards_only: _ShardsOnly = False,
    from_shards: _FromShards = None,
    pack_only: _PackOnly = False,
    cache_quality: _CacheQuality = RECIPE["cache_quality"],
    epochs: Annotated[int, typer.Option(min=0, help="Most epochs (early stopping may end sooner).")] = RECIPE["epochs"],
    image_size: Annotated[int, typer.Option("--image-size", min=16, max=512, help="Input side in pixels.")] = RECIPE[
        "image_size"
    ],
    init: _Init = RECIPE["init"],
    init_head: _InitHead = False,
    freeze_stages: Annotated[
        int, typer.Option("--freeze-stages", min=0, max=5, help="ResNet stages kept frozen (0: none).")
    ] = 0,
    device: Annotated[Device, typer.Option(help="Where to train (auto: a GPU when PyTorch sees one).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Images per training step.")] = RECIPE[
        "batch_size"
    ],
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (warm-up, then cosine).")] = RECIPE["lr"],
    optimizer: Annotated[Optimizer, typer.Option(help="Optimiser.")] = RECIPE["optimizer"],
    label_smoothing: Annotated[
        float, typer.Option("--label-smoothing", min=0.0, max=0.5, help="Cross-entropy label smoothing.")
    ] = RECIPE["label_smoothing"],
    seed: Annotated[int, typer.Option(help="Random seed (split-independent: the split is by file hash).")] = 0,
    patience: Annotated[
        int, typer.Option(min=1, help="Epochs without a better validation macro-F1 before stopping.")
    ] = RECIPE["patience"],
    resize: Annotated[Resize, typer.Option(help="How a cell image is brought to the input size.")] = "stretch",
    version: Annotated[str | None, typer.Option(help="Model version (default: UTC timestamp).")] = None,
    search: Annotated[int, typer.Option("--search", min=0, help="Random-search trials before training.")] = 0,
    search_epochs: Annotated[int, typer.Option("--search-epochs", min=1, help="Epochs per --search trial.")] = 3,
    quantize: Annotated[bool, typer.Option("--quantize", help="Try static int8; kept only within 0.2 points.")] = False,
    normalise: _Normalise = True,
    augment: _Augment = RECIPE["augment"],
    norm: _Norm = RECIPE["norm"],
    time_budget: _TimeBudget = 0.0,
    as_json: JsonOut = False,
) -> None:
    """Fine-tune ResNet50 on class folders; write model.onnx + sidecar, metrics, card (needs [train]).

    One run on one machine: --data (or --cache). Split across a CPU and a GPU: --pack-only writes the
    cache here, --shards-only trains on the GPU and stops at fp16 weight shards, --from-shards (with
    --cache) exports, quantises and checks them here."""
    try:
        from training.run import RunOptions, run_training
    except ImportError as exc:
        raise _fail(f"training needs the [train] extra (pip install 'wbc[train]'): {exc}") from None
    cfg = _train_config(
        augment.value, device=device.value, norm=norm.value, time_budget_s=time_budget, epochs=epochs,
        batch_size=batch_size, lr=lr, optimizer=optimizer.value, label_smoothing=label_smoothing,
        freeze_stages=freeze_stages, init=init, init_head=init_head, seed=seed, patience=patience,
    )  # fmt: skip
    if not data and cache is None:
        raise _fail("give --data (class folders) or --cache (a packed cache)", 2)
    from training.model import check_init

    try:
        check_init(init)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    opts = RunOptions(
        data=[str(d) for d in (data or [])], out=str(out), image_size=image_size, resize=resize.value, version=version,
        quantize=quantize, search_trials=search, search_epochs=search_epochs, normalise=normalise,
        cache_quality=cache_quality,
    )  # fmt: skip
    if pack_only:
        return _pack(opts, as_json)
    try:
        res = run_training(
            opts, cfg, log=lambda m: typer.echo(m, err=True), cache=None if cache is None else str(cache),
            shards_only=shards_only, from_shards=None if from_shards is None else str(from_shards),
        )  # fmt: skip
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    out = {k: res[k] for k in ("run_dir", "version", "accuracy", "macro_f1", "parity_passed", "shards") if k in res}
    _emit(out, as_json, _trained_text(out))


def _trained_text(r: dict[str, Any]) -> str:
    if r.get("shards") is not None:
        return (
            f"{len(r['shards'])} fp16 weight shards in {r['run_dir']} (validation macro-F1 {r['macro_f1']:.4f}); "
            f"next: wbc train --from-shards {r['run_dir']} --cache CACHE --out RUN"
        )
    parity = "ONNX parity passed" if r["parity_passed"] else "ONNX parity FAILED"
    return (
        f"trained {r['version']} in {r['run_dir']}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}; "
        f"{parity}; next: wbc models register {r['run_dir']}"
    )


# ``wbc adapt``'s longer options, named once here
_Holdout = Annotated[
    float,
    typer.Option(
        "--holdout",
        min=0.0,
        max=0.5,
        help=f"Share of the lab's cells held out to check it; >= {defaults.LAB_GUARD_MIN_CELLS} held-out cells "
        f"scored >= {defaults.LAB_GUARD_MIN_ACCURACY} validate the lab, so its samples lose DOMAIN_SHIFT.",
    ),
]
_Stage = Annotated[
    bool,
    typer.Option(
        "--stage/--head-only",
        help="Fine-tune the last ResNet stage and the head (about 2 min for 25 cells, 4 for 200 on a 2-core "
        "AVX-512 VNNI CPU; a slower CPU runs fewer epochs to finish within --time-budget-seconds), or refit the "
        "head alone (seconds).",
    ),
]
_Route = Annotated[
    bool,
    typer.Option(
        "--route/--single-model",
        help="Where the lab's slides look unlike the original laboratory's, ship the parent beside the adapted "
        "model and let each slide be read by the model whose laboratory it looks like (docs/adapting.md); or "
        "always one model.",
    ),
]
_Suggest = Annotated[
    int | None,
    typer.Option(
        "--suggest",
        min=1,
        help="Adapt nothing: pick the N unreviewed cells of --samples worth reviewing first and write them to "
        "--out, to be sorted into class folders by a person (docs/adapting.md).",
    ),
]
_Samples = Annotated[
    list[Path] | None,
    typer.Option(
        "--samples",
        help="Processed sample folders, or a folder of them (e.g. inbox/archive): with --lab-data their unreviewed "
        "cells join the fit where the adapted model calls them confidently and that does not lose; with --suggest "
        "the cells to choose from.",
    ),
]

_Reports = Annotated[
    Path | None,
    typer.Option(
        "--reports",
        help="With --suggest: the report folder (wbc process --out; served: <home>/reports) whose preliminary "
        "workbooks get a 'review for adaptation' mark on the suggested cells.",
    ),
]


@app.command()
def adapt(
    out: Annotated[Path, typer.Option("--out", help="Run folder for the adapted model.onnx + sidecar.")],
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--lab-data", help="The laboratory's reviewed cells: `wbc export-reviewed` output or class folders."
        ),
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Model to adapt (default: the model in use).")] = None,
    min_per_class: Annotated[
        int, typer.Option("--min-per-class", min=1, help="Refuse a reviewed class with fewer fitted cells.")
    ] = defaults.MIN_PER_CLASS,
    holdout: _Holdout = defaults.HOLDOUT_FRACTION,
    version: Annotated[str | None, typer.Option(help="Version (default: parent version + lab timestamp).")] = None,
    stage: _Stage = True,
    route: _Route = True,
    suggest: _Suggest = None,
    samples: _Samples = None,
    reports: _Reports = None,
    time_budget: Annotated[
        float,
        typer.Option(
            "--time-budget-seconds",
            min=0.0,
            help="Finish within this many seconds: on a slower CPU the fine-tune runs fewer epochs (0: no limit).",
        ),
    ] = defaults.ADAPT_TIME_BUDGET_S,
    as_json: JsonOut = False,
) -> None:
    """Adapt the model to your laboratory from its reviewed cells, on the CPU, in minutes
    (docs/adapting.md); then `wbc models register OUT` and `wbc models promote VERSION`.
    With --suggest N: first choose which cells to review."""
    if suggest is not None:
        _suggest(suggest, samples, out, model, reports, as_json)
        return
    if reports is not None:
        raise _fail("--reports marks the cells of --suggest N in the workbooks; without --suggest it does nothing", 2)
    if not data:
        raise _fail("give --lab-data DIR (the laboratory's reviewed cells), or --suggest N --samples DIR", 2)
    try:
        from training.adapt import AdaptError
        from training.adapt import adapt as run_adapt
    except ImportError as exc:
        raise _fail(f"wbc adapt needs the [train] extra ({exc.name} is missing): pip install 'wbc[train]'") from None
    from wbcproc.model import ModelError

    unreviewed = _sample_cells(samples) if samples else None
    try:
        res = run_adapt(
            [str(d) for d in data],
            out,
            model,
            min_per_class=min_per_class,
            holdout=holdout,
            version=version,
            stage=stage,
            route=route,
            unreviewed=unreviewed,
            time_budget_s=time_budget,
            log=lambda m: typer.echo(m, err=True),
        )
    except (AdaptError, ModelError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    _emit(res, as_json, _adapted_text(res))


def _adapted_text(res: dict[str, Any]) -> str:
    """``wbc adapt``'s result for a person: what was written, what it scored, what to do next."""
    m = res["metrics"]
    parts = [f"adapted {res['version']} in {res['run_dir']} ({res['seconds']:.0f} s)"]
    hold = m.get("lab_holdout")
    if hold:
        parts.append(f"held-out laboratory cells {hold['parent']['accuracy']:.3f} -> {hold['adapted']['accuracy']:.3f}")
    check = m.get("original_check")
    if check:
        parts.append(
            f"original laboratory's check {check['parent']['accuracy']:.3f} -> {check['adapted']['accuracy']:.3f}"
        )
    if m.get("stage_epochs", 0) < m.get("stage_epochs_planned", 0):
        parts.append(f"{m['stage_epochs']} of {m['stage_epochs_planned']} epochs (time budget)")
    if res.get("routed"):
        parts.append("routed: the parent reads slides that look like the original laboratory's")
    if m.get("lab_guard", {}).get("validated") is False:
        parts.append(f"laboratory not validated ({m['lab_guard']['why_not']})")
    return "; ".join(parts) + f"; next: wbc models register {res['run_dir']}"


def _sample_cells(samples: list[Path]) -> list[Path]:
    """The single-cell images of ``--samples`` (the laboratory's unreviewed cells); refuses a missing folder or none."""
    from training.suggest import candidates

    missing = [str(s) for s in samples if not s.is_dir()]
    if missing:
        raise _fail(f"--samples: not a folder: {', '.join(missing)}", 2)
    files = candidates(samples)
    if not files:
        raise _fail(f"--samples: no single-cell images in {', '.join(str(s) for s in samples)}", 2)
    return files


def _suggest(
    n: int, samples: list[Path] | None, out: Path, model: Path | None, reports: Path | None, as_json: bool
) -> None:
    """``wbc adapt --suggest N``: the cells to review first, copied to ``out`` for a person to sort, and
    marked in the preliminary workbooks of ``reports``."""
    from training.suggest import suggest, write_suggestions
    from wbcproc.model import ModelError
    from wbcproc.resolve import resolve_model_path

    if not samples:
        raise _fail("--suggest needs --samples DIR (sample folders, or a folder of them)", 2)
    if reports is not None and not reports.is_dir():
        raise _fail(f"--reports {str(reports)!r} is not a folder of reports (wbc process --out)", 2)
    files = _sample_cells(samples)
    try:
        found = suggest(files, resolve_model_path(model), n)
    except (ModelError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    csv_path = write_suggestions(found, out)
    typer.echo(f"{len(found)} of {len(files)} cells suggested; sort them as {out / 'README.txt'} says", err=True)
    res: dict[str, Any] = {"suggested": len(found), "candidates": len(files), "list": str(csv_path)}
    text = f"{len(found)} of {len(files)} cells suggested: {csv_path}"
    if reports is not None:
        res["workbooks"] = marks = _mark_workbooks(reports, csv_path)
        text += f"; marked in {len(marks['marked'])} workbook(s) of {reports}"
        if marks["cleared"]:
            text += f", an earlier list's marks taken out of {len(marks['cleared'])}"
        if marks["left"]:
            text += f", {len(marks['left'])} left as they were (listed above)"
    _emit(res, as_json, text)


def _mark_workbooks(reports: Path, csv_path: Path) -> dict[str, Any]:
    """``--reports``: mark the suggested cells in the folder's preliminary workbooks; each workbook left as it
    was is named with its reason on stderr."""
    from wbcproc.report.marks import mark_workbooks
    from wbcproc.suggested import read_suggested

    done = mark_workbooks(reports, read_suggested(csv_path))
    for xlsx, why in done.left:
        typer.echo(f"not marked: {xlsx.name}: {why}", err=True)
    return {
        "cells": done.cells,
        "marked": [{"workbook": str(p), "cells": k} for p, k in done.marked],
        "cleared": [str(p) for p in done.cleared],
        "left": [{"workbook": str(p), "why": why} for p, why in done.left],
    }


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Model .onnx with its sidecar.")],
    data: Annotated[list[Path], typer.Option("--data", help="Root of class folders (repeatable).")],
    split: Annotated[
        Split, typer.Option(help="Which cells: all, or one split (by content hash, as in training).")
    ] = "all",
    as_json: JsonOut = False,
) -> None:
    """Score any model on a labelled folder tree (accuracy, per-class F1, macro-F1, confusion)."""
    from training.evaluate import evaluate_model
    from wbcproc.model import ModelError

    try:
        m = evaluate_model(model, [str(d) for d in data], split=split.value)
    except (ModelError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(m))
        return
    typer.echo(f"n={m['n']} accuracy={m['accuracy']:.4f} macro-F1={m['macro_f1']:.4f} rejected={len(m['rejected'])}")
    for c, v in m["per_class"].items():
        typer.echo(f"  {c:<13} P={v['precision']:.3f} R={v['recall']:.3f} F1={v['f1']:.3f} n={v['support']}")

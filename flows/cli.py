"""The ``wbc`` command line.

Prefect is imported only by the commands that run flows, so ``wbc classify`` and ``wbc info`` start in
well under a second.  ``wbc process`` runs the ``process-sample`` flow when a Prefect server is configured
(``PREFECT_API_URL``) or ``--prefect`` is given, and otherwise calls the same pipeline functions
directly: Prefect's server-less mode starts a temporary server per process (measured in the README),
has no UI, and so only adds seconds to the common command-line path.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from training.recipe import SHIPPED as RECIPE  # standard library only: no torch at start-up
from wbcproc import __version__, defaults

app = typer.Typer(
    name="wbc",
    help="White-blood-cell differential from folders of blood-smear images (decision support).",
    no_args_is_help=True,
    add_completion=False,
    # plain help: rich markup would eat "[train]" and render metavars as "<bool>", "{folders}..."
    rich_markup_mode=None,
)
models_app = typer.Typer(help="The model registry: list, show, register and promote versions.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wbc {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """wbc: decision support, not a diagnosis - results require review by a qualified person."""


def _fail(msg: str, code: int = 1) -> typer.Exit:
    typer.echo(f"wbc: {msg}", err=True)
    return typer.Exit(code)


def _load_settings(config: Path | None):
    from wbcproc.config import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None


@app.command()
def info(
    model: Annotated[Path | None, typer.Option(help="Model .onnx (default: the model in use).")] = None,
) -> None:
    """Show the model in use and the ONNX Runtime providers."""
    import onnxruntime as ort

    from wbcproc.int8 import plan_for
    from wbcproc.resolve import resolve_model_path
    from wbcproc.sidecar import ModelError, read_sidecar

    typer.echo(
        f"wbc {__version__}; onnxruntime {ort.__version__}; providers: {', '.join(ort.get_available_providers())}"
    )
    try:
        path = resolve_model_path(model)
        m = read_sidecar(path)
    except ModelError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"model:      {m.name} {m.version}")
    typer.echo(f"file:       {m.onnx_path}")
    typer.echo(f"sha256:     {m.sha256}")
    typer.echo(f"classes:    {', '.join(m.classes)}")
    p = m.preprocess
    typer.echo(
        f"input:      {p.input_size}x{p.input_size} {p.colour_order}, resize {p.resize}, "
        f"colour normalisation {p.colour_normalisation.method if p.colour_normalisation else 'none'}, "
        f"framing {p.framing.method if p.framing else 'none'}"
    )
    typer.echo(f"review:     confidence < {m.review_threshold:.3f} (temperature {m.temperature:.3f})")
    plan = plan_for(m.sidecar.quantization)
    typer.echo(f"int8:       {plan.kernel.name}: {plan.summary}")
    metrics = m.sidecar.metrics or {}
    if metrics:
        shown = {k: metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}
        typer.echo(f"metrics:    {json.dumps(shown)}")
    for lab in (m.sidecar.domain or {}).get("labs", []):
        typer.echo(f"laboratory: {lab.get('name')}: {_lab_status(lab, m.sidecar.adaptation)}")
    routing = (m.sidecar.adaptation or {}).get("routing")
    if routing:
        typer.echo(
            f"routing:    slides that look like laboratory {routing['lab']} are read by this model, the others by "
            f"its parent {routing['parent_version']} ({routing['parent_file']} beside it)"
        )


def _lab_status(lab: dict, adaptation: dict | None) -> str:
    """Whether the domain guard lets an adapted laboratory's samples through (wbcproc.domain), and why."""
    if not lab.get("validated", True):
        why = lab.get("not_validated_because") or ((adaptation or {}).get("metrics", {}).get("lab_guard") or {}).get(
            "why_not", "unknown"
        )
        return f"adapted, not validated ({why}): its samples carry DOMAIN_SHIFT"
    if lab.get("uncertainty") is None:
        return "adapted, known by its look only (a sidecar from before validation)"
    source = lab["uncertainty"].get("calibration", {}).get("source", "")
    return f"validated ({source}): its samples are judged by its own uncertainty thresholds"


def _use_prefect(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return bool(os.environ.get("PREFECT_API_URL"))


@app.command()
def process(
    folders: Annotated[list[Path], typer.Argument(help="Sample folders (one per slide).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for the reports.")],
    model: Annotated[
        Path | None, typer.Option(help="Model .onnx with its sidecar (default: the model in use).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Config TOML merged over the defaults.")] = None,
    prefect: Annotated[
        bool | None,
        typer.Option(
            "--prefect/--no-prefect",
            help="Run as a Prefect flow (default: only when PREFECT_API_URL is set).",
        ),
    ] = None,
) -> None:
    """Classify every cell of each sample folder and write Excel, JSON and FHIR reports."""
    from wbcproc.model import ModelError, load_classifier
    from wbcproc.report import write_batch_summary

    settings = _load_settings(config)
    try:
        load_classifier(model, settings.threads)  # fail early, once, with the model's own message
    except ModelError as exc:
        raise _fail(str(exc)) from None
    use_prefect = _use_prefect(prefect)
    run_one = _flow_runner(model, config) if use_prefect else _direct_runner(model, settings)
    rows: list[dict[str, Any]] = []
    failed = 0
    from rich.progress import Progress

    with Progress(disable=not sys.stderr.isatty(), transient=True) as progress:
        task = progress.add_task("samples", total=len(folders))
        for folder in folders:
            try:
                result, paths = run_one(folder, out)
            except Exception as exc:  # one folder failing must not stop the others
                failed += 1
                msg = f"{folder}: {exc}".splitlines()[0]
                typer.echo(f"wbc: {msg}", err=True)
                rows.append({"sample_id": folder.name, "status": "failed", "error": str(exc)})
            else:
                codes = ", ".join(f["code"] for f in result["flags"]) or "no flags"
                typer.echo(f"{result['sample_id']}: {result['wbc_total']} WBC, {codes} -> {paths['xlsx']}")
                rows.append(
                    {
                        "sample_id": result["sample_id"],
                        "status": "processed",
                        "result": result,
                        "report": str(paths["xlsx"]),
                    }
                )
            progress.advance(task)
    if len(folders) > 1:
        out.mkdir(parents=True, exist_ok=True)
        typer.echo(f"batch summary -> {write_batch_summary(rows, out)}")
    if failed:
        raise typer.Exit(1)


def _direct_runner(model: Path | None, settings):
    from wbcproc.model import load_classifier
    from wbcproc.pipeline import run_sample

    def run(folder: Path, out: Path):
        return run_sample(folder, out, load_classifier(model, settings.threads), settings)

    return run


def _flow_runner(model: Path | None, config: Path | None):
    from flows.process import process_sample_flow

    def run(folder: Path, out: Path):
        res = process_sample_flow(
            folder=str(folder),
            out_dir=str(out),
            model=None if model is None else str(model),
            config=None if config is None else str(config),
        )
        return res["result"], res["paths"]

    return run


def _classify_inputs(paths: list[Path], settings) -> tuple[list, list[dict[str, Any]]]:
    """Candidates to classify from files and folders, and a line for each input that cannot be."""
    from wbcproc.discovery import Candidate, display_name, header_checked, scan_sample

    candidates: list[Candidate] = []
    errors: list[dict[str, Any]] = []
    for p in paths:
        if not p.exists():
            errors.append({"file": str(p), "label": None, "error": "no such file or folder"})
        elif p.is_dir():
            inv = scan_sample(p, settings)
            for c in inv.candidates:
                candidates.append(Candidate(str(p / c.path.name), c.path, c.width, c.height, c.format, c.mode))
            errors += [{"file": str(p / r.file), "label": None, "error": r.reason} for r in inv.rejected]
        else:
            ok, bad = header_checked([(p, display_name(str(p)))], settings)
            candidates += ok
            errors += [{"file": r.file, "label": None, "error": r.reason} for r in bad]
    return candidates, errors


def _classify_line(line: dict[str, Any], jsonl: bool) -> str:
    if jsonl:
        return json.dumps(line, ensure_ascii=False)
    if line.get("label"):
        return f"{line['label']:<13} {line['confidence']:.3f}  {line['file']}"
    return f"{'REJECTED':<13} {'':5}  {line['file']}: {line['error']}"


@app.command()
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (a folder expands to its images).")],
    model: Annotated[Path | None, typer.Option(help="Model .onnx with its sidecar.")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per line.")] = False,
    config: Annotated[Path | None, typer.Option(help="Config TOML.")] = None,
) -> None:
    """Classify single-cell images: one line per file."""
    from wbcproc.model import ModelError, load_classifier
    from wbcproc.pipeline import classify_candidates

    settings = _load_settings(config)
    try:
        clf = load_classifier(model, settings.threads)
    except ModelError as exc:
        raise _fail(str(exc)) from None
    candidates, errors = _classify_inputs(paths, settings)
    classified = classify_candidates(candidates, clf, settings, thumbnails=False)
    errors += [{"file": r.file, "label": None, "error": r.reason} for r in classified.rejected]
    lines = [{"file": c.file, "label": c.label, "confidence": round(c.confidence, 4)} for c in classified.cells]
    lines += errors
    for line in lines:
        typer.echo(_classify_line(line, jsonl))
    if not lines:
        raise _fail(f"no image found in {', '.join(str(p) for p in paths)}", 1)
    if not classified.cells:  # every input failed: say so in the exit status too
        raise typer.Exit(1)


@app.command()
def serve(
    inbox: Annotated[Path, typer.Option(help="Watched folder: one sub-folder per sample.")],
    out: Annotated[Path, typer.Option(help="Where reports are written.")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = defaults.PORT,
    host: Annotated[str, typer.Option(help="Address of the embedded server (loopback by default).")] = defaults.HOST,
    home: Annotated[Path | None, typer.Option(help="App home (SQLite, ledger, runs); default $WBC_HOME.")] = None,
    config: Annotated[Path | None, typer.Option(help="Config TOML.")] = None,
    model: Annotated[Path | None, typer.Option(help="Model .onnx (default: the model in use).")] = None,
    quiet: Annotated[
        float, typer.Option("--quiet-seconds", min=0.0, help="No change for this long = settled.")
    ] = defaults.QUIET_S,
    scan: Annotated[float, typer.Option("--scan-seconds", min=0.1, help="Scan interval.")] = defaults.SCAN_S,
    marker: Annotated[
        str, typer.Option(help="A file of this name marks a folder complete at once.")
    ] = defaults.MARKER_FILE,
    polling: Annotated[bool, typer.Option("--polling", help="Poll the inbox (SMB/NFS shares).")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave processed folders in the inbox.")] = False,
    concurrency: Annotated[int, typer.Option(min=1)] = defaults.CONCURRENCY,
    retrain_cron: Annotated[
        str, typer.Option("--retrain-cron", help="Cron of the retrain deployment.")
    ] = defaults.RETRAIN_CRON,
    train_data: Annotated[list[Path] | None, typer.Option("--train-data", help="Data roots for retraining.")] = None,
    pool: Annotated[
        str | None,
        typer.Option(help="Put runs on this process work pool for `wbc worker`s instead of running them here."),
    ] = None,
) -> None:
    """Run the Prefect server + UI, the deployments and the inbox watcher until SIGTERM/SIGINT."""
    import logging

    from flows.serve import ServeOptions
    from flows.serve import serve as run_serve
    from wbcproc.model import ModelError, load_classifier

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API poll otherwise
    settings = _load_settings(config)
    if marker not in settings.marker_files:
        raise _fail(
            f"--marker {marker!r} is not among the config's [input] marker_files {list(settings.marker_files)}: "
            "add it there, or reports would list the marker as a rejected file",
            2,
        )
    for what, path in (("--inbox", inbox), ("--out", out)):
        if path.exists() and not path.is_dir():
            raise _fail(f"{what} {str(path)!r} is a file; give a folder (it is created if missing)", 2)
    try:
        load_classifier(model)  # refuse to start without a usable model: every run would fail
    except ModelError as exc:
        raise _fail(str(exc)) from None
    opts = ServeOptions(
        inbox=inbox,
        out=out,
        port=port,
        host=host,
        home=home,
        config=config,
        model=model,
        quiet_s=quiet,
        scan_s=scan,
        marker=marker,
        polling=polling,
        move_done=not keep,
        concurrency=concurrency,
        retrain_cron=retrain_cron,
        train_data=[str(d) for d in (train_data or [])],
        pool=pool,
    )
    try:
        code = run_serve(opts)
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    # Everything we started is stopped and flushed; leave now rather than let interpreter shutdown wait on
    # Prefect background threads that would retry a server that is gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="Work pool to pull runs from (as given to `wbc serve --pool`).")] = "wbc",
    limit: Annotated[int, typer.Option(min=1, help="Runs at a time on this machine.")] = 1,
    name: Annotated[str | None, typer.Option(help="Worker name shown in the UI (default: host name).")] = None,
    poll: Annotated[float, typer.Option("--poll-seconds", min=0.5, help="How often to ask for work.")] = 1.0,
) -> None:
    """Pull sample runs from a Prefect server (PREFECT_API_URL) and run them here: scale out to N machines."""
    import socket
    import sys

    if not os.environ.get("PREFECT_API_URL"):
        raise _fail("set PREFECT_API_URL to the server's API (e.g. http://lab-server:4200/api)", 2)
    env = dict(os.environ, PREFECT_WORKER_QUERY_SECONDS=str(poll), PREFECT_WORKER_PREFETCH_SECONDS="5")
    # heartbeats let the server tell a run whose machine died from a long one (flows.serve.ensure_zombie_automation)
    from flows.serve import HEARTBEAT_S

    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--limit",
        str(limit),
        "--name",
        name or f"wbc-{socket.gethostname()}",
    ]
    _supervise(cmd, env)


def _supervise(cmd: list[str], env: dict[str, str], pause_s: float = 5.0) -> None:
    """Run the Prefect worker and start it again when it dies of an error: a worker exits on some server
    errors (a 500 while the database restarts), and a machine's only worker must not stay down until a
    person notices.  SIGTERM / SIGINT are passed on and end the loop."""
    import signal
    import subprocess
    import time

    state: dict[str, Any] = {"child": None, "stopping": False}

    def forward(sig, _frame) -> None:
        state["stopping"] = True
        child = state["child"]
        if child is not None and child.poll() is None:
            child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while True:
        state["child"] = subprocess.Popen(cmd, env=env)
        code = state["child"].wait()
        if state["stopping"] or code == 0:
            raise typer.Exit(code)
        typer.echo(
            f"wbc worker: the Prefect worker exited with code {code}; starting it again in {pause_s:g} s", err=True
        )
        time.sleep(pause_s)


@app.command()
def locate(
    images: Annotated[list[Path], typer.Argument(help="Smear field images.")],
    model: Annotated[Path | None, typer.Option(help="Model for the crops (default: the model in use).")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per image.")] = False,
    config: Annotated[Path | None, typer.Option(help="Config TOML.")] = None,
) -> None:
    """Find the white cells in field images, classify each crop, print boxes (x0, y0, x1, y1).

    A detection the classifier calls a platelet (a clump) is listed under "platelets", not "cells"."""
    from wbcproc.discovery import Candidate, check_image_header, display_name
    from wbcproc.imageio import ImageRejected, read_image
    from wbcproc.model import ModelError, load_classifier
    from wbcproc.pipeline import locate_and_classify

    settings = _load_settings(config)
    try:
        clf = load_classifier(model, settings.threads)
    except ModelError as exc:
        if model is not None:
            raise _fail(str(exc)) from None
        clf = None
        typer.echo(f"wbc: no model, boxes only (label and confidence are null): {exc}".splitlines()[0], err=True)
    for path in images:
        name = display_name(str(path))
        head = check_image_header(path, name, settings)
        if not isinstance(head, Candidate):
            line: dict[str, Any] = {"file": name, "cells": [], "error": head.reason}
        else:
            try:
                bgr = read_image(path).bgr
            except ImageRejected as exc:
                line = {"file": name, "cells": [], "error": exc.reason}
            else:
                line = {"file": name, **locate_and_classify(bgr, clf)}
        if jsonl:
            typer.echo(json.dumps(line, ensure_ascii=False))
        else:
            shown = ", ".join(
                f"{c['label'] or 'cell'}{'(edge)' if c['edge'] else ''} {c['box']}" for c in line["cells"]
            )
            typer.echo(f"{name}: {line.get('error') or shown or 'no white cells'}")


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
_Init = Annotated[str, typer.Option(help="imagenet | scratch | PATH to a ResNet50 state dict or a shard folder.")]
_InitHead = Annotated[
    bool, typer.Option("--init-head", help="Keep --init PATH's 8-class head too: continue that model (a warm start).")
]
_Augment = Annotated[
    str,
    typer.Option(
        help="robust (other labs' stains/cameras) | stain (robust + other stains) | mixed (stain on half the images) | basic"
    ),
]
_Norm = Annotated[str, typer.Option(help="bn | ibn (ResNet50-IBN-a: part instance norm, for other labs)")]
_Normalise = Annotated[
    bool, typer.Option("--normalise/--no-normalise", help="White balance + red-cell-ruler framing (new caches).")
]
_TimeBudget = Annotated[float, typer.Option("--time-budget", min=0.0, help="Seconds; fewer epochs if needed.")]


def _train_config(augment: str, device: str, norm: str, **fields: Any):
    """The training recipe from ``wbc train``'s options; a bad value exits 2 with one line naming it."""
    from training.recipe import TrainConfig, augmentation

    if device not in ("auto", "cpu", "cuda"):
        raise _fail(f"--device {device!r}: expected auto, cpu or cuda", 2)
    if norm not in ("bn", "ibn"):
        raise _fail(f"--norm {norm!r}: expected bn or ibn", 2)
    try:
        preset = augmentation(augment)
    except ValueError as exc:
        raise _fail(f"--augment: {exc}", 2) from None
    try:
        return TrainConfig(**preset, device=device, norm=norm, **fields)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None


def _pack(opts) -> None:
    """``wbc train --pack-only``: gather, split and write the cache; print where it is and its size."""
    from training.run import prepare_data

    g, cache_path, failed = prepare_data(opts, log=lambda m: typer.echo(m, err=True))
    size = cache_path.stat().st_size
    typer.echo(json.dumps({"cache": str(cache_path), "images": len(g.items) - len(failed), "bytes": size}))


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")],
    data: _TrainData = None,
    cache: _Cache = None,
    shards_only: _ShardsOnly = False,
    from_shards: _FromShards = None,
    pack_only: _PackOnly = False,
    cache_quality: _CacheQuality = RECIPE["cache_quality"],
    epochs: Annotated[int, typer.Option(min=0)] = RECIPE["epochs"],
    image_size: Annotated[int, typer.Option("--image-size", min=16, max=512)] = RECIPE["image_size"],
    init: _Init = RECIPE["init"],
    init_head: _InitHead = False,
    freeze_stages: Annotated[int, typer.Option("--freeze-stages", min=0, max=5)] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = RECIPE["batch_size"],
    lr: Annotated[float, typer.Option(min=0.0)] = RECIPE["lr"],
    optimizer: Annotated[str, typer.Option(help="adamw | sgd")] = RECIPE["optimizer"],
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", min=0.0, max=0.5)] = RECIPE["label_smoothing"],
    seed: int = 0,
    patience: Annotated[int, typer.Option(min=1)] = RECIPE["patience"],
    resize: Annotated[str, typer.Option(help="stretch | shorter_side_crop | letterbox")] = "stretch",
    version: Annotated[str | None, typer.Option(help="Model version (default: UTC timestamp).")] = None,
    search: Annotated[int, typer.Option("--search", min=0, help="Random-search trials before training.")] = 0,
    search_epochs: Annotated[int, typer.Option("--search-epochs", min=1)] = 3,
    quantize: Annotated[bool, typer.Option("--quantize", help="Try static int8; kept only within 0.2 points.")] = False,
    normalise: _Normalise = True,
    augment: _Augment = RECIPE["augment"],
    norm: _Norm = RECIPE["norm"],
    time_budget: _TimeBudget = 0.0,
) -> None:
    """Fine-tune ResNet50 on class folders; write model.onnx + sidecar, metrics, card (needs [train])."""
    try:
        from training.run import RunOptions, run_training
    except ImportError as exc:
        raise _fail(f"training needs the [train] extra (pip install 'wbc[train]'): {exc}") from None
    cfg = _train_config(
        augment, device, norm, time_budget_s=time_budget, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, label_smoothing=label_smoothing, freeze_stages=freeze_stages, init=init,
        init_head=init_head, seed=seed, patience=patience,
    )  # fmt: skip
    if not data and cache is None:
        raise _fail("give --data (class folders) or --cache (a packed cache)", 2)
    opts = RunOptions(
        data=[str(d) for d in (data or [])], out=str(out), image_size=image_size, resize=resize, version=version,
        quantize=quantize, search_trials=search, search_epochs=search_epochs, normalise=normalise,
        cache_quality=cache_quality,
    )  # fmt: skip
    if pack_only:
        return _pack(opts)
    try:
        res = run_training(
            opts, cfg, log=lambda m: typer.echo(m, err=True), cache=None if cache is None else str(cache),
            shards_only=shards_only, from_shards=None if from_shards is None else str(from_shards),
        )  # fmt: skip
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({k: res[k] for k in ("run_dir", "version", "accuracy", "macro_f1", "parity_passed")}))


@app.command("export-reviewed")
@app.command("reviewed", hidden=True, help="Old name of export-reviewed (still accepted).")
def export_reviewed_cmd(
    workbooks: Annotated[
        list[Path], typer.Argument(help="Report workbooks (.xlsx) with the 'Reviewed class' filled in.")
    ],
    sample: Annotated[
        list[Path], typer.Option("--sample", help="The sample folder of each workbook, in the same order.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Lab data root to add the reviewed cells to.")],
) -> None:
    """Turn reviewed cells into training data: LAB_ROOT for `wbc train --data` / the retrain flow."""
    from wbcproc.reviewed import export_reviewed

    if len(workbooks) != len(sample):
        raise _fail(f"give one --sample per workbook: {len(workbooks)} workbooks, {len(sample)} --sample", 2)
    total: dict[str, int] = {}
    for wb, folder in zip(workbooks, sample, strict=True):
        try:
            res = export_reviewed(wb, folder, out)
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from None
        for k, v in res.written.items():
            total[k] = total.get(k, 0) + v
        for name, reason in res.skipped:
            typer.echo(f"skipped {wb.name}: {name}: {reason}", err=True)
    typer.echo(json.dumps({"out": str(out), "written": total}))


@app.command()
def verify(
    workbook: Annotated[Path, typer.Argument(help="The report workbook with 'Reviewed class' filled in and saved.")],
    by: Annotated[
        str | None, typer.Option("--by", help="Verifier's name (else the Summary sheet's 'Verified by' cell).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder of the preliminary report (default: the workbook's folder).")
    ] = None,
    sample: Annotated[
        Path | None, typer.Option("--sample", help="The sample folder: copies the verified cells to --lab-data.")
    ] = None,
    lab_data: Annotated[
        Path | None,
        typer.Option("--lab-data", help="Laboratory data root for adaptation (wbc export-reviewed format)."),
    ] = None,
) -> None:
    """Verify and sign: the reviewed classes become the final report (<id>.final.*), with an audit entry."""
    from wbcproc.audit import AuditError
    from wbcproc.verify import VerificationRejected
    from wbcproc.verify import verify as run_verify

    if sample is not None and lab_data is None:
        from wbcproc.paths import app_home

        lab_data = app_home() / defaults.TRAINING_DATA
    try:
        done = run_verify(workbook, out or workbook.parent, by=by, sample_dir=sample, lab_data=lab_data)
    except (VerificationRejected, AuditError) as exc:
        raise _fail(str(exc)) from None
    for note in done.notes:
        typer.echo(note, err=True)
    if done.exported is not None:
        for name, reason in done.exported.skipped:
            typer.echo(f"not copied to the lab data: {name}: {reason}", err=True)
    typer.echo(
        json.dumps(
            {
                "final": {k: str(v) for k, v in done.paths.items()},
                "version": done.version,
                "verified_by": done.result["verified_by"],
                "changes": len(done.changes),
                "audit_seq": done.audit_entry["seq"],
                "lab_data": None
                if done.exported is None
                else {"root": str(lab_data), "written": done.exported.written},
            }
        )
    )


audit_app = typer.Typer(help="The verification audit trail (audit.jsonl).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("check")
def audit_check(
    path: Annotated[Path, typer.Argument(help="audit.jsonl, or the report folder holding it.")],
) -> None:
    """Check the hash chain of the audit log: exit 1 and name each break."""
    from wbcproc.audit import LOG_NAME, check

    log_path = path / LOG_NAME if path.is_dir() else path
    rep = check(log_path)
    if not rep.ok:
        for p in rep.problems:
            typer.echo(f"{log_path}: {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{log_path}: {rep.entries} entries, chain intact")


@app.command()
def adapt(
    data: Annotated[
        list[Path],
        typer.Option("--data", help="The laboratory's reviewed cells: `wbc export-reviewed` output or class folders."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder for the adapted model.onnx + sidecar.")],
    model: Annotated[Path | None, typer.Option(help="Model to adapt (default: the model in use).")] = None,
    min_per_class: Annotated[
        int, typer.Option("--min-per-class", min=1, help="Refuse a reviewed class with fewer fitted cells.")
    ] = defaults.MIN_PER_CLASS,
    holdout: Annotated[
        float,
        typer.Option(
            "--holdout",
            min=0.0,
            max=0.5,
            help=f"Share of the lab's cells held out to check it; >= {defaults.LAB_GUARD_MIN_CELLS} held-out cells "
            f"scored >= {defaults.LAB_GUARD_MIN_ACCURACY} validate the lab, so its samples lose DOMAIN_SHIFT.",
        ),
    ] = defaults.HOLDOUT_FRACTION,
    version: Annotated[str | None, typer.Option(help="Version (default: parent version + lab timestamp).")] = None,
    stage: Annotated[
        bool,
        typer.Option(
            "--stage/--head-only",
            help="Fine-tune the last ResNet stage and the head (two to three minutes for 200 cells), or refit the head alone (seconds).",
        ),
    ] = True,
    route: Annotated[
        bool,
        typer.Option(
            "--route/--single-model",
            help="Where the lab's slides look unlike the original laboratory's, ship the parent beside the adapted "
            "model and let each slide be read by the model whose laboratory it looks like (docs/adapting.md); or "
            "always one model.",
        ),
    ] = True,
) -> None:
    """Adapt the model to your laboratory from its reviewed cells, on the CPU, in minutes
    (docs/adapting.md); then `wbc models register OUT` and `wbc models promote VERSION`."""
    try:
        from training.adapt import AdaptError
        from training.adapt import adapt as run_adapt
    except ImportError as exc:
        raise _fail(f"wbc adapt needs the [train] extra ({exc.name} is missing): pip install 'wbc[train]'") from None
    from wbcproc.model import ModelError

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
            log=lambda m: typer.echo(m, err=True),
        )
    except (AdaptError, ModelError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(res))


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Model .onnx with its sidecar.")],
    data: Annotated[list[Path], typer.Option("--data", help="Root of class folders (repeatable).")],
    split: Annotated[str, typer.Option(help="all | train | val | test (by content hash, as in training).")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Score any model on a labelled folder tree (accuracy, per-class F1, macro-F1, confusion)."""
    from training.evaluate import evaluate_model
    from wbcproc.model import ModelError

    if split not in ("all", "train", "val", "test"):
        raise _fail(f"--split {split!r}: expected all, train, val or test", 2)
    try:
        m = evaluate_model(model, [str(d) for d in data], split=split)
    except (ModelError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(m, indent=2))
        return
    typer.echo(f"n={m['n']} accuracy={m['accuracy']:.4f} macro-F1={m['macro_f1']:.4f} rejected={len(m['rejected'])}")
    for c, v in m["per_class"].items():
        typer.echo(f"  {c:<13} P={v['precision']:.3f} R={v['recall']:.3f} F1={v['f1']:.3f} n={v['support']}")


@models_app.command("list")
def models_list() -> None:
    """List registered model versions; * marks the current one."""
    from wbcproc.registry import Registry

    reg = Registry.default()
    entries = reg.list()
    if not entries:
        typer.echo(f"no models registered in {reg.root}")
    for e in entries:
        f1 = e.metrics.get("macro_f1")
        typer.echo(
            f"{'*' if e.current else ' '} {e.version:<22} {e.name:<16} macro-F1 "
            f"{'-' if f1 is None else f'{f1:.4f}'}  sha256 {e.sha256[:12]}"
        )


@models_app.command("show")
def models_show(version: str) -> None:
    """Print a version's sidecar."""
    from wbcproc.registry import Registry, RegistryError

    try:
        typer.echo(json.dumps(Registry.default().show(version), indent=2))
    except RegistryError as exc:
        raise _fail(str(exc)) from None


@models_app.command("register")
def models_register(run_dir: Path) -> None:
    """Copy a training run's model into the registry (does not make it current)."""
    from wbcproc.model import ModelError
    from wbcproc.registry import Registry, RegistryError

    try:
        typer.echo(Registry.default().register(run_dir))
    except (ModelError, RegistryError) as exc:
        raise _fail(str(exc)) from None


@models_app.command("promote")
def models_promote(
    version: str, reason: Annotated[str, typer.Option(help="Why (kept in history).")] = "manual"
) -> None:
    """Make a registered version current (refused if it fails its checks)."""
    from wbcproc.registry import Registry, RegistryError

    try:
        Registry.default().promote(version, reason=reason)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"current model: {version}")


def _plain_metavars(cmd) -> None:
    """Argument names in capitals in the usage line (``wbc process [OPTIONS] {FOLDERS}...``: typer writes
    required arguments in braces) rather than the lower-case parameter names."""
    for p in cmd.params:
        if p.param_type_name == "argument":
            p.metavar = p.name.upper()
    for sub in getattr(cmd, "commands", {}).values():
        _plain_metavars(sub)


def command():
    """The click command behind ``wbc`` (for ``main`` and tests of the help text)."""
    cmd = typer.main.get_command(app)
    _plain_metavars(cmd)
    return cmd


def main() -> None:
    command()()


if __name__ == "__main__":
    main()

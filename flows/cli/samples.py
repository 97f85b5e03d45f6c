"""``wbc info``, ``process``, ``classify`` and ``locate``: a sample folder or images in, a report or lines out."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli._app import JsonOut, _fail, _load_settings, app
from wbcproc import __version__


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
    jsonl: JsonOut = False,
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
def locate(
    images: Annotated[list[Path], typer.Argument(help="Smear field images.")],
    model: Annotated[Path | None, typer.Option(help="Model for the crops (default: the model in use).")] = None,
    jsonl: JsonOut = False,
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

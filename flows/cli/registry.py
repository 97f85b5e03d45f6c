"""``wbc models``: the model registry (list, show, register, promote)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli._app import _fail, models_app


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
def models_show(version: Annotated[str, typer.Argument(help="A registered version (see wbc models list).")]) -> None:
    """Print a version's sidecar."""
    from wbcproc.registry import Registry, RegistryError

    try:
        typer.echo(json.dumps(Registry.default().show(version), indent=2))
    except RegistryError as exc:
        raise _fail(str(exc)) from None


@models_app.command("register")
def models_register(
    run_dir: Annotated[Path, typer.Argument(help="A run folder of wbc train or wbc adapt (model.onnx + sidecar).")],
) -> None:
    """Copy a training run's model into the registry (does not make it current)."""
    from wbcproc.model import ModelError
    from wbcproc.registry import Registry, RegistryError

    try:
        typer.echo(Registry.default().register(run_dir))
    except (ModelError, RegistryError) as exc:
        raise _fail(str(exc)) from None


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="A registered version (see wbc models list).")],
    reason: Annotated[str, typer.Option(help="Why (kept in history).")] = "manual",
) -> None:
    """Make a registered version current (refused if it fails its checks)."""
    from wbcproc.registry import Registry, RegistryError

    try:
        Registry.default().promote(version, reason=reason)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"current model: {version}")

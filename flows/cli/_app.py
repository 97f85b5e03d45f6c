"""The ``wbc`` Typer application and what every command group shares: failing with one line, loading
settings, printing a result as text or ``--json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from wbcproc import __version__

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
audit_app = typer.Typer(help="The verification audit trail (audit.jsonl).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
accounts_app = typer.Typer(help="Accounts of the review app: who may review and who may sign.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")


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


# ``--json`` means the same on every command that prints results: machine output (one JSON object, or one
# per line where a command prints a line per input) instead of text for a person
JsonOut = Annotated[
    bool,
    typer.Option("--json", help="Print machine output: JSON (one object per line for per-file results), not text."),
]


def _emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    """The command's result on standard output: ``result`` as one JSON line, or ``text`` for a person."""
    typer.echo(json.dumps(result, ensure_ascii=False) if as_json else text)


def _fail(msg: str, code: int = 1) -> typer.Exit:
    typer.echo(f"wbc: {msg}", err=True)
    return typer.Exit(code)


def _load_settings(config: Path | None):
    from wbcproc.config import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None

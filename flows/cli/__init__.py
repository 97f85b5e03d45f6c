"""The ``wbc`` command line.

Prefect is imported only by the commands that run flows, so ``wbc classify`` and ``wbc info`` start in
well under a second.  ``wbc process`` runs the ``process-sample`` flow when a Prefect server is configured
(``PREFECT_API_URL``) or ``--prefect`` is given, and otherwise calls the same pipeline functions
directly: Prefect's server-less mode starts a temporary server per process (measured in docs/commands.md),
has no UI, and so only adds seconds to the common command-line path.
"""

from __future__ import annotations

import sys

import typer

# each module registers its commands on ``app`` when imported; the order here is the order of ``wbc --help``
# isort: off
from flows.cli import samples  # noqa: F401
from flows.cli import service  # noqa: F401
from flows.cli import learning  # noqa: F401
from flows.cli import review  # noqa: F401
from flows.cli import registry  # noqa: F401

# isort: on
from flows.cli._app import app
from flows.cli.learning import train

__all__ = ["app", "command", "main", "train"]


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


# Option names of earlier releases, still accepted so that scripts keep working, but not listed in --help:
# one name per meaning (the laboratory's data folder is --lab-data everywhere, a report folder --reports).
OLD_OPTIONS = {
    "adapt": {"--data": "--lab-data"},
    "classify": {"--jsonl": "--json"},
    "locate": {"--jsonl": "--json"},
    "export-reviewed": {"--out": "--lab-data"},
    "reviewed": {"--out": "--lab-data"},
    "serve": {"--train-data": "--lab-data"},
    "train": {"--time-budget": "--time-budget-seconds"},
    "verify": {"--out": "--reports"},
}


def new_option_names(argv: list[str]) -> list[str]:
    """``argv`` with a command's old option names replaced by today's (``--out=X`` too; nothing after ``--``)."""
    table = OLD_OPTIONS.get(argv[0], {}) if argv else {}
    out = argv[:1]
    for i, token in enumerate(argv[1:], start=1):
        if token == "--":
            return out + argv[i:]
        name, eq, value = token.partition("=")
        if name in table:
            print(f"wbc: {argv[0]} {name} is now {table[name]} (the old name still works)", file=sys.stderr)
        out.append(table[name] + eq + value if name in table else token)
    return out


def main() -> None:
    """Run ``wbc``; a usage error (an unknown option, a value outside its choices or range) is one line on
    stderr naming the command, with exit code 2, like every other refusal of the CLI."""
    from typer import Abort

    # typer vendors click (its version pinned in constraints.txt)
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        code = command().main(args=new_option_names(sys.argv[1:]), prog_name="wbc", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `wbc` or a group alone: its help, as click shows it
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "wbc"
        message = exc.format_message().replace("Value error, ", "")
        print(f"{where}: {message} (see {where} --help)", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except Abort:
        print("wbc: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

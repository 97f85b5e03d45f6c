"""``wbc export-reviewed``, ``verify`` and ``audit``: from a reviewed workbook to a signed final report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli._app import JsonOut, _emit, _fail, accounts_app, app, audit_app
from wbcproc import defaults


@app.command("export-reviewed")
@app.command("reviewed", hidden=True, help="Old name of export-reviewed (still accepted).")
def export_reviewed_cmd(
    workbooks: Annotated[
        list[Path], typer.Argument(help="Report workbooks (.xlsx) with the 'Reviewed class' filled in.")
    ],
    sample: Annotated[
        list[Path], typer.Option("--sample", help="The sample folder of each workbook, in the same order.")
    ],
    out: Annotated[Path, typer.Option("--lab-data", help="Laboratory data root to add the reviewed cells to.")],
    as_json: JsonOut = False,
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
    n = sum(total.values())
    shown = ", ".join(f"{k} {v}" for k, v in total.items() if v) or "none"
    _emit({"out": str(out), "written": total}, as_json, f"{n} reviewed cells added to {out} ({shown})")


@app.command()
def verify(
    workbook: Annotated[Path, typer.Argument(help="The report workbook with 'Reviewed class' filled in and saved.")],
    by: Annotated[
        str | None, typer.Option("--by", help="Verifier's name (else the Summary sheet's 'Verified by' cell).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--reports", help="Folder of the preliminary report (default: the workbook's folder)."),
    ] = None,
    sample: Annotated[
        Path | None, typer.Option("--sample", help="The sample folder: copies the verified cells to --lab-data.")
    ] = None,
    lab_data: Annotated[
        Path | None,
        typer.Option("--lab-data", help="Laboratory data root for adaptation (wbc export-reviewed format)."),
    ] = None,
    as_json: JsonOut = False,
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
    result = {
        "final": {k: str(v) for k, v in done.paths.items()},
        "version": done.version,
        "verified_by": done.result["verified_by"],
        "changes": len(done.changes),
        "audit_seq": done.audit_entry["seq"],
        "lab_data": None if done.exported is None else {"root": str(lab_data), "written": done.exported.written},
    }
    _emit(
        result,
        as_json,
        f"signed by {result['verified_by']} (final version {done.version}, {len(done.changes)} cells changed, "
        f"audit entry {result['audit_seq']}): {result['final']['json']}",
    )


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


_Accounts = Annotated[
    Path | None, typer.Option("--accounts", help="The accounts file (default: $WBC_HOME/accounts.json).")
]


@app.command()
def review(
    reports: Annotated[
        Path, typer.Option("--reports", help="The report folder (wbc process --out; served: <home>/reports).")
    ],
    samples: Annotated[
        list[Path] | None,
        typer.Option(
            "--samples", help="Where the sample folders are (inbox, archive): verified cells go to --lab-data."
        ),
    ] = None,
    lab_data: Annotated[
        Path | None, typer.Option("--lab-data", help="Laboratory data root the verified cells are exported to.")
    ] = None,
    accounts: _Accounts = None,
    suggested: Annotated[
        Path | None,
        typer.Option(
            "--suggested",
            help="`wbc adapt --suggest`'s suggested.csv: its cells are marked (A) for review in their slides.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = defaults.HOST,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the review app.")] = defaults.REVIEW_PORT,
    idle_minutes: Annotated[
        float, typer.Option("--idle-minutes", min=1.0, help="A session ends after this long without a request.")
    ] = defaults.SESSION_IDLE_MIN,
) -> None:
    """Review and sign in the browser: the worklist, each slide's cells by class, drafts, signing."""
    import uvicorn

    from wbcproc.review.accounts import AccountError, default_accounts_file
    from wbcproc.review.app import ReviewConfig, create_app

    if not reports.is_dir():
        raise _fail(f"--reports {str(reports)!r} is not a folder of reports", 2)
    if suggested is not None and not suggested.is_file():
        raise _fail(f"--suggested {str(suggested)!r} is not a file (wbc adapt --suggest writes suggested.csv)", 2)
    cfg = ReviewConfig(
        reports=reports, accounts=accounts or default_accounts_file(), sample_roots=list(samples or []),
        lab_data=lab_data, idle_minutes=idle_minutes, suggested=suggested,
    )  # fmt: skip
    try:
        web = create_app(cfg)
    except AccountError as exc:
        raise _fail(str(exc), 2) from None
    typer.echo(f"review app on http://{host}:{port}/ (reports {reports}; accounts {cfg.accounts})", err=True)
    uvicorn.run(web, host=host, port=port, log_level="warning")


@accounts_app.command("add")
def accounts_add(
    name: Annotated[str, typer.Argument(help="Login name: lower-case letters, digits, '.', '_', '-'.")],
    role: Annotated[str, typer.Option(help="reviewer (reclassify and save) or signer (also sign).")] = "reviewer",
    display: Annotated[
        str | None, typer.Option("--display", help="The name reports are signed with (default: NAME).")
    ] = None,
    accounts: _Accounts = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of standard input.")
    ] = False,
) -> None:
    """Create an account (or replace its password and role); the password is asked for twice."""
    import sys

    from wbcproc.review.accounts import AccountError, add_account, default_accounts_file

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    path = accounts or default_accounts_file()
    try:
        acct = add_account(path, name, password, role=role, display=display)
    except AccountError as exc:
        raise _fail(str(exc), 2) from None
    typer.echo(f"{path}: account {acct.name!r} ({', '.join(acct.roles)}), signs as {acct.display!r}")


@accounts_app.command("list")
def accounts_list(accounts: _Accounts = None) -> None:
    """The accounts, their roles and the names they sign with (never a password or hash)."""
    from wbcproc.review.accounts import AccountError, default_accounts_file, load_accounts

    path = accounts or default_accounts_file()
    try:
        found = load_accounts(path)
    except AccountError as exc:
        raise _fail(str(exc), 2) from None
    for a in found.values():
        typer.echo(f"{a.name}\t{','.join(a.roles)}\t{a.display}")
    if not found:
        typer.echo(f"no accounts in {path}: wbc accounts add NAME --role signer", err=True)

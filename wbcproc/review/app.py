"""The review app: a worklist, a slide's cells as a gallery by class, drafts, and signing, behind a login.

Built on Starlette and Jinja2 (both come with Prefect) and a little plain JavaScript (``static/review.js``),
no front-end build.  :func:`create_app` returns the ASGI app; ``wbc review`` and ``wbc serve`` run it with
uvicorn, bound to 127.0.0.1 unless told otherwise.  Every state-changing request needs a live session and
its CSRF token; signing needs the ``signer`` role and goes through :func:`wbcproc.verify.sign`, as workbook
verification does.  Every action is appended to ``<reports>/review-audit.jsonl`` (hash-chained,
:mod:`wbcproc.audit`) with the account.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from wbcproc.audit import append
from wbcproc.bounded import TooLarge
from wbcproc.review import drafts, slides
from wbcproc.review.accounts import AccountError, authenticate, load_accounts
from wbcproc.review.sessions import Session, Sessions
from wbcproc.suggested import Suggested
from wbcproc.verify import check_corrections, sign

log = logging.getLogger("wbc.review")

HERE = Path(__file__).resolve().parent
COOKIE = "wbc_review"
REVIEW_AUDIT = "review-audit.jsonl"


@dataclass
class ReviewConfig:
    reports: Path  # the report folder (``wbc process --out``, the service's reports/)
    accounts: Path  # the accounts file (``wbc accounts add``)
    sample_roots: list[Path] = field(default_factory=list)  # where sample folders are found (inbox, archive)
    lab_data: Path | None = None  # where verified cells are exported for ``wbc adapt``
    suggested: Path | None = None  # ``wbc adapt --suggest``'s suggested.csv: those cells are marked for adaptation
    idle_minutes: float = 30.0  # a session ends after this long without a request
    secure_cookie: bool = False  # set the cookie's Secure attribute (behind HTTPS)


def check_accounts(path: Path) -> None:
    """Refuse to start without an account: a review app anyone can sign in is not a signature."""
    if not load_accounts(path):
        raise AccountError(
            f"no accounts in {str(path)!r}: create one with 'wbc accounts add NAME --role signer' "
            "(the review app needs a login for every reviewer and signer)"
        )


class _Review:
    """The handlers, sharing the configuration, sessions, templates and thumbnail cache."""

    def __init__(self, config: ReviewConfig, sessions: Sessions | None) -> None:
        self.config = config
        self.sessions = sessions or Sessions(idle=config.idle_minutes * 60)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.thumbnails = slides.Thumbnails()
        self.reports = Path(config.reports)

    def audit(self, event: str, who: str | None, request: Request, **details: Any) -> None:
        client = request.client.host if request.client else None
        append(self.reports / REVIEW_AUDIT, {"event": event, "account": who, "client": client, **details})

    def current(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def page(self, request: Request, name: str, session: Session | None, **ctx: Any) -> Response:
        return self.templates.TemplateResponse(request, name, {"session": session, **ctx})

    def to_login(self, request: Request) -> Response:
        return RedirectResponse(f"{request.url_for('login')}?next={quote(request.url.path)}", status_code=303)

    def guarded(self, request: Request, *, role: str | None = None) -> Session | JSONResponse:
        """The session of a state-changing request (JSON), or the refusal to send."""
        s = self.current(request)
        if s is None:
            return JSONResponse({"error": "log in first (no session, or it has expired)"}, status_code=401)
        if not s.csrf_ok(request.headers.get("x-csrf-token")):
            self.audit("csrf_refused", s.account.name, request, path=request.url.path)
            return JSONResponse({"error": "missing or wrong CSRF token: reload the page"}, status_code=403)
        if role and not s.account.may(role):
            self.audit(f"{role}_refused", s.account.name, request, path=request.url.path)
            return JSONResponse({"error": f"account {s.account.name!r} lacks the {role} role"}, status_code=403)
        return s

    def suggested(self) -> Suggested:
        """The cells chosen for review by ``wbc adapt --suggest`` (none when the list is absent or too large)."""
        try:
            return slides.load_suggested(self.config.suggested)
        except (TooLarge, OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            log.warning("suggestions not shown: %s", exc)
            return {}

    def report_of(self, report_id: str) -> tuple[slides.Entry, dict[str, Any]] | None:
        entry = slides.find(self.reports, report_id)
        report = slides.read_report(entry.path) if entry else None
        return (entry, report) if entry and report else None

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.page(request, "login.html", None, next=request.query_params.get("next", "/"), message=None)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8")).items()}
        name, password = form.get("name", "").strip().lower(), form.get("password", "")
        nxt = form.get("next", "/") if form.get("next", "/").startswith("/") else "/"
        keys = (f"name:{name}", f"client:{request.client.host if request.client else ''}")
        if self.sessions.locked_out(*keys):
            self.audit("login_locked_out", name, request)
            msg = "too many failed logins: try again in 15 minutes"
            return self.page(request, "login.html", None, next=nxt, message=msg)
        account = authenticate(self.config.accounts, name, password)
        if account is None:
            self.sessions.failed(*keys)
            self.audit("login_failed", name, request)
            return self.page(request, "login.html", None, next=nxt, message="wrong account name or password")
        self.sessions.succeeded(*keys)
        s = self.sessions.start(account)
        self.audit("login", account.name, request)
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, s.token, httponly=True, samesite="strict", secure=self.config.secure_cookie, path="/")
        return resp

    async def logout(self, request: Request) -> Response:
        s = self.current(request)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8")).items()}
        if s is not None and s.csrf_ok(form.get("csrf")):
            self.sessions.end(s.token)
            self.audit("logout", s.account.name, request)
        resp = RedirectResponse(str(request.url_for("login")), status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    async def worklist(self, request: Request) -> Response:
        s = self.current(request)
        if s is None:
            return self.to_login(request)
        entries = slides.worklist(self.reports)
        awaiting = [e for e in entries if e.awaiting]
        self.thumbnails.warm([(e.path, r) for e in awaiting[:8] if (r := slides.read_report(e.path)) is not None])
        q = request.query_params.get("q", "").strip()
        done = [e for e in entries if not e.awaiting and q.lower() in e.sample_id.lower()]
        return self.page(request, "worklist.html", s, awaiting=awaiting, verified=done, q=q)

    async def slide(self, request: Request) -> Response:
        s = self.current(request)
        if s is None:
            return self.to_login(request)
        found = self.report_of(request.path_params["report_id"])
        if found is None:
            return Response("no such report", status_code=404)
        entry, report = found
        self.thumbnails.warm([(entry.path, report)])
        others = [
            a
            for a in drafts.active_reviewers(drafts.load_draft(self.reports, report["report_id"]))
            if a != s.account.name
        ]
        drafts.touch(self.reports, report["report_id"], s.account.name)
        self.audit("open", s.account.name, request, report_id=report["report_id"], sample_id=report["sample_id"])
        base = str(request.url_for("slide", report_id=report["report_id"])) + "/"
        return self.page(
            request, "slide.html", s, report=report, entry=entry, others=others, classes=slides.CLASSES,
            state=slides.slide(self.reports, report, self.suggested()), thumbs=base + "thumbs/", base=base,
        )  # fmt: skip

    async def state(self, request: Request) -> Response:
        s = self.current(request)
        found = self.report_of(request.path_params["report_id"])
        if s is None or found is None:
            return JSONResponse(
                {"error": "log in first" if s is None else "no such report"}, status_code=401 if s is None else 404
            )
        return JSONResponse(slides.slide(self.reports, found[1], self.suggested()))

    async def save(self, request: Request) -> Response:
        s = self.guarded(request)
        if isinstance(s, JSONResponse):
            return s
        found = self.report_of(request.path_params["report_id"])
        if found is None:
            return JSONResponse({"error": "no such report"}, status_code=404)
        report = found[1]
        body = await request.json()
        files = {c["file"] for c in report["cells"]}
        try:
            changes, base_version = dict(body.get("changes", {})), int(body.get("base_version", 0))
            saved = drafts.save(self.reports, report["report_id"], changes, base_version, s.account.name, files)
        except drafts.DraftConflict as exc:
            self.audit("save_conflict", s.account.name, request, report_id=report["report_id"], cells=sorted(exc.cells))
            return JSONResponse(
                {"error": str(exc), "state": slides.slide(self.reports, report, self.suggested())}, status_code=409
            )
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        rid, version = report["report_id"], saved.draft["version"]
        self.audit("save", s.account.name, request, report_id=rid, version=version, changes=changes)
        return JSONResponse({"state": slides.slide(self.reports, report, self.suggested()), "merged": saved.merged})

    async def sign_slide(self, request: Request) -> Response:
        s = self.guarded(request, role="signer")
        if isinstance(s, JSONResponse):
            return s
        found = self.report_of(request.path_params["report_id"])
        if found is None:
            return JSONResponse({"error": "no such report"}, status_code=404)
        entry, report = found
        draft_file = drafts.draft_path(self.reports, report["report_id"])
        reviewed = drafts.reviewed_classes(drafts.load_draft(self.reports, report["report_id"]))
        problems = check_corrections(report, reviewed, s.account.display)
        if problems:
            self.audit("sign_refused", s.account.name, request, report_id=report["report_id"], problems=problems)
            return JSONResponse({"error": "not signed", "problems": problems}, status_code=422)
        read = {"draft": hashlib.sha256(draft_file.read_bytes()).hexdigest()} if draft_file.is_file() else {}
        done = sign(
            self.reports, entry.path, report, reviewed, signer=s.account.display, channel="browser",
            account=s.account.name, read=read, sample_roots=self.config.sample_roots, lab_data=self.config.lab_data,
        )  # fmt: skip
        self.audit("sign", s.account.name, request, report_id=report["report_id"], final=done.paths["json"].name)
        files = [p.name for p in done.paths.values()]
        return JSONResponse({"files": files, "notes": done.notes, "version": done.version})

    async def thumb(self, request: Request) -> Response:
        if self.current(request) is None:
            return Response(status_code=401)
        found = self.report_of(request.path_params["report_id"])
        png = self.thumbnails.get(found[0].path, found[1], int(request.path_params["n"])) if found else None
        if png is None:
            return Response(status_code=404)
        # a report's thumbnails never change (a new report gets a new id): the browser keeps them
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})

    async def field(self, request: Request) -> Response:
        """A field image's overview (every box drawn and labelled), for the enlarged view of its cells."""
        if self.current(request) is None:
            return Response(status_code=401)
        found = self.report_of(request.path_params["report_id"])
        path = slides.overview(self.reports, found[1], int(request.path_params["n"])) if found else None
        if path is None:
            return Response(status_code=404)
        return Response(
            path.read_bytes(), media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"}
        )


def create_app(config: ReviewConfig, *, sessions: Sessions | None = None) -> Starlette:
    """The review app over ``config.reports``; refuses (:class:`AccountError`) without an account."""
    check_accounts(config.accounts)
    r = _Review(config, sessions)
    routes = [
        Route("/", r.worklist, name="worklist"),
        Route("/login", r.login, methods=["GET", "POST"], name="login"),
        Route("/logout", r.logout, methods=["POST"], name="logout"),
        Route("/slides/{report_id}", r.slide, name="slide"),
        Route("/slides/{report_id}/state", r.state, name="state"),
        Route("/slides/{report_id}/draft", r.save, methods=["POST"], name="draft"),
        Route("/slides/{report_id}/sign", r.sign_slide, methods=["POST"], name="sign"),
        Route("/slides/{report_id}/thumbs/{n:int}", r.thumb, name="thumb"),
        Route("/slides/{report_id}/fields/{n:int}", r.field, name="field"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.sessions = r.sessions
    app.state.config = config
    return app

"""The review app over HTTP: login, roles, CSRF, drafts that merge and survive a restart, and signing through
the same code as the workbook - real reports from the real pipeline (tiny ONNX model, real fixture cells),
the real app served by uvicorn on a loopback port, spoken to over HTTP."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import httpx
import pytest
from helpers import CELLS, edit_workbook, review_plan, served

from wbcproc.audit import check, read_entries
from wbcproc.pipeline import process_sample
from wbcproc.review.accounts import AccountError, add_account, authenticate
from wbcproc.review.app import REVIEW_AUDIT, ReviewConfig, create_app
from wbcproc.review.sessions import MAX_FAILURES, Sessions
from wbcproc.verify import verify

PASSWORD = "a long enough password"


@pytest.fixture
def reports(tmp_path, sample, tiny_model) -> Path:
    out = tmp_path / "reports"
    process_sample(sample, out, model=tiny_model)
    return out


@pytest.fixture
def accounts(tmp_path) -> Path:
    path = tmp_path / "accounts.json"
    add_account(path, "ana", PASSWORD, role="signer", display="Dr A. Example")
    add_account(path, "rob", PASSWORD, role="reviewer")
    return path


@pytest.fixture
def serve():
    """Start review apps (each a server process stand-in); ``serve(reports, accounts) -> base URL``."""
    stack = []

    def start(reports: Path, accounts: Path, **kw) -> str:
        cm = served(create_app(ReviewConfig(reports=reports, accounts=accounts), **kw))
        stack.append(cm)
        return cm.__enter__()

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def _client(url: str) -> httpx.Client:
    """A browser stand-in: its own cookie jar."""
    return httpx.Client(base_url=url, follow_redirects=False, timeout=30)


def _login(client: httpx.Client, name: str, password: str = PASSWORD) -> str:
    """Log in; the CSRF token of the new session (read from a page, as the browser has it)."""
    r = client.post("/login", data={"name": name, "password": password, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    prelim = client.get("/")
    assert prelim.status_code == 200
    return prelim.text.split('name="csrf" value="')[1].split('"')[0]


def _report(reports: Path) -> dict:
    return json.loads((reports / "S-001.json").read_text())


def test_the_app_refuses_to_start_without_an_account(tmp_path, reports):
    with pytest.raises(AccountError, match="wbc accounts add NAME --role signer"):
        create_app(ReviewConfig(reports=reports, accounts=tmp_path / "none.json"))


def test_accounts_keep_hashes_never_passwords(accounts):
    text = accounts.read_text()
    assert PASSWORD not in text and "$argon2id$" in text
    assert authenticate(accounts, "ana", PASSWORD).roles == ("reviewer", "signer")
    assert authenticate(accounts, "ana", PASSWORD + "x") is None and authenticate(accounts, "zed", PASSWORD) is None
    with pytest.raises(AccountError, match="at least 10"):
        add_account(accounts, "eve", "short", role="reviewer")
    with pytest.raises(AccountError, match="role 'admin'"):
        add_account(accounts, "eve", PASSWORD, role="admin")


def test_nothing_without_a_login_and_failed_logins_are_limited(reports, accounts, serve):
    client = _client(serve(reports, accounts))
    rid = _report(reports)["report_id"]
    assert client.get("/").status_code == 303 and "/login" in client.get("/").headers["location"]
    assert client.get(f"/slides/{rid}").status_code == 303
    assert client.get(f"/slides/{rid}/thumbs/0").status_code == 401
    assert client.post(f"/slides/{rid}/draft", json={"changes": {}}).status_code == 401
    assert client.post(f"/slides/{rid}/sign", json={}).status_code == 401
    for _ in range(MAX_FAILURES):
        r = client.post("/login", data={"name": "ana", "password": "wrong password!"})
        assert r.status_code == 200 and "wrong account name or password" in r.text
    r = client.post("/login", data={"name": "ana", "password": PASSWORD})  # the right one, too late
    assert r.status_code == 200 and "too many failed logins" in r.text
    events = [e["event"] for e in read_entries(reports / REVIEW_AUDIT)]
    assert events.count("login_failed") == MAX_FAILURES and events[-1] == "login_locked_out"


def test_csrf_roles_and_session_expiry(reports, accounts, serve):
    now = [0.0]
    client = _client(serve(reports, accounts, sessions=Sessions(idle=600, clock=lambda: now[0])))
    rid = _report(reports)["report_id"]
    csrf = _login(client, "rob")
    cell = _report(reports)["cells"][0]
    change = {"base_version": 0, "changes": {cell["file"]: "monocyte"}}
    assert client.post(f"/slides/{rid}/draft", json=change).status_code == 403  # no token
    assert client.post(f"/slides/{rid}/draft", json=change, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post(f"/slides/{rid}/draft", json=change, headers={"X-CSRF-Token": csrf}).status_code == 200
    r = client.post(f"/slides/{rid}/sign", json={}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403 and "signer" in r.json()["error"]  # a reviewer cannot sign
    now[0] += 601  # idle for longer than a session lives
    assert client.post(f"/slides/{rid}/draft", json=change, headers={"X-CSRF-Token": csrf}).status_code == 401
    assert client.get("/").status_code == 303
    events = [e for e in read_entries(reports / REVIEW_AUDIT)]
    assert [e["event"] for e in events if e["account"] == "rob"] == [
        "login", "csrf_refused", "csrf_refused", "save", "signer_refused"]  # fmt: skip
    assert check(reports / REVIEW_AUDIT).ok


def test_drafts_merge_refuse_a_conflict_and_survive_a_restart(reports, accounts, serve):
    rid = _report(reports)["report_id"]
    cells = _report(reports)["cells"]
    url = serve(reports, accounts)
    ana, rob = _client(url), _client(url)
    ca, cr = _login(ana, "ana"), _login(rob, "rob")
    assert "Also reviewing" not in ana.get(f"/slides/{rid}").text
    assert "Also reviewing this slide: ana" in rob.get(f"/slides/{rid}").text
    r = ana.post(f"/slides/{rid}/draft", json={"base_version": 0, "changes": {cells[0]["file"]: "monocyte"}},
                 headers={"X-CSRF-Token": ca})  # fmt: skip
    assert r.status_code == 200 and r.json()["state"]["draft_version"] == 1
    # rob started from version 0 too: his other cell is merged beside ana's, nothing lost
    r = rob.post(f"/slides/{rid}/draft", json={"base_version": 0, "changes": {cells[1]["file"]: "basophil"}},
                 headers={"X-CSRF-Token": cr})  # fmt: skip
    assert r.status_code == 200 and r.json()["merged"] == 1
    # ... but the cell ana set, set to another class from the old version, is a conflict: refused, both kept
    r = rob.post(f"/slides/{rid}/draft", json={"base_version": 0, "changes": {cells[0]["file"]: "eosinophil"}},
                 headers={"X-CSRF-Token": cr})  # fmt: skip
    assert r.status_code == 409 and "changed meanwhile by ana" in r.json()["error"]
    restarted = _client(serve(reports, accounts))  # a new server: sessions gone, the draft on disk
    _login(restarted, "rob")
    state = restarted.get(f"/slides/{rid}/state").json()
    got = {c["file"]: c["class"] for c in state["cells"] if c["reviewed"]}
    assert got == {cells[0]["file"]: "monocyte", cells[1]["file"]: "basophil"} and state["draft_version"] == 2


def _comparable(final: dict) -> dict:
    """A final report less what differs between two signatures of the same corrections: ids, times, the
    channel, what the corrections were read from, and the audit trail that records them."""
    out = copy.deepcopy(final)
    for k in ("report_id", "verified_at", "hashes", "audit"):
        out.pop(k)
    return out


def test_browser_and_workbook_sign_the_same_final_report(tmp_path, reports, accounts, serve):
    prelim = _report(reports)
    rid = prelim["report_id"]
    plan = review_plan(prelim)  # every marked cell confirmed, three reclassified
    twin = tmp_path / "twin"
    shutil.copytree(reports, twin)
    client = _client(serve(reports, accounts))
    csrf = _login(client, "ana")
    page = client.get(f"/slides/{rid}")
    assert page.status_code == 200 and "Sign as Dr A. Example" in page.text
    first = {f: c for f, c in list(plan.items())[:1]}
    r = client.post(f"/slides/{rid}/draft", json={"base_version": 0, "changes": first}, headers={"X-CSRF-Token": csrf})
    r = client.post(f"/slides/{rid}/sign", json={}, headers={"X-CSRF-Token": csrf})
    if len(plan) > 1:
        assert r.status_code == 422 and "marked REVIEW have no reviewed class" in r.json()["problems"][0]
    r = client.post(f"/slides/{rid}/draft", json={"base_version": 1, "changes": plan}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["state"]["preview"]["open"] == 0
    r = client.post(f"/slides/{rid}/sign", json={}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    browser = json.loads((reports / "S-001.final.json").read_text())
    done = verify(edit_workbook(twin / "S-001.xlsx", tmp_path / "edited.xlsx", plan), twin)
    workbook = json.loads(done.paths["json"].read_text())
    assert _comparable(browser) == _comparable(workbook)
    assert browser["verified_by"] == "Dr A. Example" and len(browser["changes"]) == 3
    entry = read_entries(reports / "audit.jsonl")[-1]
    assert entry["channel"] == "browser" and entry["account"] == "ana" and entry["hashes"]["draft"]
    assert read_entries(twin / "audit.jsonl")[-1]["channel"] == "workbook"
    fhir = json.loads((reports / "S-001.final.fhir.json").read_text())
    assert fhir["resourceType"] == "Bundle"
    assert "Verified (version 1) by Dr A. Example" in client.get(f"/slides/{rid}").text
    png = client.get(f"/slides/{rid}/thumbs/0")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG" and "immutable" in png.headers["cache-control"]


def test_cells_suggested_for_adaptation_are_marked_in_their_slide(tmp_path, sample, reports, accounts, tiny_model):
    """`wbc adapt --suggest` over the sample folders (the real ranking, tiny model, fixture cells) and `wbc review
    --suggested` its list: exactly the suggested cells of the slide carry the mark, and the slide counts them."""
    from training.suggest import candidates, suggest, write_suggestions

    found = suggest(candidates([sample.parent]), tiny_model, 5)
    csv_path = write_suggestions(found, tmp_path / "to-review")
    rid = _report(reports)["report_id"]
    with served(create_app(ReviewConfig(reports=reports, accounts=accounts, suggested=csv_path))) as url:
        c = _client(url)
        _login(c, "rob")
        state = c.get(f"/slides/{rid}/state").json()
    marked = {x["file"] for x in state["cells"] if x["adapt"]}
    assert marked == {s.path.name for s in found} and state["for_adaptation"] == 5
    (tmp_path / "big.csv").write_bytes(b"rank,copy,source\n" + b"1,a,b\n" * 1_000_000)  # 6 MB: not read
    with served(create_app(ReviewConfig(reports=reports, accounts=accounts, suggested=tmp_path / "big.csv"))) as url:
        c = _client(url)
        _login(c, "rob")
        state = c.get(f"/slides/{rid}/state").json()
    assert state["for_adaptation"] == 0 and not any(x["adapt"] for x in state["cells"])


def test_a_field_cell_shows_where_it_lies_on_its_field(tmp_path, accounts, tiny_model):
    """Field images (the fixture's BCCD smear fields): each cell carries its field's number and its box on that
    field's overview, and the overview is served to a logged-in reviewer only, and only for fields the report
    has."""
    import cv2
    import numpy as np

    fields = tmp_path / "F-1"
    shutil.copytree(CELLS.parent / "fields", fields)
    reports = tmp_path / "reports"
    process_sample(fields, reports, model=tiny_model)
    report = json.loads((reports / "F-1.json").read_text())
    with served(create_app(ReviewConfig(reports=reports, accounts=accounts))) as url:
        c = _client(url)
        assert c.get(f"/slides/{report['report_id']}/fields/0").status_code == 401
        _login(c, "rob")
        cells = c.get(f"/slides/{report['report_id']}/state").json()["cells"]
        assert cells and all(x["field"] is not None for x in cells)
        for x in cells:
            r = c.get(f"/slides/{report['report_id']}/fields/{x['field']['n']}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
            x0, y0, x1, y1 = x["field"]["box"]
            assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
            assert x["field"]["file"] == report["fields"][x["field"]["n"]]["file"]
        assert c.get(f"/slides/{report['report_id']}/fields/{len(report['fields'])}").status_code == 404

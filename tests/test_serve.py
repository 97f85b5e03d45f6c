"""``wbc serve`` end to end: a real Prefect server, a real watchdog observer on a temp inbox."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    copy_cells,
    edit_workbook,
    expected_counts,
    fixture_images,
    libreoffice_edit,
    libreoffice_uno,
    review_plan,
)
from procs import free_port, stop, wait_until

from flows.serve import SERVER_PID_FILE

WBC = str(Path(sys.executable).parent / "wbc")
pytestmark = pytest.mark.slow


class Serve:
    def __init__(self, root: Path, model: Path) -> None:
        self.root = root
        self.inbox, self.out, self.home = root / "inbox", root / "out", root / "home"
        self.port = free_port()
        self.model = model
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}  # kept across restarts
        self.args = ("--quiet-seconds", "2", "--scan-seconds", "0.5", "--retrain-cron", "0 4 * * 1")  # and these

    def start(self, args: tuple[str, ...] | None = None, env: dict[str, str] | None = None) -> None:
        """Start `wbc serve` on this folder's inbox/out/home; wait until it says it is up."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        full_env.update(WBC_HOME=str(self.home), PREFECT_HOME=str(self.root / "prefect"), WBC_MODEL=str(self.model))
        full_env.update(self.env)
        full_env.update(env or {})
        if args is None:
            args = self.args
        log_path = self.root / f"serve-{time.time_ns()}.log"
        self.log = open(log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [WBC, "serve", "--inbox", str(self.inbox), "--out", str(self.out), "--port", str(self.port), *args],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert wait_until(lambda: "wbc serve: UI" in log_path.read_text(errors="replace"), 150), self.text()[-3000:]

    def text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("serve-*.log")))

    def api(self, path: str, body: dict | None = None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST" if body is not None else "GET",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        stop(self.proc, 90)  # systemd's default stop timeout: a service that hangs past it is killed


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    s = Serve(tmp_path_factory.mktemp("serve"), tiny_model)
    cfg = s.root / "wbc.toml"
    cfg.write_text("[outputs]\nhl7 = true\n")  # the LIS message too, as a lab with an HL7 interface runs it
    s.env["WBC_CONFIG"] = str(cfg)
    from wbcproc.review.accounts import add_account

    add_account(s.home / "accounts.json", "ana", "a long enough password", role="signer", display="Dr A. Example")
    s.review_port = free_port()
    s.args = (*s.args, "--review-port", str(s.review_port))
    s.start()
    yield s
    if s.proc and s.proc.poll() is None:
        s.stop()
        assert s.proc.returncode == 0, s.text()[-2000:]
        assert not (s.home / SERVER_PID_FILE).exists(), "a clean stop leaves no server pid for the next start"


def test_slow_copy_is_never_processed_early(served):
    src = fixture_images()[:8]
    dest = served.inbox / "SLOW-1"
    dest.mkdir()
    for p in src:  # one file every 0.8 s: never 2 s quiet until the copy ends
        shutil.copy(p, dest / p.name)
        time.sleep(0.8)
        assert not (served.out / "SLOW-1.json").exists(), "processed on a partial set"
    assert wait_until(lambda: (served.out / "SLOW-1.json").exists(), 60), served.text()[-3000:]
    r = json.loads((served.out / "SLOW-1.json").read_text())
    assert r["cells_classified"] == 8
    assert wait_until(lambda: (served.inbox / "archive" / "SLOW-1").is_dir(), 20)


def test_marker_file_and_ui_run(served):
    dest = served.inbox / "MARK-1"
    copy_cells(dest, 5)
    (dest / "READY").touch()
    assert wait_until(lambda: (served.out / "MARK-1.json").exists(), 60)
    runs = served.api("/flow_runs/filter", {"flow_runs": {"name": {"any_": ["MARK-1"]}}})
    assert wait_until(
        lambda: (
            served.api("/flow_runs/filter", {"flow_runs": {"name": {"any_": ["MARK-1"]}}})[0]["state_type"]
            == "COMPLETED"
        ),
        30,
    )
    assert runs and runs[0]["name"] == "MARK-1"
    arts = served.api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}})
    assert {a["type"] for a in arts} == {"table", "markdown"}


def test_the_review_app_runs_beside_the_ui_and_lists_processed_samples(served):
    import httpx

    dest = served.inbox / "REVIEW-1"
    copy_cells(dest, 4)
    (dest / "READY").touch()
    assert wait_until(lambda: (served.out / "REVIEW-1.json").exists(), 60)
    assert f"review http://127.0.0.1:{served.review_port}" in served.text()
    with httpx.Client(base_url=f"http://127.0.0.1:{served.review_port}", timeout=30) as web:
        assert web.get("/").status_code == 303  # a login first
        r = web.post("/login", data={"name": "ana", "password": "a long enough password"}, follow_redirects=True)
        assert r.status_code == 200 and "REVIEW-1" in r.text and "Dr A. Example" in r.text
        # review and sign there: every marked cell confirmed, one cell moved; the final report set and an audit
        # entry naming the account follow, as signing a workbook would write them
        csrf = r.text.split('name="csrf" value="')[1].split('"')[0]
        report = json.loads((served.out / "REVIEW-1.json").read_text())
        base = f"/slides/{report['report_id']}"
        cells = report["cells"]
        moved = cells[0]["file"]
        to = "basophil" if cells[0]["class"] != "basophil" else "monocyte"
        changes = {c["file"]: c["class"] for c in cells if c.get("review") or c.get("flag_driver")}
        changes[moved] = to
        saved = web.post(base + "/draft", json={"base_version": 0, "changes": changes}, headers={"X-CSRF-Token": csrf})
        assert saved.status_code == 200, saved.text
        version = saved.json()["state"]["draft_version"]
        signed = web.post(base + "/sign", json={"draft_version": version}, headers={"X-CSRF-Token": csrf})
        assert signed.status_code == 200, signed.text
    final = json.loads((served.out / "REVIEW-1.final.json").read_text())
    assert final["status"] == "final" and final["verified_by"] == "Dr A. Example"
    assert [(c["file"], c["verified_class"]) for c in final["changes"]] == [(moved, to)]
    audit = [json.loads(line) for line in (served.out / "audit.jsonl").read_text().splitlines()]
    entry = next(e for e in reversed(audit) if e.get("preliminary_report_id") == report["report_id"])
    assert entry["account"] == "ana" and entry["channel"] == "browser"
    assert any((served.home / "training-data" / "cells" / to).glob("*"))  # the moved cell, for wbc adapt


def test_duplicate_and_changed_redrop(served):
    first = served.inbox / "DUP-1"
    copy_cells(first, 4)
    assert wait_until(
        lambda: (served.out / "DUP-1.json").exists() and (served.inbox / "archive" / "DUP-1").is_dir(), 60
    )
    again = served.inbox / "DUP-1"
    copy_cells(again, 4)  # the same content again
    assert wait_until(lambda: (served.inbox / "archive" / "DUP-1.duplicate").is_dir(), 30), served.text()[-2000:]
    assert not (served.out / "DUP-1.v2.json").exists()
    changed = served.inbox / "DUP-1"
    copy_cells(changed, 6)  # different content under the same name: a new version, never an overwrite
    assert wait_until(lambda: (served.out / "DUP-1.v2.json").exists(), 60)
    assert json.loads((served.out / "DUP-1.json").read_text())["cells_classified"] == 4
    assert json.loads((served.out / "DUP-1.v2.json").read_text())["cells_classified"] == 6


def test_reviewed_workbooks_dropped_into_the_inbox_become_final_reports(served, tmp_path):
    """Three cells edited through openpyxl, and the same three through LibreOffice: each saved workbook
    dropped into <inbox>/reviewed/ gives a final report (then final v2) whose counts reflect exactly those
    changes; a workbook of another sample changes nothing and is set aside with its reason."""
    from wbcproc.audit import check

    folder = served.inbox / "VER-1"
    copy_cells(folder, 12)
    assert wait_until(
        lambda: (served.out / "VER-1.json").exists() and (served.inbox / "archive" / "VER-1").is_dir(), 60
    )
    prelim = json.loads((served.out / "VER-1.json").read_text())
    plan = review_plan(prelim)
    reviewed = served.inbox / "reviewed"
    lab = served.home / "training-data" / "cells"
    earlier = {p for p in lab.rglob("*") if p.is_file()}  # cells other samples' verification exported
    edited = edit_workbook(served.out / "VER-1.xlsx", tmp_path / "VER-1.xlsx", plan)
    shutil.copy(edited, reviewed / "VER-1.xlsx")
    assert wait_until(lambda: (served.out / "VER-1.final.json").exists(), 60), served.text()[-3000:]
    final = json.loads((served.out / "VER-1.final.json").read_text())
    assert final["counts"] == expected_counts(prelim, plan) and len(final["changes"]) == 3
    assert final["verified_by"] == "Dr A. Example"
    assert wait_until(lambda: (reviewed / "done" / "VER-1.xlsx").is_file(), 10)
    # the verified cells reached the lab data folder the weekly retrain reads
    added = [p for p in lab.rglob("*") if p.is_file() and p not in earlier]
    assert sorted(p.parent.name for p in added) == sorted(plan.values())
    if libreoffice_uno() is not None:  # the same three corrections typed in LibreOffice Calc: final v2
        saved = libreoffice_edit(served.out / "VER-1.xlsx", tmp_path / "lo" / "VER-1-calc.xlsx", plan)
        shutil.copy(saved, reviewed / "VER-1-calc.xlsx")
        assert wait_until(lambda: (served.out / "VER-1.final.v2.json").exists(), 90), served.text()[-3000:]
        v2 = json.loads((served.out / "VER-1.final.v2.json").read_text())
        assert v2["counts"] == expected_counts(prelim, plan) and len(v2["changes"]) == 3
    fhir = json.loads((served.out / "VER-1.final.fhir.json").read_text())
    assert fhir["entry"][0]["resource"]["status"] == "final"
    from fhir.resources.R4B.bundle import Bundle

    from wbcproc.report.hl7 import parse

    Bundle.model_validate(fhir)
    msg = parse((served.out / "VER-1.final.hl7").read_bytes().decode())
    assert msg.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.value == "F"
    assert (
        parse(
            (served.out / "VER-1.hl7").read_bytes().decode()
        ).oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.value
        == "P"
    )
    assert check(served.out / "audit.jsonl").ok
    runs = served.api("/flow_runs/filter", {"flows": {"name": {"any_": ["verify-report"]}}})
    assert runs and {r["state_type"] for r in runs} == {"COMPLETED"}
    assert "verify VER-1.xlsx" in {r["name"] for r in runs}  # named after the workbook in the UI
    # a mismatched workbook: nothing changes, the reason is beside it
    before = sorted(p.name for p in served.out.iterdir())
    from openpyxl import load_workbook

    wb = load_workbook(edited)
    ws = wb["Summary"]
    for r in range(1, ws.max_row + 1):
        if ws.cell(row=r, column=1).value == "Sample":
            ws.cell(row=r, column=2).value = "VER-2"
    wb.save(tmp_path / "bad.xlsx")
    shutil.copy(tmp_path / "bad.xlsx", reviewed / "bad.xlsx")
    reason = reviewed / "rejected" / "bad.xlsx.reason.txt"
    assert wait_until(reason.is_file, 30), served.text()[-3000:]
    assert "the workbook is for sample 'VER-2'" in reason.read_text()
    assert sorted(p.name for p in served.out.iterdir()) == before


def test_retrain_deployment_has_active_cron(served):
    deps = served.api("/deployments/filter", {})
    by_name = {d["name"]: d for d in deps}
    assert {"process-sample", "retrain"} <= set(by_name)
    scheds = by_name["retrain"]["schedules"]
    assert scheds and scheds[0]["active"] and scheds[0]["schedule"]["cron"] == "0 4 * * 1"
    assert by_name["retrain"]["global_concurrency_limit"]["limit"] == 1  # never two retrains at once


def test_sigterm_stops_everything_and_restart_catches_up(served):
    served.stop()
    assert served.proc.returncode == 0
    assert "wbc serve: stopped" in served.text()
    with socket.socket() as s:  # the server is gone: its port is free
        assert s.connect_ex(("127.0.0.1", served.port)) != 0
    leftovers = subprocess.run(["pgrep", "-f", str(served.home)], capture_output=True, text=True).stdout.split()
    assert leftovers == []
    copy_cells(served.inbox / "LATE-1", 3)  # arrives while the service is down
    served.start()
    assert wait_until(lambda: (served.out / "LATE-1.json").exists(), 60), served.text()[-3000:]


def test_two_workers_share_20_folders(tmp_path, tiny_model):
    """Scale-out: serve puts runs on a work pool, two process workers pull them; each folder exactly once."""
    root = tmp_path
    s = Serve(root, tiny_model)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(WBC_HOME=str(s.home), PREFECT_HOME=str(root / "prefect"), WBC_MODEL=str(tiny_model))
    workers = []
    try:
        s.start(("--pool", "wbc-test", "--quiet-seconds", "1", "--scan-seconds", "0.5"))
        wenv = dict(env, PREFECT_API_URL=f"http://127.0.0.1:{s.port}/api")
        for name in ("w1", "w2"):
            log = open(root / f"{name}.log", "w")  # noqa: SIM115
            workers.append(
                (
                    name,
                    subprocess.Popen(
                        [WBC, "worker", "--pool", "wbc-test", "--name", name, "--limit", "2"],
                        env=wenv,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ),
                )
            )
        stage = root / "stage"
        images = fixture_images()
        for i in range(20):
            d = stage / f"B{i:02d}"
            d.mkdir(parents=True)
            for p in images[i % 5 : i % 5 + 3]:
                shutil.copy(p, d / p.name)
            (d / "READY").touch()
        s.inbox.mkdir(parents=True, exist_ok=True)
        for d in sorted(stage.iterdir()):  # dropped at once
            d.rename(s.inbox / d.name)
        done = lambda: len([p for p in s.out.glob("B*.json") if not p.name.endswith(".fhir.json")])  # noqa: E731
        assert wait_until(lambda: done() == 20, 400), (done(), s.text()[-2000:])
        assert sorted(p.name for p in s.out.glob("B*.json") if ".fhir" not in p.name) == [
            f"B{i:02d}.json" for i in range(20)
        ]
        runs_by = {name: (root / f"{name}.log").read_text().count("submitted to infrastructure") for name, _ in workers}
        assert all(n > 0 for n in runs_by.values()), runs_by  # both workers took runs
        assert sum(runs_by.values()) == 20
    finally:
        for _, w in workers:
            os.killpg(w.pid, signal.SIGTERM)
        for _, w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):  # a straggling worker is killed, not reported
                stop(w, 30, group_signal=True)
        if s.proc.poll() is None:
            s.stop()


def test_basic_auth(tmp_path, tiny_model):
    """With PREFECT_SERVER_API_AUTH_STRING the API refuses requests without credentials, and the watcher,
    runner and runs still work end to end."""
    import base64
    import urllib.error

    s = Serve(tmp_path, tiny_model)
    try:
        s.start(("--quiet-seconds", "1"), env={"PREFECT_SERVER_API_AUTH_STRING": "labadmin:s3cret"})
        url = f"http://127.0.0.1:{s.port}/api/flows/filter"
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(
                urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"}),
                timeout=10,
            )
        assert exc.value.code == 401
        good = base64.b64encode(b"labadmin:s3cret").decode()
        req = urllib.request.Request(
            url,
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Basic {good}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        copy_cells(s.inbox / "AUTH-1", 3)
        assert wait_until(lambda: (s.out / "AUTH-1.json").exists(), 90), s.text()[-3000:]
        assert "s3cret" not in (s.out / "AUTH-1.json").read_text()
    finally:
        if s.proc.poll() is None:
            s.stop()


def test_kill9_mid_sample_then_restart_gives_one_report(tmp_path, tiny_model):
    """kill -9 of the whole service while a sample is in flight: after a restart the sample is processed
    (again) and exactly one complete report exists, no temp files under final names, ledger consistent."""
    s = Serve(tmp_path, tiny_model)
    s.start()
    folder = s.inbox / "K9-1"
    stage = tmp_path / "K9-1"
    images = fixture_images()
    stage.mkdir()
    for i in range(240):
        shutil.copy(images[i % len(images)], stage / f"c{i:03d}.jpg")
    (stage / "READY").touch()
    stage.rename(folder)
    assert wait_until(lambda: "K9-1: submitted" in s.text(), 60)
    time.sleep(1.5)
    os.killpg(s.proc.pid, signal.SIGKILL)  # serve, its runs and watcher; its server has its own group
    s.proc.wait(30)
    orphan = int((s.home / "prefect-server.pid").read_text())
    assert Path(f"/proc/{orphan}").exists()  # kill -9 of serve cannot stop its server: it is orphaned
    s.start()  # same port: the new serve stops the orphan first
    assert not Path(f"/proc/{orphan}").exists() or "zombie" in Path(f"/proc/{orphan}/status").read_text()
    assert wait_until(lambda: (s.out / "K9-1.json").exists() and (s.inbox / "archive" / "K9-1").is_dir(), 120), (
        s.text()[-3000:]
    )
    r = json.loads((s.out / "K9-1.json").read_text())
    assert r["cells_classified"] == 240
    finals = sorted(p.name for p in s.out.iterdir() if not p.name.startswith("."))
    assert finals == ["K9-1.fhir.json", "K9-1.json", "K9-1.xlsx"]
    assert list(s.out.glob(".*.tmp")) == []
    from wbcproc.inbox import Ledger

    entries = [e for e in Ledger(s.home / "ledger.sqlite").all() if e.folder == "K9-1"]
    assert [(e.version, e.state) for e in entries] == [(1, "completed")]
    s.stop()


def test_server_restart_while_a_run_is_in_flight(tmp_path, tiny_model):
    """The embedded Prefect server dies mid-sample: serve restarts it and the sample still gets exactly one
    complete report (the run is re-done if its end could not be recorded)."""
    s = Serve(tmp_path, tiny_model)
    s.start()
    try:
        stage = tmp_path / "SR-1"
        stage.mkdir()
        images = fixture_images()
        for i in range(240):
            shutil.copy(images[i % len(images)], stage / f"c{i:03d}.jpg")
        (stage / "READY").touch()
        stage.rename(s.inbox / "SR-1")
        assert wait_until(lambda: "SR-1: submitted" in s.text(), 60)
        time.sleep(1.0)
        subprocess.run(["pkill", "-9", "-f", f"prefect server start --host 127.0.0.1 --port {s.port}"], check=True)
        assert wait_until(lambda: "Prefect server restarted" in s.text(), 120), s.text()[-3000:]
        assert wait_until(lambda: (s.out / "SR-1.json").exists() and (s.inbox / "archive" / "SR-1").is_dir(), 180), (
            s.text()[-3000:]
        )
        r = json.loads((s.out / "SR-1.json").read_text())
        assert r["cells_classified"] == 240 and r["rejected"] == []
        assert {"file": "READY", "reason": "completion marker"} in r["ignored"]
        assert sorted(p.name for p in s.out.iterdir() if not p.name.startswith(".")) == [
            "SR-1.fhir.json",
            "SR-1.json",
            "SR-1.xlsx",
        ]
    finally:
        if s.proc.poll() is None:
            s.stop()


def test_read_only_output_sends_the_folder_to_failed_with_the_reason(tmp_path, tiny_model):
    mnt = tmp_path / "ro-out"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        s = Serve(tmp_path, tiny_model)
        s.out = mnt
        s.start(("--quiet-seconds", "1", "--scan-seconds", "0.5"))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        copy_cells(s.inbox / "RO-1", 3)
        assert wait_until(lambda: (s.inbox / "failed" / "RO-1.error.txt").is_file(), 120), s.text()[-3000:]
        assert (s.inbox / "failed" / "RO-1").is_dir()  # nothing lost: the sample waits in failed/
        assert "Read-only file system" in (s.inbox / "failed" / "RO-1.error.txt").read_text()
        assert os.listdir(mnt) == []
        s.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)

"""The generated reference pages (docs/reference/) say what the code says: each command's ``--help`` and
every configuration key with its type and default.  A stale page fails here; ``python -m
flows.cli.reference`` rewrites both."""

from __future__ import annotations

import subprocess
import sys

from flows.cli.reference import PAGES, ROOT, pages


def test_the_committed_reference_pages_are_the_generated_ones():
    for name, text in pages().items():
        assert PAGES[name].read_text(encoding="utf-8") == text, f"{PAGES[name]}: run python -m flows.cli.reference"


def test_every_visible_command_and_every_key_is_in_the_pages():
    from flows.cli import command
    from wbcproc.config import config_schema

    text = pages()
    visible = [n for n, c in command().commands.items() if not c.hidden]
    assert visible and all(f"## `wbc {n}`" in text["cli"] for n in visible)
    assert "## `wbc reviewed`" not in text["cli"]  # the old name still works, but is not documented
    keys = [f"{s}.{k}" for s, sec in config_schema()["properties"].items() for k in sec["properties"]]
    assert "input.marker_files" in keys and all(f"| `{k}` |" in text["configuration"] for k in keys)
    from dataclasses import fields

    from wbcproc.framing import Framing
    from wbcproc.sidecar import Sidecar

    keys = [f.name for f in fields(Sidecar)] + [f"preprocess.framing.{f.name}" for f in fields(Framing)]
    assert all(f"| `{k}` |" in text["sidecar"] for k in keys)


def test_check_mode_names_a_stale_page(tmp_path, monkeypatch):
    import flows.cli.reference as ref

    stale = tmp_path / "cli.md"
    stale.write_text("# an old page\n", encoding="utf-8")
    monkeypatch.setitem(ref.PAGES, "cli", stale)
    monkeypatch.setattr(ref, "ROOT", tmp_path)
    assert ref.main(["--check"]) == 1
    assert subprocess.run([sys.executable, "-m", "flows.cli.reference", "--check"], cwd=ROOT).returncode == 0

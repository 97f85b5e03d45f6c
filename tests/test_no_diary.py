"""The product's text describes what wbc does now; how it got there belongs in CHANGELOG.md and in commit
messages.  This keeps development-diary phrases ("stop 14", "the issue asks", "(issue: ...)", "before this
change") out of the README, the docs, the model card, code comments and tests."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIARY = re.compile(
    r"\bstops? \d+\b|\bthis stop\b|\b(two|three|four|five|several|many) stops\b|\bwas lent\b"
    r"|the issue (asks|measured)|\bissue's\b|before this change|\(issue[: \d]",
    re.IGNORECASE,
)
TEXT = {".md", ".py", ".sh", ".toml", ".yml", ".yaml", ".html", ".txt"}


def _product_files() -> list[Path]:
    roots = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    for folder in ("docs", "models", "wbcproc", "flows", "training", "tests", "benchmarks", "deploy"):
        roots += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in TEXT and p.is_file())
    return [p for p in roots if p.exists() and p.resolve() != Path(__file__).resolve()]


def test_no_development_diary_in_the_product_text():
    hits = []
    for path in _product_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if DIARY.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "development-diary phrases (say what the product does now):\n" + "\n".join(hits)


def test_the_check_finds_a_planted_phrase():
    assert DIARY.search("measured at stop 21 (below)") and DIARY.search("the rule (issue: other labs)")
    assert DIARY.search("No GPU was lent for three stops") and DIARY.search("as the issue's patients were")
    assert not DIARY.search("early stopping on validation macro-F1") and not DIARY.search("a bus stop")

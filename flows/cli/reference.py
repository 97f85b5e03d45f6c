"""The generated reference pages: every ``wbc`` command's ``--help``, every configuration key, every key of
a model's sidecar.

    python -m flows.cli.reference            # rewrites the pages under docs/reference/
    python -m flows.cli.reference --check    # exit 1 when a page differs from what the code says

The pages are written from the code (the click command tree behind ``wbc``, the JSON Schemas generated from
the settings' and the sidecar's definitions), and a test keeps the committed pages equal to them, so the
reference cannot drift.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from typer import Context  # typer's own click Context (typer vendors click)

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "cli": ROOT / "docs" / "reference" / "cli.md",
    "configuration": ROOT / "docs" / "reference" / "configuration.md",
    "sidecar": ROOT / "docs" / "reference" / "sidecar.md",
}
_WIDTH = 100  # help text wrapped as on a 100-column terminal, whatever runs the generator


def _walk(ctx: Context, path: list[str]):
    """Each visible command under ``ctx`` with its own context (so usage lines read ``wbc models show``)."""
    yield path, ctx
    cmd = ctx.command
    if hasattr(cmd, "list_commands"):  # a group: wbc itself, wbc models, wbc audit
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(Context(sub, info_name=name, parent=ctx), [*path, name])


def cli_page() -> str:
    """Every visible ``wbc`` command and sub-command with its ``--help`` text, in ``wbc --help`` order."""
    from flows.cli import command

    out = [
        "# Command reference",
        "",
        "Generated from the code (`python -m flows.cli.reference`); each block is that command's `--help`.",
        "",
    ]
    root = Context(command(), info_name="wbc", terminal_width=_WIDTH, max_content_width=_WIDTH)
    for path, ctx in _walk(root, ["wbc"]):
        out += [f"## `{' '.join(path)}`", "", "```text", ctx.command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(out)


def _type(spec: dict[str, Any]) -> str:
    if "anyOf" in spec:
        return " or ".join(_type(s) for s in spec["anyOf"])
    if "$ref" in spec:
        return "object"
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    t = spec.get("type", "object")
    if t == "array" and "prefixItems" in spec:
        kinds = sorted({_type(s) for s in spec["prefixItems"]})
        return f"list of {len(spec['prefixItems'])} {' or '.join(kinds)}"
    if t == "array":
        return f"list of {_type(spec.get('items', {}))}"
    return {"integer": "integer", "number": "number", "string": "string", "boolean": "true/false", "null": "none"}.get(
        t, t
    )


def _bounds(spec: dict[str, Any]) -> str:
    parts = []
    for s in [spec, *spec.get("anyOf", [])]:
        for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in s:
                parts.append(f"{sign} {s[key]}")
        if "enum" in s:
            parts.append("one of " + ", ".join(f"`{v}`" for v in s["enum"]))
        if "enum" in s.get("items", {}):
            parts.append("each one of " + ", ".join(f"`{v}`" for v in s["items"]["enum"]))
        if "pattern" in s:
            parts.append(f"matches `{s['pattern']}`")
        if "minLength" in s:
            parts.append(f"at least {s['minLength']} character")
    return ", ".join(parts)


def configuration_page() -> str:
    """Every configuration key with its type, default and allowed values, from the generated JSON Schema."""
    from wbcproc.config import config_schema

    schema = config_schema()
    out = [
        "# Configuration reference",
        "",
        "Generated from the settings' definition (`python -m flows.cli.reference`). " + schema.get("description", ""),
        "What each key does: [configuration.md](../configuration.md).",
        "",
        "| key | type | default | allowed |",
        "|---|---|---|---|",
    ]
    for section, sec in schema["properties"].items():
        for key, spec in sec.get("properties", {}).items():
            default = json.dumps(spec.get("default"))
            out.append(f"| `{section}.{key}` | {_type(spec)} | `{default}` | {_bounds(spec)} |")
    return "\n".join(out) + "\n"


def _record(spec: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The record a key holds (a ``$ref``, possibly or-none), or None for a plain value."""
    for s in [spec, *spec.get("anyOf", [])]:
        if "$ref" in s:
            return defs[s["$ref"].rsplit("/", 1)[1]]
    return None


def _sidecar_rows(record: dict[str, Any], defs: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    required = set(record.get("required", []))
    for key, spec in record["properties"].items():
        inner = _record(spec, defs)
        default = "" if key in required else f"`{json.dumps(spec.get('default'))}`"
        about = spec.get("description") or (inner or {}).get("description", "")
        about = re.sub(r":\w+:`([^`]+)`|``([^`]+)``", lambda m: f"`{m[1] or m[2]}`", " ".join(about.split()))
        needed = "yes" if key in required else ""
        rows.append(f"| `{prefix}{key}` | {_type(spec)} | {needed} | {default} | {_bounds(spec)} | {about} |")
        if inner is not None:
            rows += _sidecar_rows(inner, defs, f"{prefix}{key}.")
    return rows


def sidecar_page() -> str:
    """Every key of a model's sidecar (``model.json``), nested blocks included, from the generated schema."""
    from wbcproc.sidecar import sidecar_schema

    schema = sidecar_schema()
    return (
        "\n".join(
            [
                "# Model sidecar reference",
                "",
                "Generated from the sidecar's definition, `wbcproc.sidecar.Sidecar` (`python -m flows.cli.reference`). "
                + schema["description"],
                "The same contract as a JSON Schema, for tools outside Python: `wbcproc/data/sidecar.schema.json`. "
                "A key not listed here is refused; a model whose sidecar is refused does not load.",
                "",
                "| key | type | required | default | allowed | what it holds |",
                "|---|---|---|---|---|---|",
                *_sidecar_rows(schema, schema["$defs"], ""),
            ]
        )
        + "\n"
    )


def pages() -> dict[str, str]:
    return {"cli": cli_page(), "configuration": configuration_page(), "sidecar": sidecar_page()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in pages().items():
        path = PAGES[name]
        if "--check" in argv:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date (run python -m flows.cli.reference): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

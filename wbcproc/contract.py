"""Typed records read from JSON: the model sidecar, its preprocessing recipe and framing.

They are pydantic dataclasses, so the types and limits written on their fields are at once what the reader
checks and what the published JSON Schema says (``wbcproc/data/sidecar.schema.json`` is generated from
them, never kept by hand), and a record refuses any key it does not define.  :func:`one_line` turns
pydantic's multi-line report into the one line a user reads: the key, the bad value, what was expected.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Self

from pydantic import ConfigDict, TypeAdapter, ValidationError

# unknown keys are refused: a new key is a new format version, not something a reader skips
RECORD = ConfigDict(extra="forbid")


@cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


class Record:
    """Base of the records: :meth:`from_dict` parses a JSON object into one, or says in one line why not."""

    WHERE = "the record"  # how a message names the whole record

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        try:
            return _adapter(cls).validate_python(raw)
        except ValidationError as exc:
            raise ValueError(one_line(exc, cls.WHERE)) from None

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return _adapter(cls).json_schema()


_SHOWN_CHARS = 60
_MOST = 3


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _dotted(loc: tuple[Any, ...], where: str) -> str:
    return ".".join(str(p) for p in loc) or where


def one_line(exc: ValidationError, where: str) -> str:
    """What ``exc`` refused, as one line: ``parity.passed is 'yes'; expected a valid boolean``.

    ``where`` names the whole record (e.g. ``"the sidecar"``) for errors that belong to no single key."""
    unknown: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    said: list[str] = []
    for err in exc.errors():
        loc, kind = tuple(err["loc"]), err["type"]
        if kind in ("unexpected_keyword_argument", "extra_forbidden"):
            unknown.setdefault(_dotted(loc[:-1], where), []).append(str(loc[-1]))
        elif kind == "missing":
            missing.setdefault(_dotted(loc[:-1], where), []).append(str(loc[-1]))
        elif kind == "value_error":  # a record's own check: its message names the value already
            said.append(str(err["msg"]).removeprefix("Value error, "))
        else:
            msg = str(err["msg"])
            rule = (
                f"expected {msg.removeprefix('Input should be ')}"
                if msg.startswith("Input ")
                else msg[:1].lower() + msg[1:]
            )
            said.append(f"{_dotted(loc, where)} is {_shown(err['input'])}; {rule}")
    said = (
        [f"{parent} has unknown keys {sorted(keys)}" for parent, keys in unknown.items()]
        + [f"{parent} lacks required keys {keys}" for parent, keys in missing.items()]
        + said
    )
    more = f" (and {len(said) - _MOST} more)" if len(said) > _MOST else ""
    return "; ".join(said[:_MOST]) + more

"""Who may review and sign: accounts in a JSON file, passwords as argon2id hashes (argon2-cffi).

The file (``$WBC_HOME/accounts.json`` unless told otherwise) holds, per account name, the display name a
report is signed with, the roles, and the hash - never a password.  Roles: ``reviewer`` (reclassify cells
and save drafts) and ``signer`` (also sign).  It is written atomically with mode 0600; created and changed
with ``wbc accounts add``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from wbcproc.atomic import atomic_write_bytes
from wbcproc.paths import app_home

ROLES = ("reviewer", "signer")
ACCOUNTS_FILE = "accounts.json"
MIN_PASSWORD = 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HASHER = PasswordHasher()
# a hash compared when the account does not exist, so that a wrong name costs the same time as a wrong password
_DUMMY = _HASHER.hash("not a password of anyone")


class AccountError(ValueError):
    """An account cannot be created or the accounts file cannot be read; the message says why."""


@dataclass(frozen=True)
class Account:
    name: str  # what a person logs in with
    display: str  # what a report is signed with
    roles: tuple[str, ...]

    def may(self, role: str) -> bool:
        return role in self.roles


def default_accounts_file() -> Path:
    return app_home() / ACCOUNTS_FILE


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"accounts": {}}
    except (OSError, json.JSONDecodeError) as exc:
        raise AccountError(f"accounts file {str(path)!r} cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("accounts"), dict):
        raise AccountError(f"accounts file {str(path)!r} is not a wbc accounts file (no 'accounts' object)")
    return data


def load_accounts(path: str | Path) -> dict[str, Account]:
    """The accounts of ``path``, by name (the hashes stay in the file)."""
    data = _read(Path(path))
    return {
        name: Account(name, str(a.get("display") or name), tuple(r for r in a.get("roles", []) if r in ROLES))
        for name, a in data["accounts"].items()
    }


def add_account(path: str | Path, name: str, password: str, *, role: str, display: str | None = None) -> Account:
    """Create or replace account ``name``; ``role`` ``signer`` includes ``reviewer``."""
    if not _NAME.match(name):
        raise AccountError(
            f"account name {name!r}: expected lower-case letters, digits, '.', '_' or '-' (at most 64 characters)"
        )
    if role not in ROLES:
        raise AccountError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password of {len(password)} characters: at least {MIN_PASSWORD} expected")
    p = Path(path)
    data = _read(p)
    roles = ["reviewer", "signer"] if role == "signer" else ["reviewer"]
    data["accounts"][name] = {"display": display or name, "roles": roles, "hash": _HASHER.hash(password)}
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    os.chmod(p, 0o600)
    return Account(name, display or name, tuple(roles))


def authenticate(path: str | Path, name: str, password: str) -> Account | None:
    """The account when ``password`` is its password, else None (the same work either way)."""
    data = _read(Path(path))
    entry = data["accounts"].get(name)
    try:
        _HASHER.verify(entry["hash"] if entry else _DUMMY, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if entry is None:
        return None
    return load_accounts(path)[name]

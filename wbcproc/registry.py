"""A model registry on the file system: versions, the current (champion) model, promotion history.

Layout under the registry root (default ``$WBC_HOME/registry``)::

    versions/<version>/model.onnx, model.json, model.weights.safetensors (its float weights, where the
                       sidecar lists them), card.md, metrics.json, ...
    current.json          {"version": ..., "promoted_at": ..., "reason": ...}  (replaced atomically)
    history.jsonl         one line per promotion decision, promoted or not

Promotion only ever replaces ``current.json`` with ``os.replace``, so a reader sees the old or the new
champion, never a half-written one; a failed or worse challenger leaves it untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wbcproc.atomic import atomic_write_json
from wbcproc.paths import app_home
from wbcproc.sidecar import ModelError, float_weights_path, read_sidecar

RUN_FILES_OPTIONAL = (
    "card.md",
    "metrics.json",
    "confusion.png",
    "misclassified.png",
    "split.csv",
    "parent.onnx",  # a routed laboratory model's parent (wbcproc.routing), with its sidecar
    "parent.json",
)


def version_stamp(at: datetime | None = None) -> str:
    """A version name from the time (UTC, ``20261204-134500``): what a training run, a retrain and an
    adaptation (``<parent>+lab.<stamp>``) are called when no version is given; it sorts as it was made."""
    return (at or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide_promotion(
    challenger: dict[str, Any], champion: dict[str, Any] | None, *, margin: float = 0.0, min_source_cells: int = 20
) -> Decision:
    """Champion/challenger rule on the fixed test split.

    ``challenger``/``champion`` are metric dicts with ``macro_f1`` measured on the same test split, and
    the challenger's ``parity_passed``.  A challenger that failed parity never promotes; with no
    champion it promotes; otherwise its macro-F1 must exceed the champion's by more than ``margin`` - and,
    when both carry ``per_source`` metrics (one entry per data root, e.g. the original data set and a
    laboratory's own reviewed cells), on every source with at least ``min_source_cells`` test cells too:
    a model adapted to a new laboratory must be better there *and* on the original test split.
    """
    if not challenger.get("parity_passed", False):
        return Decision(False, "challenger failed the ONNX Runtime vs PyTorch parity check")
    c = challenger.get("macro_f1")
    if c is None:
        return Decision(False, "challenger has no macro_f1 on the test split")
    if champion is None:
        return Decision(True, f"no current model; challenger macro-F1 {c:.4f}")
    b = champion.get("macro_f1")
    if b is None:
        return Decision(True, f"current model has no comparable macro-F1; challenger {c:.4f}")
    if not c > b + margin:
        return Decision(False, f"challenger macro-F1 {c:.4f} does not beat current {b:.4f} by more than {margin:.4f}")
    cs, bs = challenger.get("per_source") or {}, champion.get("per_source") or {}
    judged = []
    for src in sorted(set(cs) & set(bs)):
        if cs[src]["n"] < min_source_cells:
            continue
        x, y = cs[src]["macro_f1"], bs[src]["macro_f1"]
        judged.append(f"{Path(src).name} {x:.4f} vs {y:.4f}")
        if not x > y + margin:
            return Decision(
                False,
                f"challenger macro-F1 {c:.4f} beats current {b:.4f} overall, but not on {src} "
                f"({x:.4f} vs {y:.4f}, n={cs[src]['n']}, margin {margin:.4f})",
            )
    per = f"; per source: {', '.join(judged)}" if judged else ""
    return Decision(True, f"challenger macro-F1 {c:.4f} beats current {b:.4f} by more than {margin:.4f}{per}")


@dataclass(frozen=True)
class VersionEntry:
    version: str
    path: Path
    name: str
    sha256: str
    metrics: dict[str, Any]
    created_at: str
    current: bool


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def default(cls) -> Registry:
        return cls(os.environ.get("WBC_REGISTRY") or app_home() / "registry")

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def _current_file(self) -> Path:
        return self.root / "current.json"

    def current_version(self) -> str | None:
        try:
            return json.loads(self._current_file().read_text(encoding="utf-8"))["version"]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError, OSError) as exc:
            raise RegistryError(f"registry pointer {str(self._current_file())!r} is unreadable: {exc}") from None

    def current_path(self) -> Path | None:
        version = self.current_version()
        if version is None:
            return None
        path = self.versions_dir / version / "model.onnx"
        if not path.is_file():
            raise RegistryError(f"current model version {version!r} has no file {str(path)!r}")
        return path

    def list(self) -> list[VersionEntry]:
        current = self.current_version()
        out = []
        if not self.versions_dir.is_dir():
            return out
        for d in sorted(self.versions_dir.iterdir()):
            if d.name.startswith(".") or not (d / "model.json").is_file():
                continue
            side = read_sidecar(d / "model.onnx", verify_sha256=False).sidecar
            out.append(
                VersionEntry(
                    version=d.name,
                    path=d,
                    name=side.name,
                    sha256=str(side.sha256),
                    metrics=side.metrics or {},
                    created_at=side.created_at or "",
                    current=d.name == current,
                )
            )
        return out

    def show(self, version: str) -> dict[str, Any]:
        side = self.versions_dir / version / "model.json"
        if not side.is_file():
            known = [v.version for v in self.list()]
            raise RegistryError(f"no model version {version!r} in {str(self.root)!r}; known: {known}")
        return read_sidecar(side, verify_sha256=False).sidecar.to_dict()

    def register(self, run_dir: str | Path) -> str:
        """Copy a run's model into the registry (atomically, by renaming a finished temp folder)."""
        run_dir = Path(run_dir)
        info = read_sidecar(run_dir / "model.onnx")  # verifies sha256 and classes
        version = info.version
        dest = self.versions_dir / version
        if dest.exists():
            existing = read_sidecar(dest / "model.onnx", verify_sha256=False)
            if existing.sha256 == info.sha256:
                return version
            raise RegistryError(f"version {version!r} is already registered with a different model file")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
        try:
            shutil.copy2(run_dir / "model.onnx", tmp / "model.onnx")
            shutil.copy2(run_dir / "model.json", tmp / "model.json")
            if info.sidecar.weights is not None:  # the float weights travel with the model, checked on the way
                shutil.copy2(float_weights_path(info), tmp / info.sidecar.weights.file)
            for name in RUN_FILES_OPTIONAL:
                if (run_dir / name).is_file():
                    shutil.copy2(run_dir / name, tmp / name)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def promote(self, version: str, *, reason: str) -> None:
        """Make ``version`` current.  Refuses a model that fails to load or failed parity."""
        path = self.versions_dir / version / "model.onnx"
        if not path.is_file():
            raise RegistryError(f"no model version {version!r} in {str(self.root)!r}")
        try:
            info = read_sidecar(path)
        except ModelError as exc:
            raise RegistryError(f"refusing to promote {version!r}: {exc}") from None
        parity = info.sidecar.parity
        if parity is None or not parity.passed:
            shown = parity.to_dict() if parity is not None else "no parity record"
            raise RegistryError(f"refusing to promote {version!r}: its ONNX parity check did not pass ({shown})")
        record = {"version": version, "promoted_at": datetime.now(UTC).isoformat(), "reason": reason}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._current_file(), record)
        self.log_decision({**record, "promoted": True})

    def log_decision(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "history.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

"""Load a classifier (ONNX file + sidecar JSON) and run it with ONNX Runtime.

A model is two files: ``<stem>.onnx`` and ``<stem>.json`` beside it (the sidecar).  The sidecar is the
contract between training and inference, in the spirit of MONAI bundle metadata and torchvision's
weights ``meta``: classes in output order, the preprocessing recipe, calibration (temperature and review
threshold), the sha256 of the ONNX file, and the metrics and data that produced it.  A model without
its sidecar, or whose sha256 or class list does not match, does not load.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wbcproc.atomic import atomic_write_json
from wbcproc.classes import check_class_list
from wbcproc.preprocess import PreprocessSpec
from wbcproc.stats import softmax

SIDECAR_FORMAT = "wbc-model-sidecar"
SIDECAR_VERSION = 1


class ModelError(Exception):
    """The model cannot be used; the message says what is wrong and what to do."""


class ModelNotFoundError(ModelError):
    pass


HOW_TO_GET_A_MODEL = (
    "No model found: no --model, no $WBC_MODEL, no current registry model, and no shipped default (models/ of "
    "the repository, wbcproc/_models/ of an installed wheel). Train one with "
    "`pip install 'wbc[train]'` and `wbc train --data PBC_DIR --out RUN_DIR` (see docs/training.md), "
    "then pass `--model RUN_DIR/model.onnx`, set WBC_MODEL, or make it current with "
    "`wbc models register RUN_DIR` and `wbc models promote VERSION`."
)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """The parsed sidecar plus where the files are."""

    onnx_path: Path
    sidecar_path: Path
    name: str
    version: str
    sha256: str
    classes: tuple[str, ...]
    preprocess: PreprocessSpec
    temperature: float
    review_threshold: float
    input_name: str
    raw: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def sidecar_path_for(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def _locate(path: Path) -> Path:
    if path.is_dir():
        path = path / "model.onnx"
    elif path.suffix.lower() == ".json":
        path = path.with_suffix(".onnx")
    if not path.is_file():
        raise ModelNotFoundError(f"model file {str(path)!r} does not exist")
    return path


def read_sidecar(path: str | Path, *, verify_sha256: bool = True) -> ModelInfo:
    """Parse and check a model's sidecar.  Raises :class:`ModelError` naming the mismatch."""
    onnx_path = _locate(Path(path))
    side = sidecar_path_for(onnx_path)
    if not side.is_file():
        raise ModelError(
            f"model {str(onnx_path)!r} has no sidecar {side.name!r} beside it; a model without its sidecar "
            "(classes, preprocessing, sha256) does not load"
        )
    try:
        raw = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"sidecar {str(side)!r} is not valid JSON: {exc}") from None
    if raw.get("format") != SIDECAR_FORMAT or raw.get("format_version") != SIDECAR_VERSION:
        raise ModelError(
            f"sidecar {str(side)!r} has format {raw.get('format')!r} v{raw.get('format_version')!r}; "
            f"expected {SIDECAR_FORMAT!r} v{SIDECAR_VERSION}"
        )
    missing = [k for k in ("name", "version", "sha256", "classes", "preprocess", "input") if k not in raw]
    if missing:
        raise ModelError(f"sidecar {str(side)!r} lacks required keys {missing}")
    try:
        check_class_list(raw["classes"], where=f"sidecar {side.name}")
        spec = PreprocessSpec.from_dict(raw["preprocess"])
    except (ValueError, TypeError) as exc:
        raise ModelError(str(exc)) from None
    if verify_sha256:
        actual = sha256_file(onnx_path)
        if actual != raw["sha256"]:
            raise ModelError(
                f"model file {str(onnx_path)!r} has sha256 {actual[:16]}..., but its sidecar says "
                f"{str(raw['sha256'])[:16]}...: the file was changed or corrupted; refusing to load it"
            )
    temperature = float(raw.get("temperature", 1.0))
    threshold = float(raw.get("review_threshold", 0.7))
    if temperature <= 0 or not 0 <= threshold <= 1:
        raise ModelError(
            f"sidecar {side.name}: temperature {temperature} must be > 0 and review_threshold {threshold} in [0, 1]"
        )
    return ModelInfo(
        onnx_path=onnx_path,
        sidecar_path=side,
        name=str(raw["name"]),
        version=str(raw["version"]),
        sha256=str(raw["sha256"]),
        classes=tuple(raw["classes"]),
        preprocess=spec,
        temperature=temperature,
        review_threshold=threshold,
        input_name=str(raw["input"].get("name", "input")),
        raw=raw,
    )


def write_sidecar(onnx_path: str | Path, sidecar: dict[str, Any]) -> Path:
    """Write ``sidecar`` beside ``onnx_path`` with the file's sha256 filled in."""
    onnx_path = Path(onnx_path)
    data = dict(sidecar)
    data["format"] = SIDECAR_FORMAT
    data["format_version"] = SIDECAR_VERSION
    data["file"] = onnx_path.name
    data["sha256"] = sha256_file(onnx_path)
    check_class_list(data["classes"], where="write_sidecar")
    PreprocessSpec.from_dict(data["preprocess"])
    side = sidecar_path_for(onnx_path)
    atomic_write_json(side, data)
    return side


def packaged_model_dirs() -> list[Path]:
    """Where a shipped default model may live: inside the installed package, then the checkout."""
    here = Path(__file__).resolve().parent
    return [here / "_models", here.parent / "models"]


def resolve_model_path(explicit: str | Path | None = None) -> Path:
    """--model, then $WBC_MODEL, then the registry's current model, then the shipped default."""
    if explicit:
        return _locate(Path(explicit))
    if os.environ.get("WBC_MODEL"):
        return _locate(Path(os.environ["WBC_MODEL"]))
    from wbcproc.registry import Registry  # local import: registry imports this module

    current = Registry.default().current_path()
    if current is not None:
        return current
    for d in packaged_model_dirs():
        if (d / "model.onnx").is_file():
            return d / "model.onnx"
    raise ModelNotFoundError(HOW_TO_GET_A_MODEL)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Classifier:
    """An ONNX Runtime session plus the sidecar that says how to feed it and read it."""

    def __init__(self, info: ModelInfo, threads: int = 0) -> None:
        import onnxruntime as ort

        from wbcproc.int8 import plan_for

        self.info = info
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads if threads > 0 else default_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # the same classes on every CPU: precise kernels where an 8-bit-weight int8 model could saturate
        self.int8 = plan_for(info.raw)
        for key, value in self.int8.session_config().items():
            opts.add_session_config_entry(key, value)
        try:
            self.session = ort.InferenceSession(
                str(info.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for broken files
            raise ModelError(f"ONNX Runtime could not load {str(info.onnx_path)!r}: {exc}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if info.input_name not in inputs:
            raise ModelError(
                f"model input {info.input_name!r} named in the sidecar is not in the ONNX graph "
                f"(inputs: {sorted(inputs)})"
            )
        out_shape = self.session.get_outputs()[0].shape
        if isinstance(out_shape[-1], int) and out_shape[-1] != len(info.classes):
            raise ModelError(f"model outputs {out_shape[-1]} classes but its sidecar lists {len(info.classes)}")
        self.threads = opts.intra_op_num_threads

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.info.input_name: batch})[0]
        if out.ndim != 2 or out.shape[1] != len(self.info.classes):
            raise ModelError(f"model output shape {out.shape} does not match {len(self.info.classes)} classes")
        return out

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.logits(batch) / self.info.temperature)


_CACHE: dict[tuple[str, str, int], Classifier] = {}
_LOCK = threading.Lock()


def load_classifier(path: str | Path | None = None, threads: int = 0) -> Classifier:
    """The process-wide classifier for this model file (one ORT session per process and model)."""
    onnx_path = resolve_model_path(path)
    info = read_sidecar(onnx_path)
    key = (str(onnx_path.resolve()), info.sha256, threads)
    with _LOCK:
        clf = _CACHE.get(key)
        if clf is None:
            clf = _CACHE[key] = Classifier(info, threads)
        return clf

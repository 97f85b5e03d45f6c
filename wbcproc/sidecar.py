"""The model sidecar (``model.json`` beside ``model.onnx``): a typed contract between training and inference.

Like a MONAI bundle's ``metadata.json`` and torchvision's weights ``meta``, the sidecar says how to feed the
network and read it: classes in output order, the input tensor, the preprocessing recipe (including white
balance and framing), calibration (temperature, review threshold), the sha256 of the ONNX file, and what
produced it (metrics, parity, int8 quantisation, data, training recipe, software).  Inference reads only
this; a model without it, or whose sha256 or class list does not match, does not load.

:class:`Sidecar` is the one parsed form; :func:`read_sidecar` is the one reader and :func:`write_sidecar` the
one writer (training, laboratory adaptation, the flag benchmark and the registry all go through them).  The
same contract as a JSON Schema lives in ``wbcproc/data/sidecar.schema.json`` for tools outside Python; the
tests keep the two in step.

Format history (``format_version``):

- **1** (wbc 0.1 onwards): the fields below.  Blocks read by inference are typed (``input``, ``output``,
  ``preprocess``, ``parity``, ``quantization``, ``confusion_val``); ``domain`` (out-of-distribution
  reference), ``flag_performance``, ``adaptation`` and the provenance blocks (``metrics``, ``data``,
  ``init``, ``training``, ``software``) are JSON objects described in the schema.  Unknown top-level keys
  are refused: a new key is a new format version.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from wbcproc.atomic import atomic_write_json
from wbcproc.classes import check_class_list
from wbcproc.preprocess import PreprocessSpec

FORMAT = "wbc-model-sidecar"
FORMAT_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "sidecar.schema.json"
WRITER_KEYS = ("format", "format_version", "file", "sha256")  # filled in by write_sidecar, never by callers


class ModelError(Exception):
    """The model cannot be used; the message says what is wrong and what to do."""


class ModelNotFoundError(ModelError):
    pass


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _without_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class InputSpec:
    """The network's input tensor."""

    name: str = "input"
    layout: str = "NCHW"
    dtype: str = "float32"
    shape: tuple[str | int, ...] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        _check_keys(d, cls, "input")
        shape = d.get("shape")
        return cls(
            name=str(d.get("name", "input")),
            layout=str(d.get("layout", "NCHW")),
            dtype=str(d.get("dtype", "float32")),
            shape=None if shape is None else tuple(shape),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.shape is not None:
            d["shape"] = list(self.shape)
        return _without_none(d)


@dataclass(frozen=True)
class OutputSpec:
    """The network's output and how probabilities are made from it."""

    name: str = "logits"
    kind: str = "logits"
    apply: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OutputSpec:
        _check_keys(d, cls, "output")
        return cls(**{k: str(v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return _without_none(dataclasses.asdict(self))


@dataclass(frozen=True)
class Parity:
    """The ONNX export checked against PyTorch on the test split (the registry promotes only if passed)."""

    passed: bool
    n: int | None = None
    top1_agreement: float | None = None
    max_abs_logit_diff: float | None = None
    tolerance: float | None = None
    note: str | None = None
    reason: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Parity:
        _check_keys(d, cls, "parity")
        if not isinstance(d.get("passed"), bool):
            raise ValueError(f"parity.passed is {d.get('passed')!r}; expected true or false")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return _without_none(dataclasses.asdict(self))


@dataclass(frozen=True)
class Quantization:
    """The static int8 export: whether the shipped file is it, and its weight range (which CPU kernels are
    exact depends on it, see :mod:`wbcproc.int8`)."""

    kept: bool
    weight_max_abs: int | None = None
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    weights: str | None = None
    activations: str | None = None
    why: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Quantization:
        _check_keys(d, cls, "quantization")
        if not isinstance(d.get("kept"), bool):
            raise ValueError(f"quantization.kept is {d.get('kept')!r}; expected true or false")
        w = d.get("weight_max_abs")
        if w is not None and not (isinstance(w, int | float) and 0 < w <= 127):
            raise ValueError(f"quantization.weight_max_abs is {w!r}; expected an integer in 1..127")
        return cls(**{**d, "weight_max_abs": None if w is None else int(w)})

    def to_dict(self) -> dict[str, Any]:
        return _without_none(dataclasses.asdict(self))


@dataclass(frozen=True)
class ConfusionReference:
    """Validation confusion counts (rows true, columns called, in class order): what inference corrects the
    differential with (:mod:`wbcproc.correction`)."""

    counts: tuple[tuple[int, ...], ...]
    classes: tuple[str, ...]
    n: int
    source: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConfusionReference:
        _check_keys(d, cls, "confusion_val", all_required=True)
        counts = tuple(tuple(int(v) for v in row) for row in d["counts"])
        k = len(d["classes"])
        if len(counts) != k or any(len(row) != k for row in counts):
            raise ValueError(f"confusion_val.counts must be {k} x {k} (one row and column per class)")
        return cls(counts=counts, classes=tuple(d["classes"]), n=int(d["n"]), source=str(d["source"]))

    def to_dict(self) -> dict[str, Any]:
        return {"counts": [list(r) for r in self.counts], "classes": list(self.classes), "n": self.n,
                "source": self.source}  # fmt: skip


def _check_keys(d: Any, cls: type, where: str, *, all_required: bool = False) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} is {type(d).__name__}; expected a JSON object")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; expected some of {names}")
    required = [
        f.name
        for f in fields(cls)
        if all_required or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    ]
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{where} lacks required keys {missing}")


# blocks parsed into a typed form; the rest of the optional blocks are JSON objects kept as they are
_TYPED = {
    "input": InputSpec,
    "output": OutputSpec,
    "preprocess": PreprocessSpec,
    "parity": Parity,
    "quantization": Quantization,
    "confusion_val": ConfusionReference,
}
_OBJECTS = ("metrics", "data", "init", "training", "software", "domain", "flag_performance", "adaptation")


@dataclass(frozen=True, kw_only=True)
class Sidecar:
    """A model's sidecar, parsed.  Field order is the order the JSON is written in."""

    name: str
    version: str
    created_at: str | None = None
    classes: tuple[str, ...]
    input: InputSpec
    output: OutputSpec = field(default_factory=OutputSpec)
    preprocess: PreprocessSpec
    temperature: float = 1.0
    review_threshold: float = 0.7
    metrics: dict[str, Any] | None = None
    parity: Parity | None = None
    quantization: Quantization | None = None
    data: dict[str, Any] | None = None
    init: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    software: dict[str, Any] | None = None
    intended_use: str | None = None
    domain: dict[str, Any] | None = None  # out-of-distribution reference (wbcproc.domain)
    confusion_val: ConfusionReference | None = None
    flag_performance: dict[str, Any] | None = None  # measured by benchmarks/flags.py, shown in reports
    adaptation: dict[str, Any] | None = None  # a laboratory head (training.adapt): parent, cells, metrics
    # filled in by write_sidecar
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    file: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        check_class_list(list(self.classes), where=f"sidecar of {self.name} {self.version}")
        if not self.temperature > 0 or not 0 <= self.review_threshold <= 1:
            raise ValueError(
                f"temperature {self.temperature} must be > 0 and review_threshold {self.review_threshold} in [0, 1]"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Sidecar:
        """Parse and check a sidecar's JSON object.  Raises ``ValueError`` naming the bad key or value."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"the sidecar is a JSON {type(raw).__name__}; expected an object")
        if raw.get("format", FORMAT) != FORMAT or raw.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(
                f"format {raw.get('format')!r} v{raw.get('format_version')!r}; expected {FORMAT!r} v{FORMAT_VERSION}"
            )
        _check_keys(raw, cls, "the sidecar")
        kw: dict[str, Any] = dict(raw)
        for key, typ in _TYPED.items():
            if kw.get(key) is not None:
                kw[key] = typ.from_dict(kw[key])
        for key in _OBJECTS:
            if kw.get(key) is not None and not isinstance(kw[key], Mapping):
                raise ValueError(f"{key} is {type(kw[key]).__name__}; expected a JSON object")
        kw["classes"] = tuple(kw["classes"])
        kw["temperature"] = float(kw.get("temperature", 1.0))
        kw["review_threshold"] = float(kw.get("review_threshold", 0.7))
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in field order, without absent optional blocks (a copy: changing it changes
        nothing here)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = list(v) if f.name == "classes" else v.to_dict() if hasattr(v, "to_dict") else copy.deepcopy(v)
        return out

    def replace(self, **changes: Any) -> Sidecar:
        return dataclasses.replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def sidecar_path_for(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def locate_model(path: Path) -> Path:
    """A model file from a path that may name the run folder, the sidecar or the ONNX file."""
    if path.is_dir():
        path = path / "model.onnx"
    elif path.suffix.lower() == ".json":
        path = path.with_suffix(".onnx")
    if not path.is_file():
        raise ModelNotFoundError(f"model file {str(path)!r} does not exist")
    return path


@dataclass(frozen=True)
class ModelInfo:
    """A parsed sidecar and where its files are."""

    onnx_path: Path
    sidecar_path: Path
    sidecar: Sidecar

    # the fields inference reads most, by name
    @property
    def name(self) -> str:
        return self.sidecar.name

    @property
    def version(self) -> str:
        return self.sidecar.version

    @property
    def sha256(self) -> str:
        return str(self.sidecar.sha256)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.sidecar.classes

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.sidecar.preprocess

    @property
    def temperature(self) -> float:
        return self.sidecar.temperature

    @property
    def review_threshold(self) -> float:
        return self.sidecar.review_threshold

    @property
    def input_name(self) -> str:
        return self.sidecar.input.name

    def summary(self) -> dict[str, Any]:
        return self.sidecar.summary()


def read_sidecar(path: str | Path, *, verify_sha256: bool = True) -> ModelInfo:
    """Parse and check a model's sidecar.  Raises :class:`ModelError` naming the mismatch."""
    onnx_path = locate_model(Path(path))
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
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
        got = (raw.get("format"), raw.get("format_version")) if isinstance(raw, dict) else (None, None)
        raise ModelError(
            f"sidecar {str(side)!r} has format {got[0]!r} v{got[1]!r}; expected {FORMAT!r} v{FORMAT_VERSION}"
        )
    if "sha256" not in raw:
        raise ModelError(f"sidecar {str(side)!r} lacks required keys ['sha256']")
    try:
        sidecar = Sidecar.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"sidecar {str(side)!r}: {exc}") from None
    if verify_sha256:
        actual = sha256_file(onnx_path)
        if actual != sidecar.sha256:
            raise ModelError(
                f"model file {str(onnx_path)!r} has sha256 {actual[:16]}..., but its sidecar says "
                f"{str(sidecar.sha256)[:16]}...: the file was changed or corrupted; refusing to load it"
            )
    return ModelInfo(onnx_path=onnx_path, sidecar_path=side, sidecar=sidecar)


def write_sidecar(onnx_path: str | Path, sidecar: Sidecar | Mapping[str, Any]) -> Path:
    """Write the sidecar beside ``onnx_path`` (atomically) with the file name and its sha256 filled in.

    ``sidecar`` is a :class:`Sidecar` or its JSON object; the writer keys (format, version, file, sha256)
    are set here, whatever the caller passed, so a sidecar copied from a parent model describes this file."""
    onnx_path = Path(onnx_path)
    if not isinstance(sidecar, Sidecar):
        sidecar = Sidecar.from_dict({k: v for k, v in sidecar.items() if k not in WRITER_KEYS})
    sidecar = sidecar.replace(
        format=FORMAT, format_version=FORMAT_VERSION, file=onnx_path.name, sha256=sha256_file(onnx_path)
    )
    side = sidecar_path_for(onnx_path)
    atomic_write_json(side, sidecar.to_dict())
    return side

"""The model sidecar (``model.json`` beside ``model.onnx``): a typed contract between training and inference.

Like a MONAI bundle's ``metadata.json`` and torchvision's weights ``meta``, the sidecar says how to feed the
network and read it: classes in output order, the input tensor, the preprocessing recipe (including white
balance and framing), calibration (temperature, review threshold), the sha256 of the ONNX file, and what
produced it (metrics, parity, int8 quantisation, data, training recipe, software).  Inference reads only
this; a model without it, or whose sha256 or class list does not match, does not load.

:class:`Sidecar` is the one parsed form; :func:`read_sidecar` is the one reader and :func:`write_sidecar` the
one writer (training, laboratory adaptation, the flag benchmark and the registry all go through them).  The
records are pydantic dataclasses (:mod:`wbcproc.contract`): the same contract as a JSON Schema, for tools
outside Python, is generated from them into ``wbcproc/data/sidecar.schema.json`` (``python -m wbcproc.sidecar``).

Format history (``format_version``):

- **1** (wbc 0.1 onwards): the fields below.  Blocks read by inference are typed (``input``, ``output``,
  ``preprocess``, ``parity``, ``quantization``, ``confusion_val``); ``domain`` (out-of-distribution
  reference), ``flag_performance``, ``adaptation`` and the provenance blocks (``metrics``, ``data``,
  ``init``, ``training``, ``software``) are JSON objects described in the schema.  Unknown top-level keys
  are refused: a new key is a new format version.
- **2** (wbc 0.2 onwards): adds the optional ``weights`` block, the network's float weights beside the ONNX
  file.  A sidecar without it is still written as version 1, so an earlier reader keeps reading every model
  that carries no float weights.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, StrictBool, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass as record

from wbcproc.atomic import atomic_write_json
from wbcproc.classes import CLASSES, check_class_list
from wbcproc.contract import RECORD, Record
from wbcproc.preprocess import PreprocessSpec

FORMAT = "wbc-model-sidecar"
FORMAT_VERSION = 2  # the newest this reader knows; a sidecar without ``weights`` is written as 1
FORMAT_VERSIONS = (1, 2)
SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "sidecar.schema.json"
WRITER_KEYS = ("format", "format_version", "file", "sha256")  # filled in by write_sidecar, never by callers
SCHEMA_ID = "https://github.com/wbc-project/wbc/wbcproc/data/sidecar.schema.json"


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


@record(frozen=True, config=RECORD)
class InputSpec(Record):
    """The network's input tensor."""

    name: str = "input"
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    shape: tuple[str | int, str | int, str | int, str | int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.shape is not None:
            d["shape"] = list(self.shape)
        return _without_none(d)


@record(frozen=True, config=RECORD)
class OutputSpec(Record):
    """The network's output and how probabilities are made from it."""

    name: str = "logits"
    kind: Literal["logits"] = "logits"
    apply: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(dataclasses.asdict(self))


Share = Annotated[float, Field(ge=0.0, le=1.0)]
_EACH_CLASS = Field(min_length=len(CLASSES), max_length=len(CLASSES))  # one entry per canonical class


@record(frozen=True, config=RECORD)
class Parity(Record):
    """The ONNX export checked against PyTorch on the test split (the registry promotes only if passed)."""

    passed: StrictBool
    n: NonNegativeInt | None = None
    top1_agreement: Share | None = None
    max_abs_logit_diff: NonNegativeFloat | None = None
    tolerance: NonNegativeFloat | None = None
    note: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(dataclasses.asdict(self))


@record(frozen=True, config=RECORD)
class Quantization(Record):
    """The static int8 export: whether the shipped file is it, and its weight range (which CPU kernels are
    exact depends on it, see :mod:`wbcproc.int8`)."""

    kept: Annotated[StrictBool, Field(description="the shipped file is the int8 one")]
    weight_max_abs: (
        Annotated[int, Field(ge=1, le=127, description="64 or less: exact on every CPU (wbcproc.int8)")] | None
    ) = None
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    weights: str | None = None
    activations: str | None = None
    why: str | None = None

    @field_validator("weight_max_abs", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        """A JSON number, not text that looks like one: which int8 kernels are exact is decided from it."""
        if value is not None and not isinstance(value, int | float):
            raise ValueError(f"quantization.weight_max_abs is {value!r}; expected an integer in 1..127")
        return value

    def to_dict(self) -> dict[str, Any]:
        return _without_none(dataclasses.asdict(self))


@record(frozen=True, config=RECORD)
class ConfusionReference(Record):
    """Validation confusion counts (rows true, columns called, in class order): what inference corrects the
    differential with (:mod:`wbcproc.correction`)."""

    counts: Annotated[
        tuple[Annotated[tuple[NonNegativeInt, ...], _EACH_CLASS], ...],
        _EACH_CLASS,
        Field(description="rows true class, columns called class, in the order of classes"),
    ]
    classes: tuple[str, ...]
    n: NonNegativeInt
    source: str

    def __post_init__(self) -> None:
        k = len(self.classes)
        if len(self.counts) != k or any(len(row) != k for row in self.counts):
            raise ValueError(f"confusion_val.counts must be {k} x {k} (one row and column per class)")

    def to_dict(self) -> dict[str, Any]:
        return {"counts": [list(r) for r in self.counts], "classes": list(self.classes), "n": self.n,
                "source": self.source}  # fmt: skip


@record(frozen=True, config=RECORD)
class FloatWeights(Record):
    """The network's float weights, a file beside the ONNX file (``training.weights``): what a fine-tune or a
    continued training starts from on any machine.  The shipped ONNX file is int8, and the float network it
    was quantised from cannot be recovered from it; without this file it stays on the machine that trained it."""

    file: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$",
            description="a file name in the ONNX file's folder (no folder part)",
        ),
    ]
    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$", description="of that file")]
    format: Literal["safetensors"] = "safetensors"
    dtype: Literal["float16"] = "float16"
    architecture: Annotated[str, Field(min_length=1, description="the torchvision network the state dict fits")] = (
        "ResNet50"
    )
    tensors: NonNegativeInt | None = None
    parameters: NonNegativeInt | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(dataclasses.asdict(self))


def _block(description: str) -> Any:
    """A provenance or reference block: a JSON object whose inside its own module documents."""
    return Field(description=description)


Text = Annotated[str, Field(min_length=1)]
ClassName = Literal[CLASSES]  # type: ignore[valid-type]


@record(frozen=True, kw_only=True, config=RECORD)
class Sidecar(Record):
    """A model's sidecar, parsed.  Field order is the order the JSON is written in."""

    name: Text
    version: Text
    created_at: Annotated[str | None, Field(description="ISO 8601 time the model was exported")] = None
    classes: Annotated[
        tuple[ClassName, ...],
        _EACH_CLASS,
        Field(
            description="class names in the network's output order: each canonical class exactly once",
            json_schema_extra={"uniqueItems": True},
        ),
    ]
    input: InputSpec
    output: OutputSpec = dataclasses.field(default_factory=OutputSpec)
    preprocess: PreprocessSpec
    temperature: Annotated[
        float, Field(gt=0, description="softmax(logits / temperature), fitted on validation NLL")
    ] = 1.0
    review_threshold: Annotated[
        Share, Field(description="cells below this calibrated confidence are marked REVIEW")
    ] = 0.7
    metrics: Annotated[
        dict[str, Any] | None,
        _block("test-split figures of the file that ships (accuracy, macro_f1, ece, per_class_f1, n)"),
    ] = None
    parity: Parity | None = None
    quantization: Quantization | None = None
    data: Annotated[dict[str, Any] | None, _block("data roots, cells per split and class, the split rule")] = None
    init: Annotated[dict[str, Any] | None, _block("requested and used initialisation")] = None
    training: Annotated[
        dict[str, Any] | None, _block("the training recipe as run (training.recipe.TrainConfig) and its outcome")
    ] = None
    software: Annotated[dict[str, str] | None, _block("versions of the software that made the model")] = None
    intended_use: str | None = None
    domain: Annotated[
        dict[str, Any] | None,
        _block("out-of-distribution reference (wbcproc.domain): colour/framing features, model uncertainty"),
    ] = None
    confusion_val: ConfusionReference | None = None
    flag_performance: Annotated[
        dict[str, Any] | None, _block("measured by benchmarks/flags.py; shown on the report's About sheet")
    ] = None
    adaptation: Annotated[
        dict[str, Any] | None, _block("a laboratory head (training.adapt): parent model, cells used, metrics")
    ] = None
    weights: FloatWeights | None = None
    # filled in by write_sidecar
    format: Literal["wbc-model-sidecar"] = FORMAT
    format_version: Annotated[
        Literal[1, 2], Field(description="1 without float weights, 2 with (earlier readers read every 1)")
    ] = FORMAT_VERSION
    file: Annotated[str | None, Field(description="the ONNX file this sidecar describes")] = None
    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")] | None = None

    WHERE = "the sidecar"

    @field_validator("classes", mode="before")
    @classmethod
    def _canonical(cls, value: Any, info: ValidationInfo) -> Any:
        """The class list's own message (which names are unknown, missing or duplicated) before the types'."""
        if isinstance(value, list | tuple):
            check_class_list(list(value), where=f"sidecar of {info.data.get('name')} {info.data.get('version')}")
        return value

    @classmethod
    def from_dict(cls, raw: Any) -> Sidecar:
        """Parse and check a sidecar's JSON object.  Raises ``ValueError`` naming the bad key or value."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"the sidecar is a JSON {type(raw).__name__}; expected an object")
        if raw.get("format", FORMAT) != FORMAT or raw.get("format_version", FORMAT_VERSION) not in FORMAT_VERSIONS:
            raise ValueError(
                f"format {raw.get('format')!r} v{raw.get('format_version')!r}; expected {FORMAT!r} "
                f"v{' or v'.join(map(str, FORMAT_VERSIONS))}"
            )
        if raw.get("format_version") == 1 and raw.get("weights") is not None:
            raise ValueError("a 'weights' block needs format_version 2 (version 1 sidecars have none)")
        return super().from_dict(dict(raw))

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


def sidecar_schema() -> dict[str, Any]:
    """The JSON Schema of a written sidecar, generated from :class:`Sidecar` (shipped as
    ``data/sidecar.schema.json``: ``python -m wbcproc.sidecar``).  A written sidecar always carries the
    writer's keys, so they are required here although a caller may leave them out."""
    schema = Sidecar.json_schema()
    schema["required"] = [*schema["required"], *(k for k in WRITER_KEYS if k != "file")]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": f"wbc model sidecar, format_version {FORMAT_VERSION}",
        "description": (
            "model.json beside model.onnx: what inference needs to feed and read the network, and what produced "
            "it. Generated from wbcproc.sidecar.Sidecar (python -m wbcproc.sidecar)."
        ),
    }


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
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("format_version") not in FORMAT_VERSIONS:
        got = (raw.get("format"), raw.get("format_version")) if isinstance(raw, dict) else (None, None)
        raise ModelError(
            f"sidecar {str(side)!r} has format {got[0]!r} v{got[1]!r}; expected {FORMAT!r} "
            f"v{' or v'.join(map(str, FORMAT_VERSIONS))} (a newer wbc wrote it: update wbc to read it)"
        )
    if "sha256" not in raw:
        raise ModelError(f"sidecar {str(side)!r} lacks required keys ['sha256']")
    try:
        sidecar = Sidecar.from_dict(raw)
    except ValueError as exc:
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
        format=FORMAT,
        format_version=2 if sidecar.weights is not None else 1,
        file=onnx_path.name,
        sha256=sha256_file(onnx_path),
    )
    side = sidecar_path_for(onnx_path)
    atomic_write_json(side, sidecar.to_dict())
    return side


def float_weights_path(info: ModelInfo) -> Path:
    """The model's float weights file, checked against the sha256 its sidecar gives.  Raises
    :class:`ModelError` when the sidecar lists none, or the file is missing or not the one listed."""
    w = info.sidecar.weights
    where = f"model {info.name} {info.version} ({str(info.onnx_path)!r})"
    if w is None:
        raise ModelError(
            f"{where} carries no float weights (its sidecar has no 'weights' block): a model exported by "
            "`wbc train` carries them; an int8 file alone cannot be trained on"
        )
    path = info.onnx_path.parent / w.file
    if not path.is_file():
        raise ModelError(f"{where}: its float weights {w.file!r} are not beside it; copy them with the model")
    actual = sha256_file(path)
    if actual != w.sha256:
        raise ModelError(
            f"{where}: float weights {str(path)!r} have sha256 {actual[:16]}..., but the sidecar says "
            f"{w.sha256[:16]}...: the file was changed or belongs to another model"
        )
    return path


if __name__ == "__main__":
    print(json.dumps(sidecar_schema(), indent=2))

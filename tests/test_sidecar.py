"""The sidecar contract: one typed reader/writer, a JSON Schema in step with it, and no model<->registry cycle."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

import jsonschema
import pytest
from helpers import make_tiny_model

from wbcproc.classes import CLASSES
from wbcproc.framing import Framing
from wbcproc.preprocess import COLOUR_METHODS, RESIZE_RULES, PreprocessSpec
from wbcproc.resolve import resolve_model_path
from wbcproc.sidecar import (
    SCHEMA_PATH,
    WRITER_KEYS,
    ConfusionReference,
    InputSpec,
    ModelError,
    OutputSpec,
    Parity,
    Quantization,
    Sidecar,
    read_sidecar,
    sha256_file,
    write_sidecar,
)

SCHEMA = json.loads(SCHEMA_PATH.read_text())
SHIPPED = resolve_model_path(None)


def _validate(raw: dict) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(raw)


def _required(cls) -> set[str]:
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}


def test_shipped_sidecar_round_trips_exactly_and_meets_the_schema():
    raw = json.loads(SHIPPED.with_suffix(".json").read_text())
    side = Sidecar.from_dict(raw)
    assert side.to_dict() == raw and list(side.to_dict()) == list(raw)  # same keys in the same order
    _validate(raw)
    assert isinstance(side.quantization, Quantization) and side.quantization.weight_max_abs == 64
    assert isinstance(side.confusion_val, ConfusionReference) and len(side.confusion_val.counts) == len(CLASSES)


def test_schema_and_dataclasses_name_the_same_keys():
    props = SCHEMA["properties"]
    assert set(props) == {f.name for f in fields(Sidecar)}
    assert set(SCHEMA["required"]) == _required(Sidecar) | {"format", "format_version", "sha256"}
    for key, cls in [("input", InputSpec), ("output", OutputSpec), ("parity", Parity), ("quantization", Quantization),
                     ("confusion_val", ConfusionReference), ("preprocess", PreprocessSpec)]:  # fmt: skip
        assert set(props[key]["properties"]) == {f.name for f in fields(cls)}, key
        assert set(props[key].get("required", [])) == (
            {f.name for f in fields(cls)} if cls is ConfusionReference else _required(cls)
        ), key
    framing = props["preprocess"]["properties"]["framing"]["oneOf"][1]["properties"]
    assert set(framing) == {f.name for f in fields(Framing)}
    assert props["preprocess"]["properties"]["resize"]["enum"] == list(RESIZE_RULES)
    colour = props["preprocess"]["properties"]["colour_normalisation"]["oneOf"][1]["properties"]
    assert colour["method"]["enum"] == list(COLOUR_METHODS)
    assert props["classes"]["items"]["enum"] == list(CLASSES)
    assert props["format_version"]["const"] == Sidecar.__dataclass_fields__["format_version"].default


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, r"unknown keys \['colour'\]"),
        ({"parity": {"passed": "yes"}}, r"parity.passed is 'yes'"),
        ({"parity": {"passed": True, "speed": 1}}, r"parity has unknown keys \['speed'\]"),
        ({"quantization": {"kept": True, "weight_max_abs": 300}}, r"weight_max_abs is 300"),
        ({"confusion_val": {"counts": [[1, 2], [3, 4]], "classes": list(CLASSES), "n": 10, "source": "x"}}, "8 x 8"),
        ({"classes": ["neutrophil"] * 8}, "duplicated"),
        ({"review_threshold": 1.5}, "review_threshold 1.5"),
        ({"preprocess": {"input_size": 4}}, "input_size 4"),
        ({"domain": [1, 2]}, "domain is list"),
        ({"format_version": 2}, "v2"),
    ],
)
def test_a_bad_sidecar_is_refused_by_the_reader_and_the_schema(tmp_path, change, message):
    path = make_tiny_model(tmp_path)
    raw = json.loads(path.with_suffix(".json").read_text())
    _validate(raw)  # the tiny model's sidecar is valid as written
    raw.update(change)
    path.with_suffix(".json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=message):
        read_sidecar(path)
    with pytest.raises(jsonschema.ValidationError):
        _validate(raw)


def test_the_writer_fills_its_own_keys_whatever_the_caller_passed(tmp_path):
    """A sidecar copied from a parent model describes the new file: name and sha256 are the writer's."""
    parent = read_sidecar(SHIPPED).sidecar
    path = make_tiny_model(tmp_path / "child")
    write_sidecar(path, parent.replace(version="child", sha256="0" * 64, file="elsewhere.onnx"))
    child = read_sidecar(path)  # verifies the sha256
    assert child.sha256 == sha256_file(path) != parent.sha256 and child.sidecar.file == "model.onnx"
    assert child.sidecar.replace(version=parent.version, sha256=parent.sha256, file=parent.file) == parent
    as_dict = {k: v for k, v in parent.to_dict().items() if k not in WRITER_KEYS}
    write_sidecar(path, as_dict)  # the JSON object form goes through the same parser
    assert read_sidecar(path).sidecar.replace(sha256=parent.sha256, file=parent.file) == parent

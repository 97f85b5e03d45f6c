"""The sidecar contract: one typed reader/writer, a JSON Schema in step with it, and no model<->registry cycle."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

import jsonschema
import pytest
from helpers import make_tiny_model

from wbcproc.classes import CLASSES
from wbcproc.framing import Framing
from wbcproc.preprocess import COLOUR_METHODS, RESIZE_RULES
from wbcproc.resolve import resolve_model_path
from wbcproc.sidecar import (
    FORMAT_VERSIONS,
    SCHEMA_PATH,
    WRITER_KEYS,
    ConfusionReference,
    ModelError,
    Quantization,
    Sidecar,
    read_sidecar,
    sha256_file,
    sidecar_schema,
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


def test_the_shipped_schema_is_generated_from_the_records():
    """``wbcproc/data/sidecar.schema.json`` is ``python -m wbcproc.sidecar``'s output, so the schema tools
    outside Python read and the reader's checks cannot drift apart."""
    assert sidecar_schema() == SCHEMA, "regenerate: python -m wbcproc.sidecar > wbcproc/data/sidecar.schema.json"
    props = SCHEMA["properties"]
    assert list(props) == [f.name for f in fields(Sidecar)]
    assert set(SCHEMA["required"]) == _required(Sidecar) | {"format", "format_version", "sha256"}
    assert props["format_version"]["enum"] == list(FORMAT_VERSIONS) and SCHEMA["additionalProperties"] is False
    defs = SCHEMA["$defs"]
    assert defs["PreprocessSpec"]["properties"]["resize"]["enum"] == list(RESIZE_RULES)
    assert defs["ColourNormalisation"]["properties"]["method"]["enum"] == list(COLOUR_METHODS)
    assert set(defs["Framing"]["properties"]) == {f.name for f in fields(Framing)}
    assert props["classes"]["items"]["enum"] == list(CLASSES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, r"the sidecar has unknown keys \['colour'\]$"),
        ({"parity": {"passed": "yes"}}, r"parity.passed is 'yes'; expected a valid boolean$"),
        ({"parity": {"passed": True, "speed": 1}}, r"parity has unknown keys \['speed'\]$"),
        ({"quantization": {"kept": True, "weight_max_abs": 300}}, r"weight_max_abs is 300; expected less than or"),
        ({"quantization": {"kept": True, "weight_max_abs": "64"}}, r"weight_max_abs is '64'; expected an integer"),
        (
            {"confusion_val": {"counts": [[1, 2], [3, 4]], "classes": list(CLASSES), "n": 10, "source": "x"}},
            r"confusion_val.counts.0 is \[1, 2\]; tuple should have at least 8 items",
        ),
        ({"classes": ["neutrophil"] * 8}, "duplicated"),
        ({"classes": [*CLASSES[:7], "blast"]}, r"unknown \['blast'\]; missing \['platelet'\]"),
        ({"review_threshold": 1.5}, r"review_threshold is 1.5; expected less than or equal to 1"),
        ({"temperature": 0}, r"temperature is 0; expected greater than 0"),
        ({"preprocess": {"input_size": 4}}, r"preprocess.input_size is 4; expected greater than or equal to 8"),
        ({"preprocess": {"framing": {"crop_rbc": 50}}}, r"preprocess.framing.crop_rbc is 50; expected less than"),
        ({"domain": [1, 2]}, r"domain is \[1, 2\]; expected a valid dictionary"),
        ({"input": {"layout": "NHWC"}}, r"input.layout is 'NHWC'; expected 'NCHW'"),
        ({"sha256": "xyz"}, r"sha256 is 'xyz'; string should match pattern"),
        ({"name": ""}, r"name is ''; string should have at least 1 character"),
        ({"format_version": 3}, "v3"),
        (
            {"format_version": 2, "weights": {"file": "../elsewhere.safetensors", "sha256": "0" * 64}},
            r"weights.file is '../elsewhere.safetensors'; string should match pattern",
        ),
        ({"format_version": 2, "weights": {"file": "w.safetensors"}}, r"weights lacks required keys \['sha256'\]"),
        (
            {"format_version": 2, "weights": {"file": "w.safetensors", "sha256": "0" * 64, "dtype": "int8"}},
            r"weights.dtype is 'int8'; expected 'float16'",
        ),
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


def test_float_weights_need_format_version_2_and_a_matching_file(tmp_path):
    """A version 1 sidecar has no float weights (an earlier reader would refuse the key); a listed weights
    file must be beside the model with the sha256 the sidecar gives."""
    from wbcproc.sidecar import float_weights_path

    path = make_tiny_model(tmp_path)
    raw = json.loads(path.with_suffix(".json").read_text())
    assert raw["format_version"] == 1 and "weights" not in raw  # written without float weights: version 1
    with pytest.raises(ModelError, match="carries no float weights"):
        float_weights_path(read_sidecar(path))
    (tmp_path / "w.safetensors").write_bytes(b"not these")
    raw["weights"] = {"file": "w.safetensors", "sha256": "0" * 64}
    path.with_suffix(".json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="a 'weights' block needs format_version 2"):
        read_sidecar(path)
    raw["format_version"] = 2
    path.with_suffix(".json").write_text(json.dumps(raw))
    _validate(raw)
    with pytest.raises(ModelError, match=r"w.safetensors' have sha256 .* but the sidecar says 0000"):
        float_weights_path(read_sidecar(path))

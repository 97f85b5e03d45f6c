from __future__ import annotations

import json

import pytest
from helpers import make_tiny_model

from wbcproc.registry import Registry, RegistryError, decide_promotion


def test_decision_rules():
    assert decide_promotion({"macro_f1": 0.9, "parity_passed": True}, None).promote
    assert decide_promotion({"macro_f1": 0.91, "parity_passed": True}, {"macro_f1": 0.9}, margin=0.005).promote
    assert not decide_promotion({"macro_f1": 0.903, "parity_passed": True}, {"macro_f1": 0.9}, margin=0.005).promote
    assert not decide_promotion({"macro_f1": 0.89, "parity_passed": True}, {"macro_f1": 0.9}).promote
    d = decide_promotion({"macro_f1": 0.99, "parity_passed": False}, {"macro_f1": 0.5})
    assert not d.promote and "parity" in d.reason


def test_register_promote_and_refuse(tmp_path):
    reg = Registry(tmp_path / "reg")
    a = make_tiny_model(tmp_path / "a", version="1")
    b = make_tiny_model(tmp_path / "b", version="2", parity={"passed": False})
    va, vb = reg.register(a.parent), reg.register(b.parent)
    assert reg.register(a.parent) == va  # idempotent
    assert reg.current_version() is None
    reg.promote(va, reason="first")
    assert reg.current_path() == reg.versions_dir / "1" / "model.onnx"
    with pytest.raises(RegistryError, match="parity"):
        reg.promote(vb, reason="should fail")
    assert reg.current_version() == "1"
    # a tampered registered model never becomes current
    with open(reg.versions_dir / "1" / "model.onnx", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(RegistryError, match="sha256"):
        reg.promote("1", reason="again")
    assert [v.version for v in reg.list()] == ["1", "2"]
    assert [v.current for v in reg.list()] == [True, False]
    history = [json.loads(line) for line in (reg.root / "history.jsonl").read_text().splitlines()]
    assert history[0]["version"] == "1" and history[0]["promoted"]
    with pytest.raises(RegistryError, match="no model version"):
        reg.show("9")

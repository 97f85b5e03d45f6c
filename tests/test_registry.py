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


def test_promotion_needs_every_sizeable_source_to_improve():
    """Adapting to a new lab: better overall is not enough - better on the original test split and on the
    lab's own held-out cells, each (sources with fewer than 20 test cells are not decisive)."""
    champ = {
        "macro_f1": 0.90,
        "per_source": {"/d/pbc": {"n": 1800, "macro_f1": 0.97}, "/d/lab": {"n": 60, "macro_f1": 0.60}},
    }
    both = {
        "macro_f1": 0.93,
        "parity_passed": True,
        "per_source": {"/d/pbc": {"n": 1800, "macro_f1": 0.972}, "/d/lab": {"n": 60, "macro_f1": 0.85}},
    }
    d = decide_promotion(both, champ)
    assert d.promote and "per source" in d.reason and "lab" in d.reason
    lab_only = {**both, "per_source": {"/d/pbc": {"n": 1800, "macro_f1": 0.95}, "/d/lab": {"n": 60, "macro_f1": 0.9}}}
    d = decide_promotion(lab_only, champ)
    assert not d.promote and "/d/pbc" in d.reason
    tiny_lab = {**both, "per_source": {"/d/pbc": {"n": 1800, "macro_f1": 0.975}, "/d/lab": {"n": 5, "macro_f1": 0.1}}}
    assert decide_promotion(tiny_lab, champ).promote

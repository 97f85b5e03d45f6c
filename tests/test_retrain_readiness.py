"""The weekly retrain on a fresh install: nothing to learn from is a Completed run that says why, not a
failure every week."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from helpers import CELLS

from flows.retrain import _remember, nothing_to_do, retrain_flow, training_extra_missing


@pytest.mark.slow
def test_retrain_without_a_data_folder_completes_with_nothing_to_do(tmp_path, prefect_server):
    root = tmp_path / "home" / "training-data"  # what `wbc serve` passes before anyone reviewed a cell
    state = retrain_flow(data=[str(root)], runs_dir=str(tmp_path / "runs"), only_if_new=True, return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert out["skipped"] is True and out["promoted"] is False and out["version"] is None
    assert (
        "does not exist" in out["reason"]
        and f"wbc export-reviewed REPORT.xlsx... --sample SAMPLE_DIR... --lab-data {root}" in out["reason"]
    )
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_empty_class_folders_are_nothing_to_learn_from(tmp_path):
    root = tmp_path / "lab"
    for c in ("neutrophil", "ig"):
        (root / "cells" / c).mkdir(parents=True)
    reason = nothing_to_do([str(root)], str(tmp_path / "runs"), only_if_new=True)
    assert reason is not None and reason.startswith("no reviewed cells in") and "wbc export-reviewed" in reason


def test_only_new_cells_start_a_scheduled_retrain(tmp_path):
    root = tmp_path / "lab"
    shutil.copytree(CELLS, root / "cells")
    runs = str(tmp_path / "runs")
    assert nothing_to_do([str(root)], runs, only_if_new=True) is None  # never retrained: go
    _remember([str(root)], runs)
    reason = nothing_to_do([str(root)], runs, only_if_new=True)
    assert reason is not None and "nothing new to learn from since the retrain of" in reason and "24 cells" in reason
    assert nothing_to_do([str(root)], runs, only_if_new=False) is None  # a person asking for a retrain gets one
    shutil.copy(next(CELLS.glob("ig/*.jpg")), root / "cells" / "ig" / "reviewed-new.jpg")
    assert nothing_to_do([str(root)], runs, only_if_new=True) is None  # a newly reviewed cell: go


def test_missing_pytorch_is_said_plainly(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    msg = training_extra_missing()
    assert msg is not None and "pip install 'wbc[train]'" in msg
    assert nothing_to_do([str(tmp_path)], str(tmp_path / "runs"), only_if_new=True) == msg


@pytest.mark.slow
def test_weekly_retrain_adapts_on_the_cpu_and_promotes_only_a_better_model(tmp_path, prefect_server, labelled_set):
    """mode="adapt" (what the weekly deployment runs): the model in use adapted to the lab's cells, judged
    on the lab's held-out cells against the model in use, registered, promoted only if better; the same
    cells again next week are nothing new."""
    from wbcproc.registry import Registry
    from wbcproc.sidecar import read_sidecar

    kw = dict(data=[str(labelled_set)], runs_dir=str(tmp_path / "runs"), registry=str(tmp_path / "reg"), mode="adapt")
    out = retrain_flow(**kw, only_if_new=True)
    assert out["skipped"] is False and out["mode"] == "adapt" and out["version"]
    assert out["challenger_macro_f1"] is not None and out["champion_macro_f1"] is not None
    assert out["promoted"] == (out["challenger_macro_f1"] > out["champion_macro_f1"]), out["reason"]
    reg = Registry(tmp_path / "reg")
    assert out["version"] in {v.version for v in reg.list()}
    assert (reg.current_version() == out["version"]) == out["promoted"]
    info = read_sidecar(Path(out["run_dir"]) / "model.onnx")
    assert info.sidecar.adaptation["metrics"]["lab_holdout"]["adapted"]["n"] > 0
    again = retrain_flow(**kw, only_if_new=True)
    assert again["skipped"] is True and "nothing new to learn from" in again["reason"]

"""`wbc adapt`: a laboratory's reviewed cells -> an adapted model, end to end with real models and cells."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import CELLS, assert_sidecar_meets_schema

from training.adapt import AdaptError, Features, adapt, load_graph, write_adapted
from wbcproc.domain import assess
from wbcproc.model import load_classifier
from wbcproc.registry import Registry
from wbcproc.resolve import resolve_model_path
from wbcproc.sidecar import read_sidecar

WBC = str(Path(sys.executable).parent / "wbc")


def _x(spec, n=None):
    from wbcproc.imageio import read_image
    from wbcproc.preprocess import prepare_image, to_input

    files = sorted(CELLS.glob("*/*.jpg"))[:n]
    return to_input(np.stack([prepare_image(read_image(f).bgr, spec) for f in files]), spec)


def test_the_head_swap_keeps_the_parent_function(tmp_path):
    """Writing the parent's own head back gives the parent's logits (up to the logits' int8 step, which the
    adapted graph no longer applies) - the graph surgery changes nothing else."""
    parent = resolve_model_path(None)
    out = write_adapted(parent, load_graph(parent).head, tmp_path / "model.onnx")
    shutil.copy(parent.with_suffix(".json"), out.with_suffix(".json"))  # Features reads the sidecar's int8 plan
    x = _x(read_sidecar(parent).preprocess, 8)
    before, after = Features(parent)(x)[0], Features(out)(x)[0]
    assert np.abs(before - after).max() <= 0.1  # the parent's logits are re-quantised in steps of ~0.07
    assert (before.argmax(1) == after.argmax(1)).all()


@pytest.mark.slow
def test_wbc_adapt_end_to_end_with_the_shipped_model(tmp_path):
    out = tmp_path / "adapted"
    r = subprocess.run(
        [WBC, "adapt", "--lab-data", str(CELLS), "--out", str(out), "--min-per-class", "2", "--holdout", "0", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    info = read_sidecar(out / "model.onnx")  # sha256 and class list check
    assert_sidecar_meets_schema(out / "model.onnx")
    parent = read_sidecar(resolve_model_path(None))
    a = info.sidecar.adaptation
    assert a["parent"]["sha256"] == parent.sha256 and info.version.startswith(parent.version + "+lab.")
    assert len(a["lab_cells"]) == 24 and all(len(c["sha256"]) == 64 for c in a["lab_cells"])
    assert a["stage_fine_tuned"] is True and "layer4" in a["method"]  # the default: last stage + head
    check = a["metrics"]["original_check"]  # the original laboratory is not forgotten
    assert check["adapted"]["accuracy"] >= check["parent"]["accuracy"] - 0.01
    # how long adapting takes is a benchmark figure (benchmarks/adapt_curve.py), not a test
    assert res["seconds"] > 0 and info.sidecar.domain["labs"]
    # nothing held out: the laboratory is known by its look but not validated (its samples keep DOMAIN_SHIFT),
    # and the original laboratory's uncertainty thresholds follow the adapted model's calibration
    assert (
        info.sidecar.domain["labs"][-1]["validated"] is False and "uncertainty" not in info.sidecar.domain["labs"][-1]
    )
    assert a["metrics"]["lab_guard"]["validated"] is False
    shown = subprocess.run(
        [WBC, "info", "--model", str(out / "model.onnx")], capture_output=True, text=True, timeout=120
    )
    assert (
        "not validated (0 held-out laboratory cells, at least 20 needed): its samples carry DOMAIN_SHIFT"
        in shown.stdout
    )
    moved = info.sidecar.domain["uncertainty"]["adapted_shift"]
    assert moved["check_cells"] == 240 and moved["shift"] == pytest.approx(
        1.25 * (moved["mean_uncertainty_adapted"] - moved["mean_uncertainty_parent"]), abs=1e-4
    )
    # it classifies, with the same preprocessing, and the registry takes it
    clf = load_classifier(out / "model.onnx", threads=1)
    p = clf.probabilities(_x(info.preprocess))
    assert (
        p.shape == (24, 8)
        and (p.argmax(1) == [info.classes.index(f.parent.name) for f in sorted(CELLS.glob("*/*.jpg"))]).mean() >= 0.9
    )
    reg = Registry(tmp_path / "registry")
    version = reg.register(out)
    assert version == info.version


def test_a_short_class_is_refused_and_says_which(tmp_path):
    lab = tmp_path / "lab"
    shutil.copytree(CELLS, lab)
    for f in sorted((lab / "ig").glob("*.jpg"))[1:]:
        f.unlink()  # one ig cell left
    with pytest.raises(AdaptError, match=r"too few reviewed cells to adapt: ig has 1 \(at least 2 per reviewed class"):
        adapt([lab], tmp_path / "out", min_per_class=2, holdout=0.0, log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_adapt_a_model_without_replay_features(tmp_path, tiny_model):
    """Any model with a linear head adapts (here the float tiny test model, no replay file): lab cells only."""
    said: list[str] = []
    res = adapt([CELLS], tmp_path / "out", tiny_model, min_per_class=2, holdout=0.0, log=said.append)
    assert any("no replay features" in s for s in said)
    info = read_sidecar(tmp_path / "out" / "model.onnx")
    assert info.sidecar.adaptation["replay"] is False and "original_check" not in res["metrics"]
    assert load_classifier(tmp_path / "out" / "model.onnx", threads=1).probabilities(_x(info.preprocess, 4)).shape == (
        4,
        8,
    )


def test_guard_knows_an_adapted_laboratory():
    rng = np.random.default_rng(0)
    ref = {"mean": [0.0] * 8, "cov_inv": np.eye(8).tolist(), "threshold": 3.0}
    sample = rng.normal(10.0, 0.1, (30, 8))
    assert assess(sample, ref)["reasons"] == ["colour/framing"]
    lab = {"name": "lab-a", "mean": [10.0] * 8, "cov_inv": np.eye(8).tolist(), "threshold": 3.0}
    out = assess(sample, {**ref, "labs": [lab]})
    assert out["shifted"] is False and out["matched_lab"]["name"] == "lab-a"


def test_an_adapted_laboratory_is_judged_by_its_own_uncertainty_only_once_validated():
    """The adapted model is less sure on the laboratory's cells than on its training data: a validated
    laboratory's samples are judged against what is usual there; an unvalidated one's keep the flag."""
    from wbcproc.domain import fit_uncertainty

    rng = np.random.default_rng(1)
    ref = {
        "mean": [0.0] * 8,
        "cov_inv": np.eye(8).tolist(),
        "threshold": 3.0,
        "uncertainty": fit_uncertainty(rng.beta(0.5, 40, 500), draws=300),  # confident in-domain
    }
    look = {"mean": [10.0] * 8, "cov_inv": np.eye(8).tolist(), "threshold": 3.0}
    lab_u = fit_uncertainty(rng.beta(1.0, 12, 40), draws=300, bootstrap=True)  # less sure there
    sample = rng.normal(10.0, 0.1, (50, 8))
    usual_there = rng.beta(1.0, 12, 50)
    assert usual_there.mean() > ref["uncertainty"]["thresholds"]["50"]  # the original thresholds would flag it
    validated = {**ref, "labs": [{**look, "name": "lab-a", "validated": True, "uncertainty": lab_u}]}
    out = assess(sample, validated, usual_there)
    assert out["shifted"] is False and out["uncertainty_reference"] == "lab-a"
    worse = assess(sample, validated, np.full(50, 0.4))  # unusually unsure even there
    assert worse["reasons"] == ["model uncertainty"] and worse["uncertainty_threshold"] == round(
        lab_u["thresholds"]["50"], 4
    )
    unvalidated = {**ref, "labs": [{**look, "name": "lab-b", "validated": False}]}
    out = assess(sample, unvalidated, usual_there)
    assert out["shifted"] and out["reasons"][0] == "laboratory not validated" and out["matched_lab"]["name"] == "lab-b"
    both = {**ref, "labs": [*unvalidated["labs"], *validated["labs"]]}  # the validated one is preferred
    assert assess(sample, both, usual_there)["matched_lab"]["name"] == "lab-a"
    in_domain = assess(rng.normal(0.0, 0.1, (50, 8)), validated, usual_there)  # the original's look: its thresholds
    assert in_domain["reasons"] == ["model uncertainty"] and in_domain["uncertainty_reference"] is None


def test_adapting_again_replaces_the_laboratory_and_unvalidates_the_others():
    """The weekly retrain adapts the adapted model again: the laboratory's entry is replaced, and another
    laboratory validated for the parent is not taken as validated for the new model."""
    from training.adapt import _with_lab_domain, lab_reference
    from wbcproc.domain import cell_features

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (30, 128, 128, 3), dtype=np.uint8)
    feats = np.array([cell_features(im) for im in imgs])
    look = {"mean": [0.0] * 8, "cov_inv": np.eye(8).tolist(), "threshold": 3.0}
    unc = {"thresholds": {"10": 0.1}}
    parent = {**look, "labs": [{**look, "name": "lab-a", "validated": True, "uncertainty": unc},
                               {**look, "name": "lab-b", "validated": True, "uncertainty": unc}]}  # fmt: skip
    got = _with_lab_domain(parent, lab_reference(feats, [Path("somewhere/lab-b")]), unc)
    assert [(lab["name"], lab["validated"]) for lab in got["labs"]] == [("lab-a", False), ("lab-b", True)]
    assert "uncertainty" not in got["labs"][0] and "earlier model" in got["labs"][0]["not_validated_because"]
    assert parent["labs"][0]["validated"] is True  # the parent's sidecar content is not changed in place


def test_a_laboratory_is_validated_only_on_enough_well_scored_held_out_cells():
    from types import SimpleNamespace

    from training.adapt import LAB_GUARD_MIN_CELLS, _Judged, _lab_uncertainty

    def held_out(n, right):
        y = np.arange(n) % 5
        logits = np.eye(8)[np.where(np.arange(n) < right, y, (y + 1) % 5)] * 4.0
        metrics: dict = {}
        got = _lab_uncertainty(_Judged(1.0, 0.5, logits, None), SimpleNamespace(hold_y=y), metrics, lambda *_: None)
        return got, metrics["lab_guard"]

    got, why = held_out(25, 23)
    assert why == {"validated": True, "held_out_cells": 25, "held_out_accuracy": 0.92}
    assert set(got["thresholds"]) == {"10", "20", "30", "50", "100", "200"} and got["calibration"]["with_replacement"]
    got, why = held_out(25, 20)
    assert got is None and why["validated"] is False and "held-out accuracy 0.800 < 0.85" in why["why_not"]
    got, why = held_out(LAB_GUARD_MIN_CELLS - 1, LAB_GUARD_MIN_CELLS - 1)
    assert got is None and f"at least {LAB_GUARD_MIN_CELLS} needed" in why["why_not"]


@pytest.mark.slow  # fine-tunes the shipped model's last stage
def test_classes_the_lab_did_not_review_keep_the_parents_behaviour(tmp_path):
    lab = tmp_path / "lab"
    for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"):  # a five-class lab, as LISC
        shutil.copytree(CELLS / c, lab / c)
    res = adapt([lab], tmp_path / "out", min_per_class=2, holdout=0.0, log=lambda *_: None)
    kept = res["metrics"]["unreviewed_recall"]
    assert set(kept) == {"ig", "erythroblast", "platelet"}
    for c, v in kept.items():
        assert v["adapted"] >= v["parent"] - 0.05, (c, v)  # on the original laboratory's check cells


def test_the_stage_rebuilt_from_the_int8_file_computes_the_parents_function(tmp_path):
    """layer4 rebuilt in PyTorch from the shipped int8 weights (BatchNorm folded, ReLUs implied by the u8
    activations) gives the parent's logits from the parent's own stage input; written back unchanged (weights
    re-quantised the parent's way, activation ranges re-measured) the int8 file still gives the same classes."""
    import onnx
    import torch

    from training.adapt_stage import WEIGHT_QMAX, read_stage, stage_inputs, stage_module, write_stage

    parent = resolve_model_path(None)
    stage = read_stage(onnx.load(str(parent)))
    assert [sorted(b) for b in stage.blocks] == [
        ["conv1", "conv2", "conv3", "downsample"],
        *[["conv1", "conv2", "conv3"]] * 2,
    ]
    x = _x(read_sidecar(parent).preprocess)
    s_in = stage_inputs(parent, stage, x)
    assert s_in.shape == (24, 1024, x.shape[2] // 16, x.shape[3] // 16)
    head = load_graph(parent).head
    with torch.no_grad():
        rebuilt = stage_module(stage)(torch.from_numpy(s_in).float()).numpy() @ head.weight.T + head.bias
    ref = Features(parent)(x)[0]
    assert np.abs(rebuilt - ref).max() < 0.3 and (rebuilt.argmax(1) == ref.argmax(1)).all()
    out = write_stage(stage, stage_module(stage), s_in, tmp_path / "model.onnx")
    shutil.copy(parent.with_suffix(".json"), out.with_suffix(".json"))
    again = Features(out)(x)[0]
    assert (again.argmax(1) == ref.argmax(1)).all() and np.abs(again - ref).max() < 0.5
    q = {t.name: t for t in onnx.load(str(out)).graph.initializer}[stage.blocks[0]["conv1"].weight_q]
    assert np.abs(onnx.numpy_helper.to_array(q)).max() <= WEIGHT_QMAX  # 7-bit: the same sums on every CPU


def test_an_adapted_stage_folds_into_a_torchvision_resnet50(tmp_path):
    """The float weights written for a stage-adapted model (training.weights.adapted_state) fit torchvision's
    ResNet50 and compute what the adapted int8 file's stage computes: its convolutions dequantised with their
    BatchNorm folded in, each BatchNorm the identity plus the bias."""
    import onnx
    import torch
    import torchvision

    from training.adapt_stage import read_stage, stage_inputs, stage_module
    from training.weights import adapted_state

    adapted = resolve_model_path(None)  # stands for the adapted file; its parent differs in one stage weight
    m = onnx.load(str(adapted))
    stage = read_stage(m)
    q = {t.name: t for t in m.graph.initializer}[stage.blocks[2]["conv3"].weight_q]
    arr = onnx.numpy_helper.to_array(q).copy()
    arr.flat[0] = -arr.flat[0] if arr.flat[0] else 1
    q.CopyFrom(onnx.numpy_helper.from_array(arr, q.name))
    onnx.save(m, str(tmp_path / "parent.onnx"))
    net = torchvision.models.resnet50(weights=None)
    net.fc = torch.nn.Linear(2048, 8)
    g = load_graph(adapted)
    state = adapted_state(net.state_dict(), tmp_path / "parent.onnx", g.model, (g.head.weight, g.head.bias))
    net.load_state_dict(state)
    net.eval()
    s_in = torch.from_numpy(stage_inputs(adapted, stage, _x(read_sidecar(adapted).preprocess, 6))).float()
    with torch.no_grad():
        mine = net.fc(torch.flatten(net.avgpool(net.layer4(s_in)), 1)).numpy()
        ref = stage_module(stage)(s_in).numpy() @ g.head.weight.T + g.head.bias
    assert np.abs(mine - ref).max() < 1e-3
    assert np.abs(state["layer4.0.bn1.running_var"].numpy() - (1 - 1e-5)).max() == 0


@pytest.mark.slow  # fine-tunes the shipped model's last stage
def test_a_refused_adaptation_writes_nothing(tmp_path, monkeypatch):
    """The guard rail is judged on the written int8 draft; refused, neither model nor sidecar reaches OUT."""
    import training.adapt as ta

    monkeypatch.setattr(ta, "MAX_ORIGINAL_DROP", -1.0)  # any result is refused
    out = tmp_path / "out"
    with pytest.raises(AdaptError, match="original laboratory's check cells"):
        adapt([CELLS], out, min_per_class=2, holdout=0.0, log=lambda *_: None)
    assert not (out / "model.onnx").exists() and not (out / "model.json").exists()


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_head_only_is_the_seconds_fast_refit(tmp_path):
    said: list[str] = []
    res = adapt([CELLS], tmp_path / "out", min_per_class=2, holdout=0.0, stage=False, log=said.append)
    a = read_sidecar(tmp_path / "out" / "model.onnx").sidecar.adaptation
    assert a["stage_fine_tuned"] is False and "backbone unchanged" in a["method"]
    assert not any("not fine-tuned" in s for s in said)  # asked for: nothing to explain
    assert (
        res["metrics"]["original_check"]["adapted"]["accuracy"]
        >= res["metrics"]["original_check"]["parent"]["accuracy"] - 0.01
    )


@pytest.mark.slow  # fine-tunes the shipped model's last stage
def test_a_refused_stage_draft_is_followed_by_a_gentler_one(tmp_path, monkeypatch):
    """A first draft that wrecks the stage (learning rate 1.0) is refused on the written int8 file; the next,
    gentler draft is judged afresh and kept - the sidecar says which."""
    import training.adapt as ta

    monkeypatch.setattr(ta, "STAGE_LEARNING_RATES", (1.0, 1e-5))
    said: list[str] = []
    res = adapt([CELLS], tmp_path / "out", min_per_class=2, holdout=0.0, log=said.append)
    assert any("learning rate 1 refused" in s for s in said)
    m = res["metrics"]
    assert m["stage_learning_rate"] == 1e-5 and m["stage_epochs"] == m["stage_epochs_planned"]  # not cut short
    assert m["stage_augmented_copies"] == 3  # the fixture's 24 cells: 3 copies of their 8 views (lab_views)
    a = read_sidecar(tmp_path / "out" / "model.onnx").sidecar.adaptation
    assert a["stage_fine_tuned"] is True and a["stage_not_fine_tuned_because"] is None


def test_the_stage_fine_tune_plans_a_step_budget_not_a_fixed_epoch_count():
    """Few cells get more epochs, many cells fewer, so the time is bounded for any number of reviewed cells."""
    from training.adapt_stage import MAX_EPOCHS, MIN_EPOCHS, TARGET_STEPS, planned_epochs

    assert planned_epochs(25 * 8) == planned_epochs(120 * 8) == MAX_EPOCHS  # 4 / 15 batches an epoch: capped
    assert planned_epochs(200 * 8) == 10  # 25 batches an epoch
    assert planned_epochs(3200) == MIN_EPOCHS  # the most views held: never fewer than MIN_EPOCHS
    for n in (1, 64, 65, 500, 960, 1600, 3200):
        steps = -(-n // 64) * planned_epochs(n)
        assert steps >= min(TARGET_STEPS, -(-n // 64) * MAX_EPOCHS)
        assert steps <= max(TARGET_STEPS + -(-n // 64), -(-n // 64) * MIN_EPOCHS)


def test_few_reviewed_cells_are_joined_by_augmented_copies_many_are_not():
    """25 cells get 3 changed copies of their 8 views, 50 get 1, 100 or more none (the time for 200 cells is
    unchanged); the copies are the cells changed (stain, scale, rotation), seeded, with the cells' labels."""
    import cv2

    from training.adapt import AUGMENTED_VIEWS, augmented_copies, dihedral, lab_views, stage_views
    from wbcproc.imageio import read_image

    assert [augmented_copies(n, 8) for n in (0, 1, 25, 50, 99, 100, 200)] == [0, 3, 3, 1, 1, 0, 0]
    assert stage_views(25) == 8 and stage_views(3200) == 1
    files = sorted(CELLS.glob("*/*.jpg"))[:5]
    imgs = np.stack([cv2.resize(read_image(f).bgr, (48, 48), interpolation=cv2.INTER_AREA) for f in files])
    labels = np.arange(5)
    x, y, copies = lab_views(imgs, labels, 8)
    assert copies == 3 and x.shape == (5 * 8 * 4, 48, 48, 3) and x.dtype == np.uint8
    assert (y == np.tile(labels, 32)).all()
    assert np.array_equal(x[:40], np.concatenate(dihedral(imgs)))  # the cells themselves first
    changed = np.abs(x[40:].astype(int) - np.tile(x[:40], (3, 1, 1, 1)).astype(int)).mean(axis=(1, 2, 3))
    assert (changed > 2).mean() > 0.9  # the copies differ from the views they were made from
    assert np.array_equal(lab_views(imgs, labels, 8)[0], x)  # seeded: the same run gives the same copies
    assert not np.array_equal(lab_views(imgs, labels, 8, seed=1)[0][40:], x[40:])
    assert lab_views(np.repeat(imgs, 20, axis=0), np.repeat(labels, 20), 8)[2] == 0  # 100 cells: none
    assert AUGMENTED_VIEWS // 8 == 100


def test_augmented_copies_vary_the_steps_of_the_fine_tune_not_their_number():
    """The stage fine-tune over cells and their copies makes about as many steps as over the cells alone: the
    copies cost no time and do not make unreviewed classes drift further (adapt_stage.MAX_EPOCHS)."""
    from training.adapt import augmented_copies, stage_epochs
    from training.adapt_stage import planned_epochs

    for n in (1, 3, 15, 24, 25, 40, 50, 99, 100, 200, 400):
        own = n * 8
        all_views = own * (1 + augmented_copies(n, 8))
        alone = -(-own // 64) * planned_epochs(own)
        steps = -(-all_views // 64) * stage_epochs(own, all_views)
        assert abs(steps - alone) <= -(-all_views // 64) / 2 + 1, (n, steps, alone)
        assert stage_epochs(own, all_views) >= 1
    assert stage_epochs(200 * 8, 200 * 8) == planned_epochs(200 * 8)  # no copies: the plan as it was
    assert stage_epochs(25 * 8, 25 * 8 * 4) == 4  # 48 steps over 13 batches an epoch


@pytest.mark.slow  # fine-tunes the shipped model's last stage
def test_a_laboratory_no_single_model_serves_gets_a_routed_model(tmp_path, monkeypatch):
    """A laboratory whose slides look unlike the original's gets a model even where no single model would keep
    the original laboratory within its bound: its slides are read by the adapted model, the original
    laboratory's by the parent shipped beside it, and the report says which read the slide and why - through
    the pipeline, the workbook and the registry."""
    import cv2
    from openpyxl import load_workbook

    import training.adapt as ta
    from training.simulate import simulate_tight
    from wbcproc.config import load_settings
    from wbcproc.imageio import read_image
    from wbcproc.pipeline import run_sample

    lab = tmp_path / "lab-b"  # another look: the fixture cells cut tight with a yellow cast (rapid-stain crops)
    for f in sorted(CELLS.glob("*/*.jpg")):
        (lab / f.parent.name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(lab / f.parent.name / f"{f.stem}.png"), simulate_tight(read_image(f).bgr))
    monkeypatch.setattr(ta, "MAX_ORIGINAL_DROP", -1.0)  # one model for every slide: every draft is refused
    monkeypatch.setattr(ta, "STAGE_LEARNING_RATES", ta.STAGE_LEARNING_RATES[:1])
    said: list[str] = []
    res = adapt([lab], tmp_path / "out", min_per_class=1, holdout=0.5, log=said.append)
    assert res["routed"], said
    shipped = read_sidecar(resolve_model_path(None))
    info = read_sidecar(tmp_path / "out" / "model.onnx")
    routing = info.sidecar.adaptation["routing"]
    assert routing["parent_sha256"] == shipped.sha256 == read_sidecar(tmp_path / "out" / "parent.onnx").sha256
    sep = res["metrics"]["routing"]["separation"]
    assert min(sep["lab_samples_to_lab"], sep["original_samples_to_parent"]) >= ta.ROUTE_MIN_SEPARATION
    assert res["metrics"]["original_check"]["max_drop"] == ta.ROUTED_MAX_ORIGINAL_DROP
    assert "routed with its parent" in info.sidecar.adaptation["method"]
    shown = subprocess.run([WBC, "info", "--model", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert f"are read by this model, the others by its parent {shipped.version}" in shown.stdout

    version = Registry(tmp_path / "registry").register(tmp_path / "out")  # the parent travels with it
    routed = load_classifier(tmp_path / "registry" / "versions" / version / "model.onnx", threads=1)
    settings = load_settings(None)
    own, paths = run_sample(lab / "neutrophil", tmp_path / "reports", routed, settings)
    assert own["routing"]["model"] == "laboratory" and own["model"]["sha256"] == info.sha256
    assert f"so this slide was read by {info.name} {info.version}" in own["method"]
    summary = {row[0]: row[1] for row in load_workbook(paths["xlsx"])["Summary"].iter_rows(values_only=True)}
    assert summary["Model routing"].startswith(f"{info.name} {info.version} routed: the slide matches laboratory")
    sample = tmp_path / "S-PBC"
    shutil.copytree(CELLS / "neutrophil", sample)
    other, _ = run_sample(sample, tmp_path / "reports", routed, settings)
    assert other["routing"]["model"] == "parent" and other["model"]["sha256"] == shipped.sha256
    direct, _ = run_sample(sample, tmp_path / "direct", load_classifier(None, threads=1), settings)
    assert [(c["file"], c["class"], c["confidence"]) for c in other["cells"]] == [
        (c["file"], c["class"], c["confidence"]) for c in direct["cells"]
    ]


def _replay_cells(tmp_path, monkeypatch, n: int):
    """The shipped model, its sidecar, its last stage and ``n`` of its replay cells, with a cache folder of the
    test's own."""
    import onnx

    from training.adapt import load_replay, replay_images
    from training.adapt_stage import read_stage

    monkeypatch.setenv("WBC_CACHE", str(tmp_path / "cache"))
    parent = resolve_model_path(None)
    info = read_sidecar(parent)
    return (
        parent,
        info,
        read_stage(onnx.load(str(parent))),
        replay_images(load_replay(parent, info.sha256), "train")[:n],
    )


def test_the_replay_stage_inputs_are_computed_once_per_model_file(tmp_path, monkeypatch):
    """The longest fixed part of adapting is kept in the cache folder by the model's sha256; a torn file is
    computed again, and what comes back equals what the int8 network computes."""
    import training.adapt_stage as tas
    from training.adapt import dihedral, replay_stage_inputs
    from wbcproc.preprocess import to_input

    parent, info, stage, rep = _replay_cells(tmp_path, monkeypatch, 3)
    first = replay_stage_inputs(parent, stage, rep, info.preprocess, 1)
    direct = tas.stage_inputs(parent, stage, to_input(np.concatenate(dihedral(rep)), info.preprocess), 1)
    assert first.shape[0] == 24 and np.array_equal(first, direct)
    (kept,) = (tmp_path / "cache" / "adapt").glob("*.npy")
    computed = []
    monkeypatch.setattr(tas, "stage_inputs", lambda *a, **k: computed.append(1) or direct)
    assert np.array_equal(replay_stage_inputs(parent, stage, rep, info.preprocess, 1), first) and not computed
    kept.write_bytes(kept.read_bytes()[:100])  # torn
    assert np.array_equal(replay_stage_inputs(parent, stage, rep, info.preprocess, 1), first) and computed
    assert np.array_equal(np.load(kept), first)  # and written whole again


def test_frozen_first_blocks_stay_the_parents_and_the_rest_learn():
    """``fine_tune(frozen=1)``: the first block's weights are the parent's after training, the later blocks
    and the head moved, and the forward from a later block's input equals the full forward."""
    import onnx
    import torch

    from training.adapt_stage import fine_tune, read_stage, stage_module

    stage = read_stage(onnx.load(str(resolve_model_path(None))))
    head = load_graph(resolve_model_path(None)).head
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(0, 1, (16, 1024, 8, 8)), 0).astype(np.float16)
    y = rng.integers(0, 8, 16).astype(np.int64)
    parent = stage_module(stage)
    net, w, _b, _epochs = fine_tune(
        stage, head.weight, head.bias, x, y, None, None, epochs=2, lr=1e-3, batch=8, frozen=1
    )
    same = [torch.equal(a, b) for a, b in zip(parent.blocks[0].parameters(), net.blocks[0].parameters(), strict=True)]
    moved = [torch.equal(a, b) for a, b in zip(parent.blocks[2].parameters(), net.blocks[2].parameters(), strict=True)]
    assert all(same) and not any(moved) and not np.allclose(w, head.weight)
    with torch.no_grad():
        t = torch.from_numpy(x[:4]).float()
        assert torch.allclose(net(t), net(net.blocks[0](t), start=1), atol=1e-5)


def test_a_deadline_cuts_the_fine_tune_to_the_epochs_that_fit():
    """``fine_tune(deadline=...)``: a deadline already passed leaves the one epoch that always runs, one far
    away leaves every planned epoch; the run says how many it made."""
    import time

    import onnx

    from training.adapt_stage import fine_tune, read_stage

    stage = read_stage(onnx.load(str(resolve_model_path(None))))
    head = load_graph(resolve_model_path(None)).head
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(0, 1, (8, 1024, 8, 8)), 0).astype(np.float16)
    y = rng.integers(0, 8, 8).astype(np.int64)
    said: list[str] = []
    kw = dict(epochs=3, lr=1e-3, batch=8, frozen=2, log=said.append)
    assert fine_tune(stage, head.weight, head.bias, x, y, None, None, deadline=time.monotonic(), **kw).epochs == 1
    assert "time budget: 1 of the 3 planned epochs fit" in said
    far = time.monotonic() + 3600
    assert fine_tune(stage, head.weight, head.bias, x, y, None, None, deadline=far, **kw).epochs == 3


def test_the_replay_teacher_is_the_parents_own_outputs_and_is_kept(tmp_path, monkeypatch):
    """The distillation targets are the parent's logits for the replay views (the rebuilt stage calls what the
    int8 file calls) and are computed once per model file."""
    import training.adapt_stage as tas
    from training.adapt import dihedral, replay_stage_inputs, replay_teacher
    from wbcproc.preprocess import to_input

    parent, info, stage, rep = _replay_cells(tmp_path, monkeypatch, 4)
    rep_s = replay_stage_inputs(parent, stage, rep, info.preprocess, 1)
    head = load_graph(parent).head
    teacher = replay_teacher(parent, stage, head, rep_s)
    int8 = Features(parent)(to_input(np.concatenate(dihedral(rep)), info.preprocess))[0]
    assert teacher.shape == (32, 8) and (teacher.argmax(1) == int8.argmax(1)).all()
    monkeypatch.setattr(tas, "parent_outputs", lambda *a, **k: pytest.fail("computed again"))
    assert np.array_equal(replay_teacher(parent, stage, head, rep_s), teacher)

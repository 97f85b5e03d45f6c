"""training.selection and the device scripts' recipe choice (``python -m training.scripts.select_recipe``),
which used to live in shell heredocs: standard library only, so these run without the [train] extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.selection import select_generalise, select_twins


def test_recipe_selection_rule_of_the_device_scripts():
    """training.selection: validation macro-F1 within 0.015 of the best decides who may be chosen; among
    those the mean accuracy over the other-laboratory proxies wins; a run without a score ranks last."""
    from training.selection import choose, eligible, proxy_score

    ev = {
        "bccd_all": {"accuracy": 0.3},
        "camera_val": {"accuracy": 0.9},
        "tight_val": {"accuracy": 0.6},
        "x": {"accuracy": 0},
    }
    assert proxy_score(ev) == pytest.approx(0.6) and proxy_score({}) == 0.0
    val = {"basic": 0.970, "robust": 0.941, "stain": 0.960}
    assert eligible(val) == ["basic", "stain"]
    assert choose(val, {"basic": 0.52, "robust": 0.56, "stain": 0.55}) == "stain"  # robust is out on validation
    assert choose(val, {"basic": 0.52}) == "basic"
    assert choose({"a": 0.9, "b": 0.9}, {"a": 0.5, "b": 0.5}) == "a"  # ties: the first given


def _run(work: Path, name: str, val_f1: float, proxies: dict[str, float], test_acc: float = 0.97) -> None:
    d = work / name
    d.mkdir(parents=True)
    info = {
        "best_val_macro_f1": val_f1,
        "best_epoch": 3,
        "history": [{"epoch": 1, "images_per_s": 900.0}, {"epoch": 2, "images_per_s": 1000.0}],
        "test_torch": {"accuracy": test_acc},
        "eval": {k: {"n": 50, "accuracy": v} for k, v in proxies.items()},
        "init": {"used": "scratch"},
    }
    (d / "train_info.json").write_text(json.dumps(info))
    (d / "weights-000.pt").write_bytes(name.encode())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.scripts.select_recipe", *args], capture_output=True, text=True, timeout=60
    )


def test_generalise_phase_one_picks_by_validation_then_proxies(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    _run(work, "p1-basic-bn", 0.970, {"bccd_all": 0.10, "camera_val": 0.9, "tight_val": 0.5})
    _run(work, "p1-robust-bn", 0.940, {"bccd_all": 0.60, "camera_val": 0.9, "tight_val": 0.9})  # out on validation
    _run(work, "p1-stain-bn", 0.960, {"bccd_all": 0.30, "camera_val": 0.9, "tight_val": 0.6})
    variants = ["basic:bn", "robust:bn", "stain:bn", "stain:ibn"]  # stain:ibn never finished
    chosen, sel = select_generalise(work, variants)
    assert chosen == "stain:bn" and set(sel["phase1"]) == {"basic:bn", "robust:bn", "stain:bn"}
    assert sel["phase1"]["robust:bn"]["eligible"] is False and sel["phase1"]["stain:bn"][
        "proxy_score"
    ] == pytest.approx(0.6)
    r = _cli("generalise", str(work), str(out), *variants)
    assert r.returncode == 0 and r.stdout == "stain:bn"  # the shell script captures exactly this
    assert json.loads((out / "selection.json").read_text())["chosen"] == "stain:bn"
    r = _cli("generalise", str(tmp_path / "empty"), str(tmp_path / "out2"), *variants)
    assert r.returncode == 0 and r.stdout == "none" and not (tmp_path / "out2" / "selection.json").exists()


def test_twins_keep_the_full_run_whose_unseen_twin_generalises_best(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    _run(work, "full-robust-bn", 0.975, {})
    _run(work, "unseen-robust-bn", 0.970, {"bccd_all": 0.20, "camera_val": 0.8, "tight_val": 0.5})
    _run(work, "full-stain-bn", 0.968, {})
    _run(work, "unseen-stain-bn", 0.950, {"bccd_all": 0.50, "camera_val": 0.8, "tight_val": 0.5})
    chosen, sel = select_twins(work, ["robust:bn", "stain:bn"])
    assert chosen == "stain:bn" and sel["variants"]["stain:bn"]["unseen_proxy_score"] == pytest.approx(0.6)
    assert sel["variants"]["stain:bn"]["full"]["images_per_s_last"] == 1000.0
    r = _cli("twins", str(work), str(out), "robust:bn", "stain:bn")
    assert r.returncode == 0 and "chose stain:bn" in r.stdout
    assert (out / "weights-000.pt").read_bytes() == b"full-stain-bn"  # the kept run's files, not its twin's
    assert json.loads((out / "selection.json").read_text())["chosen"] == "stain:bn"

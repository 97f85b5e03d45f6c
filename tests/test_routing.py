"""A routed laboratory model: each slide is read by the model whose laboratory it looks like."""

from __future__ import annotations

import numpy as np

from wbcproc.routing import LAB, PARENT, choose

ORIGINAL = {"mean": [0.0] * 8, "cov_inv": np.eye(8).tolist(), "threshold": 3.0}
LOOK = {"name": "lab-a", "mean": [10.0] * 8, "cov_inv": np.eye(8).tolist(), "threshold": 3.0}
DOMAIN = {**ORIGINAL, "labs": [LOOK]}
ROUTING = {"lab": "lab-a"}


def _sample(centre: float, n: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(centre, 0.1, (n, 8))


def test_a_slide_that_looks_like_the_laboratory_goes_to_its_model():
    got = choose(_sample(10.0), DOMAIN, ROUTING)
    assert got["model"] == LAB and got["lab_ratio"] < 1 < got["original_ratio"]
    assert "matches laboratory lab-a's look" in got["why"]


def test_a_slide_that_looks_like_the_original_laboratory_goes_to_the_parent():
    got = choose(_sample(0.0), DOMAIN, ROUTING)
    assert got["model"] == PARENT and got["original_ratio"] < 1 < got["lab_ratio"]
    assert "matches the original laboratory's look" in got["why"]


def test_a_slide_like_neither_goes_to_the_model_whose_look_is_nearer_and_says_so():
    got = choose(_sample(-20.0), DOMAIN, ROUTING)  # far from both, nearer the original laboratory
    assert got["model"] == PARENT and 1 < got["original_ratio"] < got["lab_ratio"]
    assert "matches neither laboratory lab-a" in got["why"] and "original laboratory's model" in got["why"]
    # just beyond the laboratory's look, far beyond the original's: the laboratory's next slide, not a third one
    got = choose(_sample(10.0 + 2.5 / np.sqrt(8)), {**ORIGINAL, "labs": [{**LOOK, "threshold": 2.0}]}, ROUTING)
    assert got["model"] == LAB and 1 < got["lab_ratio"] < got["original_ratio"]
    assert "matches neither" in got["why"] and "laboratory lab-a's model, whose look is nearer" in got["why"]


def test_a_slide_within_both_looks_is_the_original_laboratorys_and_goes_to_the_parent():
    wide = {**LOOK, "mean": [0.5] * 8, "threshold": 6.0}  # overlaps the original's look
    domain = {**ORIGINAL, "labs": [wide]}
    got = choose(_sample(1.0), domain, ROUTING)  # 2.8 against the original's threshold 3, 1.4 against the lab's 6
    assert got["model"] == PARENT and got["original_ratio"] < 1 and got["lab_ratio"] < 1
    assert choose(_sample(2.0), domain, ROUTING)["model"] == LAB  # beyond the original's look, within the lab's


def test_without_the_laboratory_reference_or_cells_the_parent_reads():
    assert choose(_sample(10.0), ORIGINAL, ROUTING)["model"] == PARENT
    assert choose(np.zeros((0, 8)), DOMAIN, ROUTING)["why"] == "no cells to compare"

"""Clopper-Pearson against published values; aggregation conventions; flag boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wbcproc.aggregate import differential
from wbcproc.classes import CLASSES, WBC_CLASSES
from wbcproc.config import load_settings
from wbcproc.flags import interval_flags, sample_flags
from wbcproc.stats import clopper_pearson


@pytest.mark.parametrize(
    ("x", "n", "lo", "hi"),
    [
        # Reference values: exact binomial limits as tabulated (e.g. Rümke 1979; R binom.test)
        (0, 10, 0.0, 0.3084971),
        (5, 100, 0.0164318, 0.1128349),
        (50, 100, 0.3983211, 0.6016789),
        (0, 100, 0.0, 0.0362167),
        (100, 100, 0.9637833, 1.0),
        (10, 200, 0.0242342, 0.0900275),
    ],
)
def test_clopper_pearson_known_values(x, n, lo, hi):
    got = clopper_pearson(x, n)
    assert got == pytest.approx((lo, hi), abs=1e-6)


def test_clopper_pearson_edges():
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        clopper_pearson(5, 3)


@given(st.integers(0, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_clopper_pearson_contains_estimate(xn):
    x, n = xn
    lo, hi = clopper_pearson(x, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo <= x / n <= hi


def _labels(**counts):
    return [c for c, k in counts.items() for _ in range(k)]


def test_denominator_excludes_nrbc_and_platelets():
    d = differential(
        _labels(
            neutrophil=60,
            lymphocyte=30,
            monocyte=5,
            eosinophil=3,
            basophil=1,
            ig=1,
            erythroblast=4,
            platelet=9,
        ),
        wbc_count=8.0,
    )
    assert d.wbc_total == 100
    assert d.percent["neutrophil"] == 60.0
    assert d.nrbc_per_100_wbc == 4.0
    assert d.platelets_seen == 9
    assert d.absolute["neutrophil"] == pytest.approx(4.8)
    assert set(d.counts) == set(CLASSES)


@given(st.lists(st.sampled_from(CLASSES), max_size=300))
def test_percentages_sum_to_100(labels):
    d = differential(labels)
    if d.wbc_total:
        assert sum(d.percent.values()) == pytest.approx(100.0)
    else:
        assert all(v is None for v in d.percent.values())
    assert sum(d.counts.values()) == len(labels)


def _flags_for(**counts):
    settings = load_settings(None)
    return interval_flags(differential(_labels(**counts)), settings.reference)


def test_values_on_the_limit_are_not_flagged():
    # neutrophil exactly 75 %, lymphocyte exactly 20 %, monocyte exactly 2 %, eosinophil 3 %, basophil 0, ig 0
    flags = _flags_for(neutrophil=150, lymphocyte=40, monocyte=4, eosinophil=6)
    assert flags == []


def test_values_just_outside_are_flagged():
    flags = _flags_for(neutrophil=151, lymphocyte=39, monocyte=4, eosinophil=6)
    by = {(f["cell"], f["direction"]): f for f in flags}
    assert set(by) == {("neutrophil", "high"), ("lymphocyte", "low")}
    f = by[("neutrophil", "high")]
    assert f["code"] == "NEUTROPHIL_PCT_HIGH" and f["interval"] == [40.0, 75.0]
    assert f["ci_outside"] is False  # 75.5 % of 200: the CI still reaches into the interval
    assert "neutrophilia" in f["message"]


def test_left_shift_and_nrbc_and_ci_outside():
    flags = _flags_for(neutrophil=60, lymphocyte=25, monocyte=5, eosinophil=2, ig=8, erythroblast=1)
    codes = {f["code"]: f for f in flags}
    assert codes["LEFT_SHIFT"]["cell"] == "ig" and codes["LEFT_SHIFT"]["direction"] == "high"
    assert codes["LEFT_SHIFT"]["ci_outside"] is True
    assert codes["NRBC_PRESENT"]["cell"] == "erythroblast" and codes["NRBC_PRESENT"]["direction"] == "high"


def test_sample_level_flags():
    settings = load_settings(None)
    d = differential(_labels(neutrophil=50, lymphocyte=30), reviews=[True] * 10 + [False] * 70)
    codes = {f["code"] for f in sample_flags(d, settings, n_rejected=2, metadata_errors=["bad"])}
    assert codes == {"LOW_WBC_COUNT", "REVIEW_SHARE_HIGH", "REJECTED_FILES", "METADATA_INVALID"}
    d = differential(_labels(neutrophil=60, lymphocyte=40), reviews=[True] * 10 + [False] * 90)
    assert sample_flags(d, settings, n_rejected=0, metadata_errors=[]) == []  # 10 % is not over 10 %
    assert sample_flags(differential([]), settings, n_rejected=0, metadata_errors=[])[0]["code"] == "NO_WBC"
    for f in sample_flags(d, settings, n_rejected=1, metadata_errors=[]):
        assert f["cell"] is None


def test_user_reference_file_overrides(tmp_path):
    ref = tmp_path / "ref.toml"
    ref.write_text(
        'name = "paeds"\nversion = "1"\nsource = "lab SOP 12"\n[percent]\n'
        + "".join(f"{c} = [0.0, 100.0]\n" for c in WBC_CLASSES)
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text('[reference]\nfile = "ref.toml"\n[flags]\nmin_wbc = 50\n')
    s = load_settings(cfg)
    assert s.reference.name == "paeds" and s.min_wbc == 50 and s.reference.absolute == {}
    assert interval_flags(differential(_labels(ig=10, neutrophil=90)), s.reference) == []
    assert s.config_hash() != load_settings(None).config_hash()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[nope]\nx=1\n", "unknown section"),
        ("[flags]\nfoo=1\n", "unknown keys"),
        ("[flags\n", "not valid TOML"),
        ('[reference]\nfile = "missing.toml"\n', "does not exist"),
    ],
)
def test_bad_config_is_reported(tmp_path, text, match):
    from wbcproc.config import ConfigError

    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg)


def test_age_group_outside_the_intervals_is_flagged():
    settings = load_settings(None)
    d = differential(_labels(neutrophil=60, lymphocyte=40))
    assert sample_flags(d, settings, n_rejected=0, metadata_errors=[], age_group="Adult") == []
    (flag,) = sample_flags(d, settings, n_rejected=0, metadata_errors=[], age_group="neonate")
    assert flag["code"] == "REFERENCE_AGE_MISMATCH" and "neonate" in flag["message"]

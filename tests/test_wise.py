"""Warm start (``--init <shards> --init-head``) and weight-space ensembling (training.wise, wise_ft) with
real ResNet50s, a real 32 px cache of the fixture cells and the device script that trains them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [train] extra is needed; .ci/run installs it")

from training.dataset import load_cache  # noqa: E402
from training.loop import predict_logits  # noqa: E402
from training.metrics import classification_metrics  # noqa: E402
from training.model import build_model  # noqa: E402
from training.recipe import TrainConfig  # noqa: E402
from training.run import RunOptions, prepare_data  # noqa: E402
from training.scripts import wise_ft  # noqa: E402
from training.shards import load_shards, save_shards  # noqa: E402
from training.wise import Scored, choose_alpha, interpolate  # noqa: E402
from wbcproc.classes import CLASSES  # noqa: E402

pytestmark = [pytest.mark.train]


def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    net, _ = build_model("scratch")
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_interpolate_is_the_straight_line_between_two_models():
    p, c = _state(0), _state(1)
    c["bn1.num_batches_tracked"] = torch.tensor(7)
    for a in (0.0, 1.0):
        mixed = interpolate(p, c, a)
        ref = p if a == 0 else c
        assert all(torch.equal(mixed[k].float(), ref[k].float()) for k in p if p[k].is_floating_point())
    half = interpolate(p, c, 0.5)
    assert torch.allclose(half["fc.weight"], (p["fc.weight"] + c["fc.weight"]) / 2)
    assert torch.allclose(half["bn1.running_var"], (p["bn1.running_var"] + c["bn1.running_var"]) / 2)
    assert int(half["bn1.num_batches_tracked"]) == 7  # integer buffers: the child's
    with pytest.raises(ValueError, match=r"alpha 1\.5 is outside"):
        interpolate(p, c, 1.5)
    del c["fc.bias"]
    with pytest.raises(ValueError, match=r"only in the parent \['fc.bias'\]"):
        interpolate(p, c, 0.5)


def test_choose_alpha_takes_the_largest_weight_validation_allows():
    scored = [Scored(0.0, 0.980), Scored(0.25, 0.981), Scored(0.5, 0.979), Scored(1.0, 0.960)]
    assert choose_alpha(0.980, scored) == 0.25
    assert choose_alpha(0.980, scored, tolerance=0.001) == 0.5
    assert choose_alpha(0.990, scored) is None
    with pytest.raises(ValueError, match=r"tolerance -0\.1"):
        choose_alpha(0.98, scored, tolerance=-0.1)


def test_warm_start_from_shards_keeps_the_head_and_says_so(tmp_path):
    parent = _state(3)
    save_shards(parent, tmp_path / "p")
    warm, rec = build_model(str(tmp_path / "p"), keep_head=True)
    fresh, rec2 = build_model(str(tmp_path / "p"))
    shards = load_shards(tmp_path / "p")  # fp16 on disk
    assert torch.equal(warm.fc.weight, shards["fc.weight"]) and rec["head"] == "kept (warm start)"
    assert not torch.allclose(fresh.fc.weight, shards["fc.weight"]) and "head" not in rec2
    assert torch.equal(fresh.layer4[2].conv3.weight, shards["layer4.2.conv3.weight"])
    with pytest.raises(ValueError, match=r"head has shape \(8, 2048\), expected \(5, 2048\)"):
        build_model(str(tmp_path / "p"), num_classes=5, keep_head=True)
    with pytest.raises(ValueError, match="keeping the head needs --init PATH"):
        build_model("scratch", keep_head=True)
    with pytest.raises(ValueError, match="--init 'imagenet' has none to keep"):  # every trainer, before any data
        TrainConfig(init="imagenet", init_head=True)
    assert TrainConfig(init=str(tmp_path / "p"), init_head=True).init_head
    with pytest.raises(FileNotFoundError, match="a shard folder"):
        build_model(str(tmp_path / "nothing-here"))


@pytest.mark.slow
def test_fine_tune_warm_start_then_wise_ft_end_to_end(tmp_path, labelled_set):
    """Device script: a parent from scratch, then a warm-started stain fine-tune of it; wise_ft scores the
    line between them and writes the chosen weights, or refuses and writes none."""
    opts = RunOptions(data=[str(labelled_set)], out=str(tmp_path / "pack"), image_size=32, version="t")
    _g, cache, _ = prepare_data(opts, log=lambda *_: None)

    def device(out, *extra):
        args = ["--cache", str(cache), "--out", str(out), "--epochs", "1", "--batch-size", "16", "--device", "cpu"]
        r = subprocess.run(
            [sys.executable, "-m", "training.scripts.gpu_train", *args, *extra],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads((out / "train_info.json").read_text())

    device(tmp_path / "parent")
    info = device(tmp_path / "child", "--init", str(tmp_path / "parent"), "--init-head", "--augment", "mixed")
    assert info["init"]["head"] == "kept (warm start)" and info["init"]["path"] == str(tmp_path / "parent")

    base = ["--parent", str(tmp_path / "parent"), "--child", str(tmp_path / "child"), "--cache", str(cache)]
    assert wise_ft.main([*base, "--alphas", "0.5,1", "--tolerance", "1", "--out", str(tmp_path / "w")]) == 0
    rec = json.loads((tmp_path / "w" / "wise.json").read_text())
    assert rec["chosen_alpha"] == 1.0 and set(rec["rows"]) == {"0.00", "0.50", "1.00"}
    chosen, child = load_shards(tmp_path / "w"), load_shards(tmp_path / "child")
    assert all(torch.equal(chosen[k], child[k]) for k in child)
    # the reported score is the written weights' own
    net, _ = build_model("scratch")
    net.load_state_dict(chosen)
    val = load_cache(cache).subset("val")
    pred = predict_logits(net.eval(), val, torch.device("cpu")).argmax(1)
    f1 = classification_metrics(val.labels, pred, CLASSES)["macro_f1"]
    assert f1 == pytest.approx(rec["rows"]["1.00"]["val_macro_f1"], abs=1e-4)

    # refusal, independent of how well the tiny models trained: a parent that calls every cell the
    # validation split's commonest class and a child that calls every cell its rarest have a lower
    # macro-F1 at weight 1 (2n / (N + n) grows with n), so nothing is written
    counts = np.bincount(val.labels, minlength=len(CLASSES))
    common, rare = int(np.argmax(counts)), int(np.argmin(counts))
    assert counts[common] > counts[rare]

    def constant(c: int) -> dict:
        st = _state(0)
        st["fc.weight"].zero_()
        st["fc.bias"].copy_(torch.nn.functional.one_hot(torch.tensor(c), len(CLASSES)).float() * 50)
        return st

    save_shards(constant(common), tmp_path / "p1")
    save_shards(constant(rare), tmp_path / "c1")
    args = ["--parent", str(tmp_path / "p1"), "--child", str(tmp_path / "c1"), "--cache", str(cache)]
    code = wise_ft.main([*args, "--alphas", "1", "--out", str(tmp_path / "no")])
    rec = json.loads((tmp_path / "no" / "wise.json").read_text())
    assert rec["rows"]["1.00"]["val_macro_f1"] < rec["rows"]["0.00"]["val_macro_f1"]
    assert code == 1 and rec["chosen_alpha"] is None and not (tmp_path / "no" / "weights-index.json").exists()

"""Training on CPU with real cells at 32 px: data, cache, train, export, parity, classify, registry, flow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_sidecar_meets_schema

torch = pytest.importorskip("torch", reason="the [train] extra is needed; .ci/run installs it")

from training.augment import augment  # noqa: E402
from training.cache import build_cache  # noqa: E402
from training.data import gather, read_split, split_of, write_split  # noqa: E402
from training.dataset import load_cache  # noqa: E402
from training.model import build_model, freeze_stages  # noqa: E402
from training.recipe import TrainConfig  # noqa: E402
from training.run import RunOptions, make_spec, run_training  # noqa: E402
from wbcproc.imageio import read_image  # noqa: E402
from wbcproc.preprocess import prepare_image  # noqa: E402
from wbcproc.registry import Registry, RegistryError, decide_promotion  # noqa: E402
from wbcproc.sidecar import read_sidecar  # noqa: E402

pytestmark = [pytest.mark.train]
WBC = str(Path(sys.executable).parent / "wbc")


def test_gather_dedupes_skips_and_splits_by_content(tmp_path, labelled_set):
    root = tmp_path / "data"
    shutil.copytree(labelled_set, root)
    first, second = sorted((root / "ig").iterdir())[:2]
    shutil.copy(first, root / "ig" / "copy.jpg")  # same class duplicate: dropped
    shutil.copy(second, root / "basophil" / "conflict.jpg")  # same bytes, other class: both excluded
    (root / "ig" / "empty.jpg").write_bytes(b"")
    (root / "ig" / "notes.txt").write_text("x")
    (root / "blast").mkdir()
    g = gather([root])
    assert len(g.items) == 144 - 1  # the conflicted original is excluded too
    assert len(g.duplicates) == 1
    assert {c[1] for c in g.conflicts} == {"basophil/ig"}
    reasons = {Path(f).name: r for f, r in g.skipped}
    assert reasons["empty.jpg"] == "empty file" and reasons["notes.txt"] == "not an image extension"
    assert "not a canonical class" in reasons["blast"]
    for it in g.items:
        assert it.split == split_of(it.sha256)
    # adding a second root never moves an existing file to another split
    extra = tmp_path / "extra" / "neutrophil"
    extra.mkdir(parents=True)
    shutil.copy(next((labelled_set / "monocyte").iterdir()), extra / "relabelled_elsewhere.jpg")
    g2 = gather([labelled_set, tmp_path / "extra"])
    before = {it.sha256: it.split for it in gather([labelled_set]).items}
    assert all(before[it.sha256] == it.split for it in g2.items if it.sha256 in before)


def test_the_split_file_reads_back_as_the_items_written(tmp_path, labelled_set):
    """The retrain flow scores challenger and champion on the test cells the run wrote to split.csv."""
    root = tmp_path / "framed"  # field crops: a FRAMED root, and each file's framing is read back from it
    shutil.copytree(labelled_set / "lymphocyte", root / "lymphocyte")
    (root / "FRAMED").write_text("")
    items = gather([root, labelled_set]).items  # the framed copies come first and are kept
    write_split(items, tmp_path / "split.csv")
    key = lambda it: it.sha256  # noqa: E731
    assert sorted(read_split(tmp_path / "split.csv"), key=key) == sorted(items, key=key)
    test = read_split(tmp_path / "split.csv", "test")
    assert test and {it.split for it in test} == {"test"} and any(it.framed for it in test)


def test_cache_is_made_by_the_inference_preprocessing(tmp_path, labelled_set):
    g = gather([labelled_set])
    spec = make_spec(48)
    path, failed = build_cache(g, spec, tmp_path / "c.npz")
    assert failed == []
    data = load_cache(path)
    assert data.images.shape == (144, 48, 48, 3) and data.spec == spec
    i = 5
    expected = prepare_image(read_image(data.files[i]).bgr, spec)
    err = np.abs(data.images[i].astype(int) - expected.astype(int)).mean()
    assert err < 5  # JPEG q90 round trip at 48 px
    swapped = np.abs(data.images[i].astype(int) - expected[..., ::-1].astype(int)).mean()
    assert swapped > 3 * err  # a different colour order would be caught
    assert set(data.splits) == {"train", "val", "test"}


def test_augment_and_freeze():
    cfg = TrainConfig()
    x = torch.rand(4, 3, 32, 32)
    y = augment(x, cfg, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)
    # the basic recipe moves pixels and shifts colour a little; it does not replace the image
    assert float((y.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs().max()) < 0.15
    model, record = build_model("scratch")
    assert record["used"] == "scratch" and model.fc.out_features == 8
    freeze_stages(model, 2)
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    with pytest.raises(ValueError, match=r"outside 0\.\.5"):
        freeze_stages(model, 6)


def test_imagenet_init_falls_back_and_says_so(monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "resnet50", _raise_when_weighted(torchvision.models.resnet50, offline))
    _model, record = build_model("imagenet")
    assert record["used"] == "scratch" and "no network" in record["fallback_reason"]


def _raise_when_weighted(real, fail):
    def wrapped(*a, weights=None, **k):
        if weights is not None:
            fail()
        return real(*a, weights=None, **k)

    return wrapped


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, labelled_set):
    out = tmp_path_factory.mktemp("run") / "r1"
    opts = RunOptions(data=[str(labelled_set)], out=str(out), image_size=32, version="t1")
    cfg = TrainConfig(epochs=1, batch_size=16, init="scratch", device="cpu", seed=0)
    res = run_training(opts, cfg, log=lambda *_: None)
    return out, res


def test_run_directory_contents(trained_run):
    out, res = trained_run
    for name in (
        "model.onnx",
        "model.json",
        "metrics.json",
        "card.md",
        "split.csv",
        "confusion.png",
        "confusion.csv",
        "misclassified.png",
        "data.json",
    ):
        assert (out / name).is_file(), name
    info = read_sidecar(out / "model.onnx")  # sha256 and class list check
    assert_sidecar_meets_schema(out / "model.onnx")
    assert info.version == "t1" and info.preprocess.input_size == 32
    assert info.sidecar.parity.passed and info.sidecar.parity.top1_agreement == 1.0
    assert info.sidecar.init["used"] == "scratch"
    assert info.temperature > 0 and 0.5 <= info.review_threshold <= 0.95
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == sum(metrics["data"]["per_split_class"]["test"].values())
    assert "Initialisation: scratch" in (out / "card.md").read_text()
    assert res["parity_passed"] is True


def test_classify_and_evaluate_with_trained_model(trained_run, labelled_set):
    out, res = trained_run
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    r = subprocess.run(
        [WBC, "classify", str(labelled_set / "ig"), "--model", str(out / "model.onnx"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 18 and all(
        x["label"]
        in {"neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig", "erythroblast", "platelet"}
        for x in lines
    )
    r = subprocess.run(
        [WBC, "evaluate", "--model", str(out / "model.onnx"), "--data", str(labelled_set), "--split", "test", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    # the runtime pipeline scores the same images as the training run's test split
    assert m["n"] == json.loads((out / "metrics.json").read_text())["test"]["n"]
    assert abs(m["accuracy"] - res["accuracy"]) <= 0.1  # JPEG cache vs original files may flip a borderline cell


def test_registry_promotion_rules(tmp_path, trained_run):
    out, res = trained_run
    reg = Registry(tmp_path / "reg")
    v = reg.register(out)
    challenger = {"macro_f1": res["macro_f1"], "parity_passed": res["parity_passed"]}
    assert decide_promotion(challenger, None).promote  # better than nothing: promotes
    reg.promote(v, reason="first")
    worse = {"macro_f1": res["macro_f1"] + 0.1}
    assert not decide_promotion(challenger, worse).promote  # not better: current stays
    assert reg.current_version() == v
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    side = json.loads((broken / "model.json").read_text())
    side["version"] = "broken"
    (broken / "model.json").write_text(json.dumps(side))
    with open(broken / "model.onnx", "ab") as fh:
        fh.write(b"garbage")
    with pytest.raises(Exception, match="sha256"):
        reg.register(broken)
    assert reg.current_version() == v


def _torch_and_onnx_logits(model_dir: Path, cache: Path, n: int = 12) -> tuple[np.ndarray, np.ndarray, dict]:
    """Logits of the model's ONNX file and of a PyTorch ResNet50 built from its float weights alone
    (``wbc train --init MODEL --init-head``'s path), on the test cells of ``cache``."""
    from training.export import ort_logits
    from wbcproc.preprocess import to_input

    test = load_cache(cache).subset("test")
    net, record = build_model(str(model_dir), keep_head=True)
    net.eval()
    with torch.no_grad():
        mine = net(torch.from_numpy(to_input(test.images[:n], test.spec))).numpy()
    return mine, ort_logits(model_dir / "model.onnx", test)[:n], record


def test_a_trained_model_carries_its_float_weights_and_they_compute_it(tmp_path, trained_run):
    """The int8-or-float ONNX file cannot be trained on; the fp16 weights beside it can, on any machine:
    listed in the sidecar with their sha256, copied by the registry, and a network built from them alone
    gives the exported file's classes."""
    from training.weights import load_float_weights

    out, _ = trained_run
    info = read_sidecar(out / "model.onnx")
    w = info.sidecar.weights
    raw = json.loads((out / "model.json").read_text())
    assert raw["format_version"] == 2 and raw["weights"]["file"] == "model.weights.safetensors"
    assert w.dtype == "float16" and w.architecture == "ResNet50" and w.parameters > 23_000_000
    state, _ = load_float_weights(out)
    assert state["fc.weight"].shape == (8, 2048) and state["fc.weight"].dtype == torch.float32
    mine, ref, record = _torch_and_onnx_logits(out, out / "cache-32.npz")
    assert record["used"] == "file" and record["weights_sha256"] == w.sha256 and record["head"] == "kept (warm start)"
    assert (mine.argmax(1) == ref.argmax(1)).all()
    assert np.abs(mine - ref).max() <= 0.02 * np.abs(ref).max() + 1e-3  # fp16 weights: rounding only
    reg = Registry(tmp_path / "reg")
    v = reg.register(out)
    assert (reg.versions_dir / v / w.file).read_bytes() == (out / w.file).read_bytes()
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    side = json.loads((changed / "model.json").read_text())
    side["version"] = "changed"
    (changed / "model.json").write_text(json.dumps(side))
    with open(changed / w.file, "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(Exception, match=r"float weights .* have sha256 .*belongs to another model"):
        reg.register(changed)
    (changed / w.file).unlink()
    with pytest.raises(Exception, match=r"float weights 'model\.weights\.safetensors' are not beside it"):
        build_model(str(changed), keep_head=True)


def test_an_adapted_model_carries_float_weights_of_its_own_head(tmp_path, trained_run, labelled_set):
    """`wbc adapt` of a model that carries float weights writes the adapted model's beside it: the parent's
    network with the adapted head, giving the adapted file's classes."""
    from training.adapt import adapt

    out, _ = trained_run
    said: list[str] = []
    adapt([labelled_set], tmp_path / "lab", out / "model.onnx", min_per_class=2, holdout=0.0, log=said.append)
    info = read_sidecar(tmp_path / "lab" / "model.onnx")
    assert info.sidecar.weights is not None and info.sidecar.weights.sha256 != read_sidecar(out).sidecar.weights.sha256
    mine, ref, _ = _torch_and_onnx_logits(tmp_path / "lab", out / "cache-32.npz")
    assert (mine.argmax(1) == ref.argmax(1)).all()
    assert np.abs(mine - ref).max() <= 0.02 * np.abs(ref).max() + 1e-3
    # a routed model keeps its parent beside it: the parent's float weights go too, named for the copy
    from training.adapt import _write_parent
    from training.weights import load_float_weights

    _write_parent(out / "model.onnx", read_sidecar(out), tmp_path / "lab", {})
    parent_copy = read_sidecar(tmp_path / "lab" / "parent.onnx")
    assert parent_copy.sidecar.weights.file == "parent.weights.safetensors" and parent_copy.version == "t1"
    assert load_float_weights(tmp_path / "lab" / "parent.onnx")[0]["fc.bias"].shape == (8,)
    assert load_float_weights(tmp_path / "lab")[1].version == info.version  # the adapted model's own are apart


@pytest.mark.slow
def test_retrain_flow_promotes_only_when_better(prefect_server, tmp_path, labelled_set):
    from flows.retrain import RetrainBusyError, retrain_flow, retrain_lock

    reg_dir = tmp_path / "registry"
    kw = dict(
        data=[str(labelled_set)],
        runs_dir=str(tmp_path / "runs"),
        registry=str(reg_dir),
        epochs=1,
        image_size=32,
        init="scratch",
        device="cpu",
        batch_size=16,
    )
    # nothing registered: the shipped default is the model in use and a 1-epoch 32 px model cannot beat it
    shipped = retrain_flow(**kw)
    assert shipped["promoted"] is False and "does not beat" in shipped["reason"]
    assert shipped["champion_macro_f1"] is not None
    import time

    import wbcproc.paths as model_mod

    time.sleep(1.1)  # versions are second-resolution timestamps
    real_dirs = model_mod.packaged_model_dirs
    model_mod.packaged_model_dirs = lambda: [tmp_path / "no-shipped-model"]
    try:
        first = retrain_flow(**kw)
    finally:
        model_mod.packaged_model_dirs = real_dirs
    assert first["promoted"] is True and "no current model" in first["reason"]
    reg = Registry(reg_dir)
    assert reg.current_version() == first["version"]
    time.sleep(1.1)
    second = retrain_flow(**kw, margin=1.0)  # cannot beat the champion by a whole macro-F1 point of 1.0
    assert second["promoted"] is False and "does not beat" in second["reason"]
    assert reg.current_version() == first["version"]
    assert {v.version for v in reg.list()} == {shipped["version"], first["version"], second["version"]}
    with retrain_lock(reg):
        state = retrain_flow(**kw, return_state=True)
        assert state.is_failed()
        with pytest.raises(RetrainBusyError):
            state.result()
    with pytest.raises(RegistryError):
        reg.promote("nope", reason="x")


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_budgeted_search_writes_its_table(tmp_path, labelled_set):
    from training.run import prepare_data, search

    opts = RunOptions(
        data=[str(labelled_set)],
        out=str(tmp_path),
        image_size=32,
        search_trials=2,
        search_epochs=1,
        search_sizes=(32, 40),
        cache_quality=70,
    )
    g, main_cache, _ = prepare_data(opts)
    before = main_cache.read_bytes()
    base = TrainConfig(epochs=1, batch_size=16, init="scratch", device="cpu")
    chosen, rows = search(opts, base, g, log=lambda *_: None)
    import csv

    with open(tmp_path / "search.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(rows) == len(table) == 2
    assert {"lr", "batch_size", "freeze_stages", "image_size", "val_macro_f1"} <= set(table[0])
    best = max(rows, key=lambda r: r["val_macro_f1"])
    assert (chosen.lr, chosen.batch_size, chosen.freeze_stages) == (
        best["lr"],
        best["batch_size"],
        best["freeze_stages"],
    )
    # the bug this guards against: trial caches without white balance and framing, written over the main
    # cache of the same size, so the final model trained without them
    assert main_cache.read_bytes() == before
    for cache in tmp_path.glob("cache-*.npz"):
        with np.load(cache) as z:
            meta = json.loads(str(z["meta"]))
        assert meta["quality"] == 70, cache.name
        assert meta["spec"]["colour_normalisation"]["method"] == "white_balance", cache.name
        assert meta["spec"]["framing"] is not None, cache.name


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_int8_quantisation_gives_a_working_model(tmp_path, trained_run):
    from training.dataset import load_cache
    from training.export import ort_logits, quantize_int8

    out, _ = trained_run
    data = load_cache(out / "cache-32.npz")
    q = quantize_int8(out / "model.onnx", data.subset("train"), tmp_path / "model.int8.onnx", n_calib=16)
    logits = ort_logits(q, data.subset("test"))
    assert logits.shape == (len(data.subset("test")), 8)
    assert q.stat().st_size < (out / "model.onnx").stat().st_size / 2  # int8 weights


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_gpu_round_trip_cache_to_shards_to_onnx(tmp_path, trained_run):
    """The GPU recipe: train from the packed cache only, bring weights back as fp16 shards (< 16 MiB
    each), rebuild + export + parity on the CPU."""
    out, _ = trained_run
    cache = out / "cache-32.npz"
    cfg = TrainConfig(epochs=1, batch_size=16, init="scratch", device="cpu", seed=1)
    gpu = run_training(
        RunOptions(data=[], out=str(tmp_path / "gpu"), image_size=32),
        cfg,
        log=lambda *_: None,
        cache=str(cache),
        shards_only=True,
    )
    shards = [Path(p) for p in gpu["shards"]]
    assert len(shards) >= 2 and all(p.stat().st_size < 16 * 1024 * 1024 for p in shards)
    assert not (tmp_path / "gpu" / "model.onnx").exists()
    cpu = run_training(
        RunOptions(data=[], out=str(tmp_path / "cpu"), image_size=32, version="from-shards"),
        TrainConfig(lr=0.5, seed=7),  # this command's settings: the GPU run's recorded ones must win
        log=lambda *_: None,
        cache=str(cache),
        from_shards=str(tmp_path / "gpu"),
    )
    assert cpu["parity_passed"] is True
    info = read_sidecar(tmp_path / "cpu" / "model.onnx")
    assert info.version == "from-shards" and info.sidecar.training["best_epoch"] == 1
    assert info.sidecar.training["seed"] == 1 and info.sidecar.training["lr"] == cfg.lr
    fitted = info.sidecar.domain["uncertainty"]
    assert fitted["thresholds"] and "validation split" in fitted["calibration"]["source"]
    # a model exported before the model-side guard existed gets it from training.scripts.refresh_guard
    from wbcproc.sidecar import write_sidecar

    old = info.sidecar.replace(domain={k: v for k, v in info.sidecar.domain.items() if k != "uncertainty"})
    write_sidecar(tmp_path / "cpu" / "model.onnx", old)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.scripts.refresh_guard",
            "--model",
            str(tmp_path / "cpu" / "model.onnx"),
            "--cache",
            str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    again = read_sidecar(tmp_path / "cpu" / "model.onnx")
    # ONNX Runtime's logits here, PyTorch's at export: the same fit within float noise
    assert again.sidecar.domain["uncertainty"]["thresholds"] == pytest.approx(fitted["thresholds"], rel=1e-3)
    # the confusion counts are refitted too (same counts; the source names ONNX Runtime); nothing else changes
    assert again.sidecar.confusion_val.counts == info.sidecar.confusion_val.counts
    assert (
        again.sidecar.confusion_val.n == len(data_val_labels(cache))
        and "ONNX Runtime" in again.sidecar.confusion_val.source
    )
    assert again.sidecar.replace(domain=None, confusion_val=None) == info.sidecar.replace(
        domain=None, confusion_val=None
    )


def data_val_labels(cache) -> list[int]:
    from training.dataset import load_cache

    return list(load_cache(cache).subset("val").labels)


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_device_script_runs_without_opencv(tmp_path, trained_run):
    """training.scripts.gpu_train needs only torch/torchvision/numpy: run it with OpenCV made unimportable."""
    out, _ = trained_run
    code = (
        "import sys, runpy; sys.modules['cv2'] = None; "
        "sys.argv = ['gpu_train'] + sys.argv[1:]; runpy.run_module('training.scripts.gpu_train', run_name='__main__')"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--cache",
            str(out / "cache-32.npz"),
            "--out",
            str(tmp_path / "dev"),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["shards"] and (tmp_path / "dev" / "train_info.json").is_file()
    # the reported accuracy is the shards' own: rebuilt from them, the model scores the same on the test split
    from training.dataset import load_cache as _load
    from training.loop import predict_logits
    from training.model import build_model as _build
    from training.shards import load_shards

    net, _ = _build("scratch")
    net.load_state_dict(load_shards(tmp_path / "dev"))  # fp16 shards: the same argmax up to rounding
    test = _load(out / "cache-32.npz").subset("test")
    pred = predict_logits(net.eval(), test, torch.device("cpu")).argmax(1)
    assert summary["test_accuracy"] == pytest.approx(float(np.mean(pred == np.asarray(test.labels))), abs=0.05)
    a, b = _load(out / "cache-32.npz", decoder="pillow"), _load(out / "cache-32.npz", decoder="opencv")
    assert np.abs(a.images.astype(int) - b.images.astype(int)).mean() < 1.0  # same pixels as the OpenCV path
    assert (a.labels == b.labels).all() and (a.files == b.files).all()


def test_robust_augmentation_changes_colour_and_resolution_within_range():
    from training.recipe import ROBUST_AUGMENTATION

    cfg = TrainConfig(**ROBUST_AUGMENTATION, rotate=False)
    x = torch.rand(64, 3, 32, 32) * 0.5 + 0.25
    y = augment(x, cfg, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    # per-image colour casts differ (stain / white-balance jitter), not only brightness
    cast = (y.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).std(dim=0)
    assert float(cast.min()) > 0.01
    # off by default: the basic config leaves colour alone when jitter is off
    plain = TrainConfig(rotate=False, colour_jitter=0, hue_jitter=0, blur_prob=0)
    assert torch.allclose(augment(x, plain, torch.Generator().manual_seed(1)), x)


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_time_budget_plans_fewer_epochs(tmp_path, labelled_set):
    from training.loop import train_model

    opts = RunOptions(data=[str(labelled_set)], out=str(tmp_path / "r"), image_size=32)
    _g, cache_path, _ = __import__("training.run", fromlist=["prepare_data"]).prepare_data(opts, log=lambda *_: None)
    data = load_cache(cache_path)
    cfg = TrainConfig(epochs=50, batch_size=16, init="scratch", device="cpu", time_budget_s=0.001, patience=100)
    _model, info = train_model(data.subset("train"), data.subset("val"), cfg, log=lambda *_: None)
    assert info["epochs_planned"] == 2 and len(info["history"]) == 2


def test_bccd_crops_are_a_framed_second_source(tmp_path):
    """BCCD fields -> labelled crops in train/holdout roots with a FRAMED marker; gather marks them; the
    cache skips re-framing for them exactly as inference does for field crops; evaluation too."""
    from helpers import FIXTURES

    from training.bccd import export_crops

    bccd = tmp_path / "bccd"
    (bccd / "Annotations").mkdir(parents=True)
    (bccd / "JPEGImages").mkdir()
    for p in (FIXTURES / "fields").glob("BloodImage_*"):
        shutil.copy(p, bccd / ("Annotations" if p.suffix == ".xml" else "JPEGImages") / p.name)
    (bccd / "labels.csv").write_text(
        "image,wbc_categories\nBloodImage_00003.jpg,NEUTROPHIL\nBloodImage_00009.jpg,EOSINOPHIL\n"
        "BloodImage_00020.jpg,LYMPHOCYTE\nBloodImage_00040.jpg,MONOCYTE\nBloodImage_00041.jpg,\n"
    )
    counts = export_crops(bccd, tmp_path / "crops", holdout=0.5)
    assert sum(sum(c.values()) for c in counts.values()) == 4  # the unlabelled field gives nothing
    roots = [tmp_path / "crops" / p for p in ("train", "holdout")]
    g = gather(roots)
    assert len(g.items) == 4 and all(it.framed for it in g.items)
    assert not g.skipped  # the FRAMED marker is not reported as a stray file
    spec = make_spec(32, background=(203.0, 229.0, 255.0))
    path, _failed = build_cache(g, spec, tmp_path / "c.npz")
    data = load_cache(path)
    for i in range(len(data)):
        bgr = read_image(data.files[i]).bgr
        framed = np.abs(data.images[i].astype(int) - prepare_image(bgr, spec, framed=True).astype(int)).mean()
        reframed = np.abs(data.images[i].astype(int) - prepare_image(bgr, spec).astype(int)).mean()
        assert framed < 8 and framed < reframed  # (JPEG in the cache: not bit-exact)


def test_stain_augmentation_mixes_stain_colours_and_greys_some_images():
    from training.recipe import augmentation

    x = torch.rand(64, 3, 32, 32) * 0.6 + 0.2
    grey = augment(
        x,
        TrainConfig(rotate=False, colour_jitter=0, hue_jitter=0, blur_prob=0, grey_prob=1.0),
        torch.Generator().manual_seed(0),
    )
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    mixed = augment(
        x,
        TrainConfig(rotate=False, colour_jitter=0, hue_jitter=0, blur_prob=0, stain_mix=0.2),
        torch.Generator().manual_seed(0),
    )
    # each optical-density channel now carries some of the others: colour casts vary image to image
    cast = (mixed.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).std(dim=0)
    assert float(cast.min()) > 0.01
    cfg = TrainConfig(**augmentation("stain"))
    import random

    random.seed(5)
    a = augment(x, cfg, torch.Generator().manual_seed(3))
    random.seed(5)  # the low-resolution factor comes from the host's `random` (no device round trip)
    b = augment(x, cfg, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and not torch.allclose(a, x)
    assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="unknown"):
        augmentation("heavy")


def test_ibn_variant_exports_and_round_trips_through_shards(tmp_path):
    """ResNet50-IBN-a: instance norm in layer1-3; exported to ONNX with the same logits, and rebuilt from
    fp16 shards by the norm its train_info records (as ``wbc train --from-shards`` does)."""
    from training.export import export_onnx, ort_session
    from training.model import IBN, build_model
    from training.shards import load_shards, save_shards

    model, record = build_model("scratch", norm="ibn")
    assert record["architecture"] == "ResNet50-IBN-a"
    assert isinstance(model.layer1[0].bn1, IBN) and isinstance(model.layer3[-1].bn1, IBN)
    assert not isinstance(model.layer4[0].bn1, IBN)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).numpy()
    path = export_onnx(model, 64, tmp_path / "ibn.onnx")
    out = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-3
    save_shards(model.state_dict(), tmp_path / "shards")
    again, _ = build_model("scratch", norm="ibn")
    again.load_state_dict(load_shards(tmp_path / "shards"))
    plain, _ = build_model("scratch")
    with pytest.raises(RuntimeError):
        plain.load_state_dict(load_shards(tmp_path / "shards"))
    with pytest.raises(ValueError, match="norm 'gn' is unknown"):
        build_model("scratch", norm="gn")


def test_simulated_other_lab_sets_are_deterministic_and_shaped_as_described(tmp_path, labelled_set):
    """training.simulate: a smaller magnification in a larger field, and tight 120 px crops; both with
    a yellow cast (less blue than the source), the same bytes on a second run."""
    import cv2

    from training.simulate import simulate_camera, simulate_tight, write_set

    img = cv2.imread(str(next(labelled_set.glob("*/*"))))
    h = img.shape[0]
    cam, tight = simulate_camera(img), simulate_tight(img)
    assert abs(cam.shape[0] - round(h * 1.9 * 0.7)) <= 2 and tight.shape == (120, 120, 3)
    for out in (cam, tight):
        assert out[..., 0].mean() < img[..., 0].mean() - 10  # blue channel (BGR) lowered: a yellow cast
    counts = write_set([str(labelled_set)], "test", "tight", tmp_path / "a")
    write_set([str(labelled_set)], "test", "tight", tmp_path / "b")
    assert sum(counts.values()) == len(list((tmp_path / "a").glob("*/*.png"))) > 0
    for p in (tmp_path / "a").glob("*/*.png"):
        assert p.read_bytes() == (tmp_path / "b" / p.parent.name / p.name).read_bytes()
    with pytest.raises(ValueError, match="kind 'blur' is unknown"):
        write_set([str(labelled_set)], "test", "blur", tmp_path / "c")


@pytest.mark.slow
def test_wbc_train_honours_cache_quality_without_pack_only(tmp_path, labelled_set):
    """`--cache-quality` used to reach only `--pack-only`; a full `wbc train` wrote its cache at 90."""
    out = tmp_path / "run"
    r = subprocess.run(
        [WBC, "train", "--data", str(labelled_set), "--out", str(out), "--image-size", "32", "--epochs", "1",
         "--batch-size", "16", "--init", "scratch", "--device", "cpu", "--cache-quality", "60"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(out / "cache-32.npz") as z:
        assert json.loads(str(z["meta"]))["quality"] == 60
    assert (
        read_sidecar(out / "model.onnx").sidecar.confusion_val is not None
    )  # inference's flag correction has its matrix


@pytest.mark.slow
def test_wbc_train_warm_start_keeps_the_head_of_a_shard_folder(tmp_path, labelled_set):
    """`wbc train --init SHARDS --init-head` continues that model (its head kept), as gpu_train does; without a
    path to take a head from, it is refused before any data is read."""
    common = ["--data", str(labelled_set), "--image-size", "32", "--epochs", "1", "--batch-size", "16",
              "--device", "cpu", "--shards-only"]  # fmt: skip
    parent, child = tmp_path / "parent", tmp_path / "child"
    r = subprocess.run([WBC, "train", *common, "--out", str(parent), "--init", "scratch"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([WBC, "train", *common, "--out", str(child), "--init", str(parent), "--init-head"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    init = json.loads((child / "train_info.json").read_text())["init"]
    assert init["used"] == "file" and init["path"] == str(parent) and init["head"] == "kept (warm start)"
    r = subprocess.run([WBC, "train", *common, "--out", str(tmp_path / "no"), "--init", "scratch", "--init-head"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 2 and "--init 'scratch' has none to keep" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "no").exists()


def test_one_recipe_is_every_trainers_default_and_the_shipped_models():
    """wbc train, training.scripts.gpu_train, the retrain flow and TrainConfig default to training.recipe.SHIPPED,
    which is what the shipped model's sidecar records: one training recipe everywhere."""
    import inspect

    import typer.main

    from flows.cli import train as cli_train
    from flows.retrain import retrain_flow
    from training.recipe import SHIPPED, TrainConfig, augmentation
    from training.scripts import gpu_train
    from wbcproc.resolve import resolve_model_path

    cfg = TrainConfig()
    for k in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "optimizer", "init", "seed", "patience"):
        assert getattr(cfg, k) == SHIPPED[k], k
    cli = {p.name: p.default for p in inspect.signature(cli_train).parameters.values()}
    cli = {k: (v.default if isinstance(v, typer.models.OptionInfo) else v) for k, v in cli.items()}
    for k in ("epochs", "batch_size", "lr", "init", "patience", "augment", "norm", "image_size", "cache_quality"):
        assert cli[k] == SHIPPED[k], k
    del typer.main
    flow = {p.name: p.default for p in inspect.signature(retrain_flow.fn).parameters.values()}
    for k in ("epochs", "batch_size", "lr", "init", "seed", "image_size"):
        assert flow[k] == SHIPPED[k], k
    ap = gpu_train.parser()
    args = ap.parse_args(["--cache", "packed.npz", "--out", "run"])  # the GPU script with no recipe option
    script = gpu_train._config(ap, args)
    for k in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "init", "patience", "seed"):
        assert getattr(script, k) == SHIPPED[k], k
    assert (args.augment, args.norm) == (SHIPPED["augment"], SHIPPED["norm"])
    assert script == TrainConfig(**augmentation(SHIPPED["augment"]), norm=SHIPPED["norm"], device=args.device)
    shipped = read_sidecar(resolve_model_path(None)).sidecar.to_dict()
    for k in ("batch_size", "lr", "weight_decay", "label_smoothing", "optimizer", "norm", "seed", "patience"):
        assert shipped["training"][k] == SHIPPED[k], k
    assert shipped["init"]["used"] == SHIPPED["init"] and shipped["training"]["stain_mix"] == 0.0  # basic


def test_mixed_augmentation_leaves_about_half_the_images_in_the_labs_colours():
    """stain_prob: the stain changes reach only that share of images; the others are exactly what the same
    settings without stain changes give (so the training laboratory's colour cues are still learnt)."""
    import random

    from training.recipe import MIXED_AUGMENTATION, augmentation

    x = torch.rand(400, 3, 16, 16) * 0.6 + 0.2
    assert augmentation("mixed") == MIXED_AUGMENTATION and MIXED_AUGMENTATION["stain_prob"] == 0.5
    base = dict(rotate=False, colour_jitter=0, hue_jitter=0, blur_prob=0, stain_mix=0.2, channel_gain=0.1)
    y = augment(x, TrainConfig(**base, stain_prob=0.5), torch.Generator().manual_seed(0))
    untouched = (y - x).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert 0.4 < float(untouched.float().mean()) < 0.6
    assert float((y - x).abs().amax(dim=(1, 2, 3))[~untouched].min()) > 1e-3  # the rest really changed
    none = augment(x, TrainConfig(**base, stain_prob=0.0), torch.Generator().manual_seed(0))
    assert torch.allclose(none, x)
    random.seed(1)
    full = augment(x, TrainConfig(**base), torch.Generator().manual_seed(0))
    assert bool(((full - x).abs().amax(dim=(1, 2, 3)) > 1e-3).all())  # stain_prob 1 (default): every image


def test_wbc_train_refuses_bad_recipe_values_in_one_line_and_packs_a_cache(tmp_path, labelled_set):
    """Each bad value is named with what was expected (exit 2, nothing written); --pack-only writes the
    cache a GPU machine trains from, and says where and how big."""
    common = ["--data", str(labelled_set), "--image-size", "32"]
    for bad, said in [
        (["--augment", "wild"], "'wild' is not one of 'robust', 'basic', 'stain', 'mixed'"),
        (["--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda'"),
        (["--norm", "gn"], "'gn' is not one of 'bn', 'ibn'"),
        (["--init", str(tmp_path / "nowhere")], "does not exist; expected 'imagenet', 'scratch', a model"),
        (["--init", str(Path(__file__).parents[1] / "models")], "1.2.0 ('"),  # shipped before float weights
    ]:
        out = tmp_path / Path(bad[1]).name
        r = subprocess.run([WBC, "train", *common, "--out", str(out), *bad], capture_output=True, text=True)
        assert r.returncode == 2 and said in r.stderr and bad[1] in r.stderr, (bad, r.stderr)
        assert bad[0] != "--init" or "float weights" in r.stderr or "nowhere" in bad[1]
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    r = subprocess.run(
        [WBC, "train", *common, "--out", str(tmp_path / "pack"), "--pack-only", "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    packed = json.loads(r.stdout)
    assert Path(packed["cache"]).stat().st_size == packed["bytes"] > 0 and packed["images"] > 0
    assert not (tmp_path / "pack" / "model.onnx").exists()

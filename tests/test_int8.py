"""The shipped int8 model gives the same answer on every CPU.

The float reference is ``tests/fixtures/float_reference.json``: logits of the fixture cells from the
float export of the shipped weights and from the int8 file on the exporting machine
(``python -m training.scripts.float_reference``).  What each holds: the int8 logits are of today's inputs;
the float logits are of the inputs of an earlier preprocessing (its ``float_inputs`` says how they differ:
two of 28 cells were cut smaller since), and the float weights are not in the repository, so they are not
remade here.  The class comparison is therefore against those float logits, and the logit comparison,
which is the check of the integer arithmetic, against the exporting CPU's int8 logits of today's inputs.  These tests run the *product's* session (``load_classifier``,
with whatever options this CPU gets) and compare.  Where ``qemu-x86_64`` is installed (``.ci/run``
installs it), one more runs the same model on an emulated AVX2-only CPU (Haswell: no AVX-512, no VNNI)
- the kind of server where 8-bit weights saturated.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import FIXTURES, make_tiny_model
from onnx import TensorProto, numpy_helper

from training.float_reference import fixture_inputs, inputs_sha256
from wbcproc import int8
from wbcproc.model import Classifier, load_classifier
from wbcproc.sidecar import Quantization, read_sidecar, write_sidecar

REFERENCE = json.loads((FIXTURES / "float_reference.json").read_text())
MAX_CLASS_DISAGREEMENT = 0.005  # int8 and float disagree on at most 0.5 % of the fixture cells
# Integer sums are exact on every CPU for 7-bit weights; what may differ is float rounding in requantisation
# (one activation step here and there).  Saturation moved logits by 0.5-2.0 on the 8-bit model (measured).
INT8_LOGIT_TOL = 0.05


def _shipped() -> tuple[Classifier, list[str], np.ndarray]:
    clf = load_classifier(None, threads=1)
    assert clf.info.sha256 == REFERENCE["model_sha256"], (
        f"tests/fixtures/float_reference.json was made for model {REFERENCE['model_version']} "
        f"({REFERENCE['model_sha256'][:12]}), but the shipped model is {clf.info.version} ({clf.info.sha256[:12]}): "
        "regenerate it with `python -m training.scripts.float_reference` from the export's model.fp32.onnx"
    )
    names, x = fixture_inputs(clf.info.preprocess)
    assert names == list(REFERENCE["cells"]), "the fixture inputs changed since the reference was made"
    return clf, names, x


def test_shipped_int8_agrees_with_the_float_reference_on_this_cpu():
    clf, names, x = _shipped()
    got = clf.logits(x)
    ref_float = np.array([REFERENCE["cells"][n]["float"] for n in names])
    ref_int8 = np.array([REFERENCE["cells"][n]["int8"] for n in names])
    kernel = int8.int8_kernel()
    differ = [n for n, a, b in zip(names, got.argmax(1), ref_float.argmax(1), strict=True) if a != b]
    assert len(differ) <= MAX_CLASS_DISAGREEMENT * len(names), (
        f"int8 classes differ from the float reference on {len(differ)} of {len(names)} fixture cells on this CPU "
        f"({kernel.description}; plan: {clf.int8.summary}): {differ}"
    )
    worst = float(np.abs(got - ref_int8).max())
    assert worst <= INT8_LOGIT_TOL, (
        f"int8 logits differ by up to {worst:.3f} from those of the exporting CPU ({REFERENCE['int8_cpu_kernel']}) "
        f"on this one ({kernel.description}): the integer arithmetic is not the same here"
    )


def test_shipped_model_declares_and_has_saturation_free_weights():
    info = read_sidecar(load_classifier(None).info.onnx_path)
    declared = info.sidecar.quantization.weight_max_abs
    m = onnx.load(str(info.onnx_path))
    actual = max(
        int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max())
        for t in m.graph.initializer
        if t.data_type == TensorProto.INT8
    )
    assert actual == declared <= int8.SATURATION_FREE_WEIGHT_MAX
    plan = int8.plan_for(info.sidecar.quantization, int8.Int8Kernel("avx2", False, "test"))
    assert plan.exact and not plan.precise_mode  # fast u8s8 kernels stay in use, and they are exact


VNNI = {"AVX2": True, "AVX512BW": True, "AVX512VNNI": True, "AVX512_CLX": True}
SKYLAKE = {"AVX2": True, "AVX512BW": True}
HASWELL = {"AVX2": True}


@pytest.mark.parametrize(
    ("features", "machine", "kernel", "exact"),
    [
        (VNNI, "x86_64", "avx512-vnni", True),
        (SKYLAKE, "x86_64", "avx512bw", False),
        (HASWELL, "x86_64", "avx2", False),
        ({}, "x86_64", "sse", False),
        ({}, "aarch64", "arm", True),
    ],
)
def test_int8_kernel_from_cpu_features(features, machine, kernel, exact):
    k = int8.int8_kernel(features, machine)
    assert (k.name, k.exact) == (kernel, exact)


@pytest.mark.parametrize(
    ("quantization", "features", "precise", "exact"),
    [
        (None, HASWELL, False, True),  # float model
        ({"kept": False}, HASWELL, False, True),
        ({"kept": True, "weight_max_abs": 64}, HASWELL, False, True),
        ({"kept": True}, HASWELL, True, True),  # 8-bit (undeclared) weights on AVX2: precise kernels
        ({"kept": True, "weight_max_abs": 127}, SKYLAKE, True, True),
        ({"kept": True, "weight_max_abs": 127}, VNNI, False, True),
        ({"kept": True, "weight_max_abs": 127}, {}, False, False),  # SSE4.1: no remedy but 7-bit weights
    ],
)
def test_int8_plan(quantization, features, precise, exact):
    q = None if quantization is None else Quantization.from_dict(quantization)
    plan = int8.plan_for(q, int8.int8_kernel(features, "x86_64"))
    assert (plan.precise_mode, plan.exact) == (precise, exact), plan.summary
    assert plan.session_config() == ({"session.x64quantprecision": "1"} if precise else {})


def test_precise_mode_reaches_the_onnx_runtime_session(tmp_path, monkeypatch):
    """An int8 model without a declared weight bound, on a (pretended) AVX2 CPU: the real session is opened
    with ONNX Runtime's precise-kernel option; on a VNNI CPU it is not."""
    path = make_tiny_model(tmp_path)
    side = json.loads(path.with_suffix(".json").read_text())
    side["quantization"] = {"kept": True}
    for k in ("format", "format_version", "file", "sha256"):
        side.pop(k)
    write_sidecar(path, side)
    info = read_sidecar(path)
    haswell, vnni = int8.int8_kernel(HASWELL, "x86_64"), int8.int8_kernel(VNNI, "x86_64")
    monkeypatch.setattr(int8, "int8_kernel", lambda: haswell)
    opts = Classifier(info, threads=1).session.get_session_options()
    assert opts.get_session_config_entry("session.x64quantprecision") == "1"
    monkeypatch.setattr(int8, "int8_kernel", lambda: vnni)
    opts = Classifier(info, threads=1).session.get_session_options()
    with pytest.raises(Exception, match="x64quantprecision"):  # ORT: "config key not found"
        opts.get_session_config_entry("session.x64quantprecision")


def test_wbc_info_names_the_int8_path():
    r = subprocess.run([str(Path(sys.executable).parent / "wbc"), "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("int8:"))
    assert int8.int8_kernel().name in line and "exact on every CPU" in line


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU on an x86 host")
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed (Debian: qemu-user; .ci/run installs it)")
def test_same_logits_on_an_emulated_avx2_cpu_without_vnni(tmp_path):
    """The product's own session (``Classifier``: the options this CPU gets) on an emulated Haswell - AVX2,
    no AVX-512, no VNNI - gives the same logits as on this machine.  With 1.1.0's 8-bit weights this
    emulation changed 2 of the 28 fixture cells' classes (logits up to 2.0 apart)."""
    clf, _, x = _shipped()
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np\n"
        "from wbcproc import int8\n"
        "from wbcproc.model import load_classifier\n"
        "clf = load_classifier(None, threads=1)\n"
        "print(int8.int8_kernel().name, clf.int8.precise_mode, flush=True)\n"
        "np.save(sys.argv[2], clf.logits(np.load(sys.argv[1])))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[1:])}
    r = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, "-c", script, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[:2] == ["avx2", "False"], r.stdout  # emulated AVX2, fast kernels kept
    emulated, here = np.load(tmp_path / "y.npy"), clf.logits(x)
    assert (emulated.argmax(1) == here.argmax(1)).all()
    assert float(np.abs(emulated - here).max()) <= INT8_LOGIT_TOL


def test_fixture_inputs_are_the_exporting_machines_bit_for_bit():
    """The preprocessing (decode, white balance, red-cell ruler, framing, resize) gives this CPU the very
    inputs the reference was made with.  Before ``wbcproc.resize`` and ``chamfer_peaks`` an ARM CPU got other
    crops for 3 of 24 cells (logits up to 0.10 apart) from OpenCV's float rounding."""
    _, _, x = _shipped()
    assert inputs_sha256(x) == REFERENCE["inputs_sha256"], (
        f"the fixture cells' model inputs differ on this CPU ({int8.int8_kernel().description}; "
        f"{platform.machine()}) from the exporting machine's: some preprocessing step rounds differently here"
    )


ARM_ROOT = Path(os.environ.get("WBC_ARM_SYSROOT", Path(__file__).resolve().parents[1] / ".arm-sysroot"))
QEMU_ARM = shutil.which("qemu-aarch64")
_ARM_SCRIPT = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import platform
from training.float_reference import fixture_inputs, inputs_sha256
from wbcproc import int8
from wbcproc.model import load_classifier
clf = load_classifier(None, threads=1)
names, x = fixture_inputs(clf.info.preprocess)
print(json.dumps({"machine": platform.machine(), "kernel": int8.int8_kernel().name, "names": names,
                  "inputs_sha256": inputs_sha256(x), "logits": clf.logits(x).tolist()}))
"""


def _arm_sysroot() -> Path:
    """The aarch64 sysroot that CI builds before the tests (``.ci/arm-sysroot.sh``), holding the versions
    installed here; the test skips, saying why, where there is none or it holds other versions."""
    from importlib.metadata import version

    if not (ARM_ROOT / "VERSIONS").exists():
        pytest.skip(f"no aarch64 sysroot at {ARM_ROOT}: .ci/arm-sysroot.sh {ARM_ROOT} constraints.txt builds one")
    built = (ARM_ROOT / "VERSIONS").read_text().split()
    here = [f"{p.split('==')[0]}=={version(p.split('==')[0])}" for p in built]
    if built != here:
        pytest.skip(
            f"the aarch64 sysroot holds {sorted(set(built) - set(here))}, this venv {sorted(set(here) - set(built))}"
        )
    return ARM_ROOT


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an ARM CPU on an x86 host")
@pytest.mark.skipif(QEMU_ARM is None, reason="qemu-aarch64 not installed (Debian: qemu-user; .ci/run installs it)")
def test_same_inputs_and_logits_on_an_emulated_arm_cpu():
    """The product's preprocessing and session on an emulated ARM server CPU (Neoverse N1: NEON, dot product,
    fused multiply-add everywhere) - aarch64 builds of Python, NumPy, OpenCV and ONNX Runtime, the versions
    installed here - give the fixture cells the same inputs, bit for bit, and the same classes; the int8
    logits agree within one activation step (requantisation rounds its float products its own way)."""
    root = _arm_sysroot()
    repo = Path(__file__).resolve().parents[1]
    py = root / "root" / "usr" / "bin" / "python3.11"
    inner = (
        f'mount --bind "{root}/cpuinfo" /proc/cpuinfo && exec "{QEMU_ARM}" -cpu neoverse-n1 -L "{root}/root" '
        f'"{py}" -c "$0" "{root}/site" "{repo}"'
    )
    r = subprocess.run(["unshare", "-m", "sh", "-c", inner, _ARM_SCRIPT], capture_output=True, text=True, timeout=900)
    if r.returncode != 0 and ("unshare" in r.stderr or "mount" in r.stderr) and "Traceback" not in r.stderr:
        pytest.skip(f"no private mount namespace here for the emulated /proc/cpuinfo: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert (got["machine"], got["kernel"]) == ("aarch64", "arm")
    assert got["names"] == list(REFERENCE["cells"])
    assert got["inputs_sha256"] == REFERENCE["inputs_sha256"], (
        "other model inputs on ARM: preprocessing rounds differently"
    )
    arm = np.array(got["logits"])
    ref = np.array([REFERENCE["cells"][n]["int8"] for n in got["names"]])
    assert (arm.argmax(1) == ref.argmax(1)).all()
    assert float(np.abs(arm - ref).max()) <= INT8_LOGIT_TOL

"""Which int8 arithmetic this CPU runs, and how a quantised model is made to give the same answer on all.

Why this module exists: ONNX Runtime multiplies u8 activations by s8 weights.  CPUs with VNNI
(AVX-512 VNNI, AVX-VNNI), AMX or ARM dot products accumulate the products in 32 bits: exact.  x86 CPUs
without them (AVX2, SSE4.1, AVX-512 before Cascade Lake) use VPMADDUBSW, which adds *two* u8*s8 products
into a saturating int16: 255*127*2 = 64,770 does not fit, so a model with full 8-bit weights gives other
logits - and 1.3 % other classes on PBC test cells - on an AVX2 server than on a VNNI one.  Two remedies, both used:

1. Models exported by ``wbc train --quantize`` keep weights within -64..64 (7 bits, ``reduce_range``):
   255*64*2 = 32,640 fits in int16, so every kernel computes the same exact integer sums.  The sidecar
   says so (``quantization.weight_max_abs``).
2. For an int8 model that does not declare that bound (1.1.0 and older, or a third-party file) on a CPU
   whose kernel saturates, the session is opened with ``session.x64quantprecision=1``: ONNX Runtime's
   own switch to exact (slower) u8u8 kernels.

CPU features come from NumPy's run-time dispatch table (CPUID on x86, HWCAP on ARM): portable, no
/proc parsing, and the same table NumPy itself trusts.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wbcproc.sidecar import Quantization

# |weight| <= 64 keeps 255 * |w| * 2 within int16 (32,767); see the module docstring.
SATURATION_FREE_WEIGHT_MAX = 64
PRECISION_OPTION = "session.x64quantprecision"


def cpu_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as feats
    return dict(feats)


@dataclass(frozen=True)
class Int8Kernel:
    """The integer multiply-accumulate ONNX Runtime's u8s8 kernels use on this CPU."""

    name: str  # short id: arm, avx512-vnni, avx512bw, avx2, sse
    exact: bool  # accumulates u8*s8 products without int16 saturation
    description: str


def int8_kernel(features: dict[str, bool] | None = None, machine: str | None = None) -> Int8Kernel:
    """Classify this CPU (or the given feature table) by its u8s8 int8 path."""
    machine = (machine or platform.machine()).lower()
    f = cpu_features() if features is None else features
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return Int8Kernel("arm", True, "ARM NEON (dot product or widening multiply): 32-bit accumulation, exact")
    if f.get("AVX512VNNI") or f.get("AVX512_CLX") or f.get("AVXVNNI"):
        # AMX machines (Sapphire Rapids on) have AVX-512 VNNI too; either accumulates in 32 bits
        return Int8Kernel("avx512-vnni", True, "x86 AVX-512 VNNI (VPDPBUSD): 32-bit accumulation, exact")
    if f.get("AVX512BW"):
        return Int8Kernel(
            "avx512bw", False, "x86 AVX-512BW without VNNI (VPMADDUBSW): pairs of products saturate at int16"
        )
    if f.get("AVX2"):
        return Int8Kernel("avx2", False, "x86 AVX2 without VNNI (VPMADDUBSW): pairs of products saturate at int16")
    return Int8Kernel("sse", False, "x86 SSE4.1 (PMADDUBSW): pairs of products saturate at int16")


@dataclass(frozen=True)
class Int8Plan:
    """How a model runs here: whether it is int8, which kernel, and whether the precise mode is needed."""

    quantised: bool
    weight_max_abs: int | None  # from the sidecar; None when it does not say
    kernel: Int8Kernel
    precise_mode: bool  # open the session with session.x64quantprecision=1
    exact: bool  # the same integer sums as every other CPU
    summary: str

    def session_config(self) -> dict[str, str]:
        return {PRECISION_OPTION: "1"} if self.precise_mode else {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "quantised": self.quantised,
            "weight_max_abs": self.weight_max_abs,
            "cpu_kernel": self.kernel.name,
            "precise_mode": self.precise_mode,
            "exact": self.exact,
            "summary": self.summary,
        }


def plan_for(quantization: Quantization | None, kernel: Int8Kernel | None = None) -> Int8Plan:
    """Decide the session options for a model from its sidecar's ``quantization`` block and this CPU."""
    kernel = kernel or int8_kernel()
    quantised = quantization is not None and quantization.kept
    wmax = quantization.weight_max_abs if quantization is not None else None
    if not quantised:
        return Int8Plan(False, None, kernel, False, True, "float model: no int8 arithmetic")
    if wmax is not None and wmax <= SATURATION_FREE_WEIGHT_MAX:
        return Int8Plan(
            True, wmax, kernel, False, True,
            f"int8, weights within +-{wmax} (7-bit): exact on every CPU; this one: {kernel.description}",
        )  # fmt: skip
    if kernel.exact:
        return Int8Plan(True, wmax, kernel, False, True, f"int8, 8-bit weights; this CPU: {kernel.description}")
    if kernel.name in ("avx2", "avx512bw"):
        return Int8Plan(
            True, wmax, kernel, True, True,
            f"int8, 8-bit weights on {kernel.name} without VNNI: opened with {PRECISION_OPTION}=1 "
            "(ONNX Runtime's exact u8u8 kernels, slower)",
        )  # fmt: skip
    return Int8Plan(
        True, wmax, kernel, False, False,
        f"int8, 8-bit weights on {kernel.name}: int16 saturation possible and no precise mode exists for this "
        "CPU; use a model exported with 7-bit weights (wbc train --quantize)",
    )  # fmt: skip

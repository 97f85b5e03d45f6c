"""Export to ONNX (dynamic batch), check it, and prove parity with PyTorch through ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from training.dataset import CachedSet
from wbcproc.preprocess import to_input

OPSET = 17


def export_onnx(model: nn.Module, input_size: int, path: str | Path) -> Path:
    path = Path(path)
    model = model.eval().cpu()
    x = torch.zeros(2, 3, input_size, input_size)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript;
        # the legacy path is stable for a plain ResNet50 and has no extra dependency.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def ort_session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_logits(path: str | Path, data: CachedSet, batch_size: int = 64) -> np.ndarray:
    """Logits from ONNX Runtime over the cached images, fed through ``wbcproc.preprocess.to_input``."""
    sess = ort_session(path)
    out = []
    for i in range(0, len(data), batch_size):
        out.append(sess.run(None, {"input": to_input(data.images[i : i + batch_size], data.spec)})[0])
    return np.concatenate(out) if out else np.zeros((0, 8), np.float32)


def parity(torch_logits: np.ndarray, onnx_logits: np.ndarray, *, tol: float = 1e-2) -> dict[str, Any]:
    """Same top class for every image, and the largest logit difference, against a tolerance."""
    if len(torch_logits) == 0:
        return {"passed": False, "n": 0, "reason": "no test images"}
    same = torch_logits.argmax(1) == onnx_logits.argmax(1)
    max_diff = float(np.abs(torch_logits - onnx_logits).max())
    return {
        "passed": bool(same.all() and max_diff <= tol),
        "n": len(same),
        "top1_agreement": float(same.mean()),
        "max_abs_logit_diff": max_diff,
        "tolerance": tol,
    }


def weight_max_abs(path: str | Path) -> int:
    """The largest |q| over the int8 weight initialisers of a quantised model (64 with ``reduce_range``)."""
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(path))
    biggest = 0
    for init in m.graph.initializer:
        if init.data_type == TensorProto.INT8:
            biggest = max(biggest, int(np.abs(numpy_helper.to_array(init).astype(np.int32)).max(initial=0)))
    return biggest


def quantize_int8(fp32_path: str | Path, calib: CachedSet, out_path: str | Path, n_calib: int = 256) -> Path:
    """Static int8 (QDQ, per-channel) after ``quant_pre_process`` - the recipe measured fastest here.

    Weights are quantised to 7 bits (``reduce_range``: -64..64) so that the model gives the same answer
    on every CPU.  With u8 activations and s8 weights, x86 CPUs without VNNI (AVX2, AVX-512 before
    Cascade Lake) multiply with VPMADDUBSW, which adds two u8*s8 products into a *saturating* int16:
    255*127*2 overflows it and the result depends on the CPU (1.3 % of
    PBC test cells changed class on an AVX2 EPYC with 8-bit weights).  255*64*2 = 32,640 fits, so with
    7-bit weights every kernel - AVX2, AVX-512, VNNI, AMX, ARM dot products - computes the same exact
    integer sums.  ``wbcproc.model.int8_report`` checks the bound on the file that is loaded.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            idx = np.linspace(0, len(calib) - 1, min(n_calib, len(calib))).astype(int)
            self.batches = iter([{"input": to_input(calib.images[i : i + 1], calib.spec)} for i in idx])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(pre),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    pre.unlink(missing_ok=True)
    return out_path

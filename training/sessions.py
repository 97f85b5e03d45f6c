"""ONNX Runtime sessions that also return an inner tensor of a deployed model (the pooled features before
the head, the input of the stage that ``wbc adapt`` fine-tunes), with the model's own int8 kernel plan."""

from __future__ import annotations

from pathlib import Path

import onnx

from wbcproc.sidecar import read_sidecar


def session_with_output(model: onnx.ModelProto, extra: str, plan_from: str | Path, threads: int = 0):
    """An ONNX Runtime session of ``model`` that also returns the tensor ``extra``, with the int8 kernel plan
    named by ``plan_from``'s sidecar (``wbcproc.int8``: the same sums on every CPU)."""
    import onnxruntime as ort

    from wbcproc.int8 import plan_for

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.helper.make_tensor_value_info(extra, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    for k, v in plan_for(read_sidecar(plan_from, verify_sha256=False).sidecar.quantization).session_config().items():
        opts.add_session_config_entry(k, v)
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])

"""Load a classifier (ONNX file + sidecar JSON) and run it with ONNX Runtime.

A model is two files: ``<stem>.onnx`` and ``<stem>.json`` beside it (the sidecar, :mod:`wbcproc.sidecar`:
classes in output order, the preprocessing recipe, calibration, the sha256 of the ONNX file).  Which file
to load is :func:`wbcproc.resolve.resolve_model_path`'s answer.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from wbcproc.resolve import resolve_model_path
from wbcproc.sidecar import ModelError, ModelInfo, read_sidecar
from wbcproc.stats import softmax


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Classifier:
    """An ONNX Runtime session plus the sidecar that says how to feed it and read it."""

    def __init__(self, info: ModelInfo, threads: int = 0) -> None:
        import onnxruntime as ort

        from wbcproc.int8 import plan_for

        self.info = info
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads if threads > 0 else default_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # the same classes on every CPU: precise kernels where an 8-bit-weight int8 model could saturate
        self.int8 = plan_for(info.sidecar.quantization)
        for key, value in self.int8.session_config().items():
            opts.add_session_config_entry(key, value)
        try:
            self.session = ort.InferenceSession(
                str(info.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for broken files
            raise ModelError(f"ONNX Runtime could not load {str(info.onnx_path)!r}: {exc}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if info.input_name not in inputs:
            raise ModelError(
                f"model input {info.input_name!r} named in the sidecar is not in the ONNX graph "
                f"(inputs: {sorted(inputs)})"
            )
        out_shape = self.session.get_outputs()[0].shape
        if isinstance(out_shape[-1], int) and out_shape[-1] != len(info.classes):
            raise ModelError(f"model outputs {out_shape[-1]} classes but its sidecar lists {len(info.classes)}")
        self.threads = opts.intra_op_num_threads
        self._parent: Classifier | None = None

    @property
    def routing(self) -> dict | None:
        """A routed laboratory model's rule (``adaptation.routing``, :mod:`wbcproc.routing`); None otherwise."""
        adaptation = self.info.sidecar.adaptation
        return adaptation.get("routing") if adaptation else None

    def parent(self) -> Classifier:
        """The parent that reads the slides a routed laboratory model does not: the file the sidecar names
        beside this one, with the sha256 the sidecar recorded (loaded on first use, then kept)."""
        routing = self.routing
        if routing is None:
            raise ModelError(f"model {self.info.name} {self.info.version} is not routed: it has no parent to use")
        if self._parent is None:
            path = self.info.onnx_path.parent / routing["parent_file"]
            info = read_sidecar(path)
            if info.sha256 != routing["parent_sha256"]:
                raise ModelError(
                    f"{str(path)!r} has sha256 {info.sha256[:16]}..., but the routed model "
                    f"{self.info.version} names its parent {str(routing['parent_sha256'])[:16]}...: refusing it"
                )
            self._parent = Classifier(info, self.threads)
        return self._parent

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.info.input_name: batch})[0]
        if out.ndim != 2 or out.shape[1] != len(self.info.classes):
            raise ModelError(f"model output shape {out.shape} does not match {len(self.info.classes)} classes")
        return out

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.logits(batch) / self.info.temperature)


_CACHE: dict[tuple[str, str, int], Classifier] = {}
_LOCK = threading.Lock()


def load_classifier(path: str | Path | None = None, threads: int = 0) -> Classifier:
    """The process-wide classifier for this model file (one ORT session per process and model)."""
    onnx_path = resolve_model_path(path)
    info = read_sidecar(onnx_path)
    key = (str(onnx_path.resolve()), info.sha256, threads)
    with _LOCK:
        clf = _CACHE.get(key)
        if clf is None:
            clf = _CACHE[key] = Classifier(info, threads)
        return clf

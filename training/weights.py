"""A model's float weights beside its ONNX file: ``<model>.weights.safetensors``, fp16, sha256 in the sidecar.

Why: the file that ships is int8 (``training.export``), and the float network it was quantised from cannot be
recovered from it.  Kept only in the run folder of the machine that trained it, a continued training
(``wbc train --init MODEL --init-head``) or a fine-tune could start from those weights there and nowhere else.
Written beside the ONNX file and listed in the sidecar (:class:`wbcproc.sidecar.FloatWeights`), they travel
with the model through the registry, and any machine starts from the same weights, checked by sha256.

fp16 halves the file (47 MB for a ResNet50) and loses nothing a fine-tune notices: the int8 file that ships
carries 7 bits a weight.  The format is safetensors (no code runs when it is read, unlike a pickled ``.pt``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from wbcproc.sidecar import FloatWeights, ModelInfo, float_weights_path, read_sidecar, sha256_file

SUFFIX = ".weights.safetensors"


def weights_path(onnx_path: str | Path) -> Path:
    """Where a model's float weights are written: ``model.onnx`` -> ``model.weights.safetensors``."""
    return Path(onnx_path).with_suffix(SUFFIX)


def save_float_weights(
    state: dict[str, Any], onnx_path: str | Path, *, architecture: str = "ResNet50", note: str | None = None
) -> FloatWeights:
    """Write ``state`` (a PyTorch state dict) beside ``onnx_path`` as fp16 safetensors, atomically; returns
    the sidecar's ``weights`` block for it.  Integer tensors (BatchNorm's batch counters) keep their type."""
    from safetensors.numpy import save_file

    arrays: dict[str, np.ndarray] = {}
    parameters = 0
    for name, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.half()
            parameters += t.numel()
        arrays[name] = np.ascontiguousarray(t.numpy())
    path = weights_path(onnx_path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(arrays, str(tmp), metadata={"architecture": architecture, "dtype": "float16"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return FloatWeights(
        file=path.name, sha256=sha256_file(path), architecture=architecture, tensors=len(arrays),
        parameters=parameters, note=note,
    )  # fmt: skip


def read_state(path: str | Path) -> dict[str, Any]:
    """A safetensors state dict as PyTorch tensors, the float ones as fp32 (what a network trains in)."""
    from safetensors.torch import load_file

    return {k: t.float() if t.is_floating_point() else t for k, t in load_file(str(path), device="cpu").items()}


def load_float_weights(model: str | Path) -> tuple[dict[str, Any], ModelInfo]:
    """The float state dict (fp32 tensors) of the model at ``model`` (its folder, sidecar or ONNX file), after
    checking its sha256.  Raises :class:`wbcproc.sidecar.ModelError` when it has none or they do not match."""
    info = read_sidecar(model)
    return read_state(float_weights_path(info)), info


def is_model_path(path: Path) -> bool:
    """Whether ``path`` names a model (its folder with ``model.json``, its sidecar or its ONNX file) rather
    than a weights file or a shard folder."""
    if path.is_dir():
        return (path / "model.json").is_file()
    return path.suffix.lower() in (".onnx", ".json") and path.with_suffix(".json").is_file()


FOLDED_NOTE = (
    "the parent's float weights, with the last stage (layer4) and head as the adapted int8 file computes them: "
    "dequantised, BatchNorm folded into each convolution (identity BatchNorm)"
)


def adapted_state(
    parent_state: dict[str, Any], parent_onnx: str | Path, adapted: Any, head: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """The float state dict of a model ``wbc adapt`` made (:mod:`training.adapt`): the parent's float weights
    with the adapted head and, where the fine-tune changed it, the adapted last stage.  That stage was learnt
    from the parent's int8 weights with BatchNorm folded in (``training.adapt_stage``), so it is taken from the
    adapted int8 file, dequantised, into convolutions with a bias; each BatchNorm after it becomes the identity
    plus that bias (mean 0, variance 1 - eps), so the state dict still fits torchvision's ResNet50.
    ``adapted`` (the adapted file's ``onnx.ModelProto``) and ``head`` (its weight, bias): as
    ``training.adapt.load_graph`` has already read them."""
    import onnx
    import torch

    from training.adapt_stage import STAGE, StageError, read_stage

    state = dict(parent_state)
    state["fc.weight"], state["fc.bias"] = (torch.from_numpy(np.asarray(a, np.float32)) for a in head)
    try:
        stage, before = read_stage(adapted), read_stage(onnx.load(str(parent_onnx)))
    except StageError:  # not an int8 graph: only its head can have been adapted
        return state
    same = all(
        np.array_equal(c.w, b[role].w) and np.array_equal(c.b, b[role].b)
        for convs, b in zip(stage.blocks, before.blocks, strict=True)
        for role, c in convs.items()
    )
    if same:  # a head-only draft: the stage is the parent's, whose float weights are the better description
        return state
    for i, convs in enumerate(stage.blocks):
        for role, c in convs.items():
            conv, bn = (
                (f"{STAGE}.{i}.downsample.0", f"{STAGE}.{i}.downsample.1")
                if role == "downsample"
                else (f"{STAGE}.{i}.{role}", f"{STAGE}.{i}.bn{role[-1]}")
            )
            n, eps = len(c.b), 1e-5  # torchvision's BatchNorm2d eps
            state[f"{conv}.weight"] = torch.from_numpy(np.ascontiguousarray(c.w, np.float32))
            state[f"{bn}.weight"], state[f"{bn}.bias"] = torch.ones(n), torch.from_numpy(c.b.astype(np.float32))
            state[f"{bn}.running_mean"], state[f"{bn}.running_var"] = torch.zeros(n), torch.full((n,), 1.0 - eps)
    return state

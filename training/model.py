"""The network: torchvision's ResNet50 (optionally IBN-a), its initialisation, and stage freezing."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from training.recipe import NORMS
from wbcproc.classes import CLASSES

STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


class IBN(nn.Module):
    """Instance norm on part of the channels, batch norm on the rest (Pan et al. 2018, IBN-Net "a").

    Instance norm removes each image's own contrast and colour statistics from the shallow features -
    appearance that differs between laboratories - while the batch-norm half keeps what tells cells apart.
    """

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], 1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], 1)


ARCHITECTURES = {"bn": "ResNet50", "ibn": "ResNet50-IBN-a"}


def _to_ibn(model: nn.Module) -> None:
    for layer in (model.layer1, model.layer2, model.layer3):
        for block in layer:
            block.bn1 = IBN(block.bn1.num_features)


INIT_EXPECTED = (
    "'imagenet', 'scratch', a model (its folder, model.json or model.onnx), a weights file or a shard folder"
)


def _weights_file(path: Path, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict from a model (its folder, sidecar or ONNX file: the float weights listed in its sidecar,
    :mod:`training.weights`), a ``.pt`` or ``.safetensors`` file, or a folder of fp16 shards
    (``weights-index.json``: what a GPU run brings back)."""
    from training.weights import is_model_path, load_float_weights, read_state

    if path.is_dir() and (path / "weights-index.json").is_file():
        from training.shards import load_shards

        return load_shards(path)
    if is_model_path(path):
        state, info = load_float_weights(path)
        if info.classes != CLASSES:
            raise ValueError(f"--init {str(path)!r}: its classes are {list(info.classes)}, expected {list(CLASSES)}")
        record.update(
            model=f"{info.name} {info.version}", model_sha256=info.sha256, weights_sha256=info.sidecar.weights.sha256
        )
        return state
    if not path.is_file():
        raise FileNotFoundError(f"--init {str(path)!r}: expected {INIT_EXPECTED}")
    if path.suffix.lower() == ".safetensors":
        return read_state(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def check_init(init: str) -> None:
    """Refuse an ``--init`` PATH that cannot be loaded before any data is read: missing, or a model without
    (matching) float weights.  Raises ``ValueError`` with the reason."""
    if init in ("imagenet", "scratch"):
        return
    from training.weights import is_model_path
    from wbcproc.sidecar import ModelError, float_weights_path, read_sidecar

    path = Path(init)
    if not path.exists():
        raise ValueError(f"--init {init!r} does not exist; expected {INIT_EXPECTED}")
    if is_model_path(path):
        try:
            float_weights_path(read_sidecar(path))
        except ModelError as exc:
            raise ValueError(f"--init {init!r}: {exc}") from None


def build_model(
    init: str, num_classes: int = len(CLASSES), norm: str = "bn", keep_head: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """ResNet50 (or its IBN-a variant) with an 8-class head.  Returns the model and a record of how it
    was initialised.  ImageNet weights load into the IBN variant's convolutions; its instance-norm halves
    start fresh.

    ``init`` PATH (a file or a shard folder) loads a ResNet50's weights; the head starts fresh unless
    ``keep_head``: a *warm start* that continues a model with these classes (a robustness fine-tune of the
    shipped weights, :mod:`training.wise`), where a fresh head would throw its decisions away."""
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is unknown; expected one of {NORMS}")
    record: dict[str, Any] = {"requested": init, "architecture": ARCHITECTURES[norm]}
    if init == "imagenet":
        try:
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(15)
            try:
                weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
                model = torchvision.models.resnet50(weights=weights)
            finally:
                socket.setdefaulttimeout(previous)
            record.update(used="imagenet", weights="torchvision ResNet50_Weights.IMAGENET1K_V2")
        except Exception as exc:  # offline, proxy, corrupt cache: fall back and say so
            model = torchvision.models.resnet50(weights=None)
            record.update(
                used="scratch", fallback_reason=f"ImageNet weights unavailable: {type(exc).__name__}: {exc}"[:300]
            )
    elif init == "scratch":
        model = torchvision.models.resnet50(weights=None)
        record["used"] = "scratch"
    else:
        path = Path(init)
        model = torchvision.models.resnet50(weights=None)
        state = _weights_file(path, record)
        head = {k[len("fc.") :]: v.float() for k, v in state.items() if k.startswith("fc.")}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if [m for m in missing if not m.startswith("fc.")] or unexpected:
            raise ValueError(
                f"--init {init!r}: not a ResNet50 state dict (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        record.update(used="file", path=str(path))
    if norm == "ibn":
        _to_ibn(model)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if keep_head:
        if record.get("used") != "file":
            raise ValueError(f"keeping the head needs --init PATH, not {init!r}")
        shape = tuple(head["weight"].shape) if "weight" in head else None
        if shape != (num_classes, model.fc.in_features) or "bias" not in head:
            raise ValueError(
                f"--init {init!r}: its head has shape {shape}, expected ({num_classes}, {model.fc.in_features}) "
                f"for the {num_classes} classes; drop --init-head to start a fresh head"
            )
        model.fc.load_state_dict(head)
        record["head"] = "kept (warm start)"
    return model, record


def freeze_stages(model: nn.Module, k: int) -> None:
    """Freeze the first ``k`` of (stem, layer1, layer2, layer3, layer4); BatchNorm there stays in eval."""
    if not 0 <= k <= len(STAGES):
        raise ValueError(f"--freeze-stages {k} is outside 0..{len(STAGES)}")
    for stage in STAGES[:k]:
        for name in stage:
            for p in getattr(model, name).parameters():
                p.requires_grad_(False)


def set_frozen_bn_eval(model: nn.Module, k: int) -> None:
    for stage in STAGES[:k]:
        for name in stage:
            getattr(model, name).eval()

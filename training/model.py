"""The network: torchvision's ResNet50 (optionally IBN-a), its initialisation, and stage freezing."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

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


NORMS = ("bn", "ibn")
ARCHITECTURES = {"bn": "ResNet50", "ibn": "ResNet50-IBN-a"}


def _to_ibn(model: nn.Module) -> None:
    for layer in (model.layer1, model.layer2, model.layer3):
        for block in layer:
            block.bn1 = IBN(block.bn1.num_features)


def build_model(init: str, num_classes: int = len(CLASSES), norm: str = "bn") -> tuple[nn.Module, dict[str, Any]]:
    """ResNet50 (or its IBN-a variant) with an 8-class head.  Returns the model and a record of how it
    was initialised.  ImageNet weights load into the IBN variant's convolutions; its instance-norm halves
    start fresh."""
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
        if not path.is_file():
            raise FileNotFoundError(f"--init {init!r}: expected 'imagenet', 'scratch' or a weights file")
        model = torchvision.models.resnet50(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
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

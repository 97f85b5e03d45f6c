"""The one training recipe: what the shipped model was trained with, the default of every trainer, the run
settings (:class:`TrainConfig`) and the augmentation presets.

``wbc train``, ``python -m training.scripts.gpu_train`` and the ``retrain`` flow's full-training mode all take
their defaults from :data:`SHIPPED` (before, each had its own: the weekly retrain ran 30 epochs of
ImageNet-initialised, robust-augmented training that fell back to scratch - a different recipe from the
shipped model's, whose challenger could not win).  Standard library only: the device script imports it.

A run given fewer epochs or a time budget follows the same recipe for less long; the figures in
``models/card.md`` say how long the shipped model trained (``time_budget_s`` on one H100).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

SHIPPED = MappingProxyType(
    {
        "augment": "basic",  # rotations/flips, scale, colour/hue jitter, blur: the best everywhere (card)
        "norm": "bn",
        "init": "scratch",  # no ImageNet weights can be downloaded where it was trained
        "epochs": 160,
        "patience": 40,
        "batch_size": 256,
        "lr": 2e-3,
        "weight_decay": 0.05,
        "label_smoothing": 0.1,
        "optimizer": "adamw",
        "seed": 0,
        "image_size": 128,
        "cache_quality": 85,
    }
)


DEVICES = ("auto", "cpu", "cuda")  # auto: cuda when PyTorch sees a GPU
OPTIMIZERS = ("adamw", "sgd")
NORMS = ("bn", "ibn")  # ibn: ResNet50-IBN-a, half of the first norm in layer1-3 blocks is instance norm


@dataclass
class TrainConfig:
    """One training run's settings; the defaults are the shipped model's recipe (:data:`SHIPPED`)."""

    epochs: int = SHIPPED["epochs"]
    batch_size: int = SHIPPED["batch_size"]
    lr: float = SHIPPED["lr"]
    weight_decay: float = SHIPPED["weight_decay"]
    optimizer: str = SHIPPED["optimizer"]  # adamw | sgd
    warmup_epochs: float = 1.0
    label_smoothing: float = SHIPPED["label_smoothing"]
    freeze_stages: int = 0
    init: str = SHIPPED["init"]  # imagenet | scratch | PATH (a weights file or a shard folder)
    init_head: bool = False  # with init PATH: keep its head too (a warm start; training.wise)
    device: str = "auto"
    seed: int = SHIPPED["seed"]
    patience: int = SHIPPED["patience"]
    amp: bool = True
    channels_last: bool = True
    class_weighting: str = "loss"  # loss | none
    # augmentation strengths
    rotate: bool = True
    scale_jitter: float = 0.15
    colour_jitter: float = 0.15
    hue_jitter: float = 0.05
    blur_prob: float = 0.1
    # cross-laboratory robustness; 0 switches each off
    channel_gain: float = 0.0  # per-channel gain +-: residual white-balance error
    stain_jitter: float = 0.0  # per-channel optical-density scale +-: stain intensity and hue
    gamma_jitter: float = 0.0  # log-uniform gamma in [1/(1+g), 1+g]: camera response
    lowres_prob: float = 0.0  # down- and up-sample by 1.5-3.5x: lower-resolution cameras and crops
    noise_prob: float = 0.0  # additive Gaussian noise up to 0.03: sensor noise
    stain_mix: float = 0.0  # random 3x3 mixing of optical densities, entries +-: other stains' colours
    grey_prob: float = 0.0  # share of images turned grey: shape and texture, not hue, must carry the class
    stain_prob: float = 1.0  # share of images given the stain changes above; the rest keep the lab's colours
    norm: str = "bn"  # bn | ibn (IBN-a: half of the first norm in layer1-3 blocks is instance norm)
    time_budget_s: float = 0.0  # > 0: fewer epochs if they would not fit (schedule adapted after epochs 1 and 2)

    def __post_init__(self) -> None:
        # here, not only in training.model.build_model, so every trainer refuses it before reading any data
        for key, allowed in (("device", DEVICES), ("optimizer", OPTIMIZERS), ("norm", NORMS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} {getattr(self, key)!r} is unknown; expected one of {allowed}")
        if self.init_head and self.init in ("imagenet", "scratch"):
            raise ValueError(f"--init-head keeps the head of --init PATH; --init {self.init!r} has none to keep")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ROBUST_AUGMENTATION: dict[str, float] = {
    "scale_jitter": 0.2,
    "colour_jitter": 0.25,
    "hue_jitter": 0.06,
    "blur_prob": 0.25,
    "channel_gain": 0.08,
    "stain_jitter": 0.3,
    "gamma_jitter": 0.3,
    "lowres_prob": 0.3,
    "noise_prob": 0.3,
}


# robust, plus other stains: a wider hue turn, random stain-colour mixing and some grey images
STAIN_AUGMENTATION: dict[str, float] = {
    **ROBUST_AUGMENTATION,
    "colour_jitter": 0.3,
    "hue_jitter": 0.12,
    "channel_gain": 0.12,
    "stain_jitter": 0.4,
    "stain_mix": 0.15,
    "grey_prob": 0.15,
}

# stain, on half the images: the other half keep the training laboratory's colours (basic colour and hue
# jitter), so the in-domain colour cues the stain preset blurs are still learnt
MIXED_AUGMENTATION: dict[str, float] = {
    **STAIN_AUGMENTATION,
    "colour_jitter": 0.15,
    "hue_jitter": 0.05,
    "stain_prob": 0.5,
}

AUGMENTATIONS = ("robust", "basic", "stain", "mixed")


def augmentation(name: str) -> dict[str, float]:
    """TrainConfig overrides of an augmentation preset: ``robust`` (other labs' stains and cameras),
    ``stain`` (robust plus other stains' colours), ``mixed`` (stain on half the images, basic colours on the
    other half) or ``basic`` (the TrainConfig defaults)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation {name!r} is unknown; expected one of {AUGMENTATIONS}")
    presets = {"robust": ROBUST_AUGMENTATION, "stain": STAIN_AUGMENTATION, "mixed": MIXED_AUGMENTATION, "basic": {}}
    return dict(presets[name])

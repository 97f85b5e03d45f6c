"""PyTorch side: the ResNet50, GPU-friendly batch augmentation, the training loop, prediction."""

from __future__ import annotations

import math
import random
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.dataset import CachedSet
from training.metrics import classification_metrics
from training.recipe import SHIPPED as RECIPE
from wbcproc.classes import CLASSES

STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


@dataclass
class TrainConfig:
    """One training run's settings; the defaults are the shipped model's recipe (``training.recipe``)."""

    epochs: int = RECIPE["epochs"]
    batch_size: int = RECIPE["batch_size"]
    lr: float = RECIPE["lr"]
    weight_decay: float = RECIPE["weight_decay"]
    optimizer: str = RECIPE["optimizer"]  # adamw | sgd
    warmup_epochs: float = 1.0
    label_smoothing: float = RECIPE["label_smoothing"]
    freeze_stages: int = 0
    init: str = RECIPE["init"]  # imagenet | scratch | PATH
    device: str = "auto"
    seed: int = RECIPE["seed"]
    patience: int = RECIPE["patience"]
    amp: bool = True
    channels_last: bool = True
    class_weighting: str = "loss"  # loss | none
    # augmentation strengths
    rotate: bool = True
    scale_jitter: float = 0.15
    colour_jitter: float = 0.15
    hue_jitter: float = 0.05
    blur_prob: float = 0.1
    # cross-laboratory robustness (issue: other labs); 0 switches each off
    channel_gain: float = 0.0  # per-channel gain +-: residual white-balance error
    stain_jitter: float = 0.0  # per-channel optical-density scale +-: stain intensity and hue
    gamma_jitter: float = 0.0  # log-uniform gamma in [1/(1+g), 1+g]: camera response
    lowres_prob: float = 0.0  # down- and up-sample by 1.5-3.5x: lower-resolution cameras and crops
    noise_prob: float = 0.0  # additive Gaussian noise up to 0.03: sensor noise
    stain_mix: float = 0.0  # random 3x3 mixing of optical densities, entries +-: other stains' colours
    grey_prob: float = 0.0  # share of images turned grey: shape and texture, not hue, must carry the class
    norm: str = "bn"  # bn | ibn (IBN-a: half of the first norm in layer1-3 blocks is instance norm)
    time_budget_s: float = 0.0  # > 0: fewer epochs if they would not fit (schedule adapted after epochs 1 and 2)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


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


def _set_frozen_bn_eval(model: nn.Module, k: int) -> None:
    for stage in STAGES[:k]:
        for name in stage:
            getattr(model, name).eval()


def _to_od(x: torch.Tensor) -> torch.Tensor:
    """Optical density (Beer-Lambert) of images in [0, 1], 1/255 the darkest."""
    return -torch.log(x.clamp(1 / 255, 1))


def _from_od(od: torch.Tensor) -> torch.Tensor:
    return torch.exp(-od.clamp(min=0))


def _rotate_scale_flip(x: torch.Tensor, cfg: TrainConfig, rnd) -> torch.Tensor:
    n = x.shape[0]
    theta = rnd(n) * 2 * math.pi
    scale = 1.0 + (rnd(n) * 2 - 1) * cfg.scale_jitter
    flip = torch.where(rnd(n) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    mat = torch.stack(
        [
            torch.stack([cos * flip, -sin, torch.zeros_like(cos)], 1),
            torch.stack([sin * flip, cos, torch.zeros_like(cos)], 1),
        ],
        1,
    )
    border = x[:, :, :2, :].mean(dim=(2, 3), keepdim=True)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x - border, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + border


def _colour_jitter(x: torch.Tensor, cj: float, rnd) -> torch.Tensor:
    n = x.shape[0]
    b = 1.0 + (rnd(n, 1, 1, 1) * 2 - 1) * cj
    c = 1.0 + (rnd(n, 1, 1, 1) * 2 - 1) * cj
    s = 1.0 + (rnd(n, 1, 1, 1) * 2 - 1) * cj
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    x = x * b
    grey = x.mean(dim=1, keepdim=True)
    return (x - grey) * s + grey


def _hue_rotate(x: torch.Tensor, hue_jitter: float, rnd) -> torch.Tensor:
    """A small rotation of the chroma plane around the grey axis approximates a hue shift."""
    angle = (rnd(x.shape[0]) * 2 - 1) * hue_jitter * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    k = 1.0 / 3.0
    sq = math.sqrt(1.0 / 3.0)
    rows = []
    for i in range(3):
        row = []
        for j in range(3):
            cross = 0.0 if i == j else (sq if (j - i) % 3 == 1 else -sq)
            row.append(cos * (1.0 if i == j else 0.0) + (1 - cos) * k + sin * cross)
        rows.append(torch.stack(row, 1))
    return torch.einsum("nij,njhw->nihw", torch.stack(rows, 1), x)


def _stain(x: torch.Tensor, cfg: TrainConfig, rnd) -> torch.Tensor:
    """Channel gains, stain mixing, greyscale, stain amount (Beer-Lambert), gamma - in this order."""
    n, dev = x.shape[0], x.device
    if cfg.channel_gain > 0:
        x = x * (1.0 + (rnd(n, 3, 1, 1) * 2 - 1) * cfg.channel_gain)
    if cfg.stain_mix > 0:
        # another stain's colours: each optical-density channel becomes a random mix of the three
        mix = torch.eye(3, device=dev) + (rnd(n, 3, 3) * 2 - 1) * cfg.stain_mix
        x = _from_od(torch.einsum("nij,njhw->nihw", mix, _to_od(x)))
    if cfg.grey_prob > 0:
        grey = (rnd(n, 1, 1, 1) < cfg.grey_prob).float()
        x = x * (1 - grey) + x.mean(dim=1, keepdim=True) * grey
    if cfg.stain_jitter > 0:
        # Beer-Lambert: stain amount scales optical density; per-channel scales shift hue and intensity
        od = _to_od(x) * (1.0 + (rnd(n, 3, 1, 1) * 2 - 1) * cfg.stain_jitter) + (rnd(n, 3, 1, 1) * 2 - 1) * 0.03
        x = _from_od(od)
    if cfg.gamma_jitter > 0:
        g = torch.exp((rnd(n, 1, 1, 1) * 2 - 1) * math.log1p(cfg.gamma_jitter))
        x = x.clamp(1e-4, 1) ** g
    return x


def _degrade(x: torch.Tensor, cfg: TrainConfig, rnd, gen: torch.Generator) -> torch.Tensor:
    """Lower resolution, blur, noise - in this order."""
    n, dev = x.shape[0], x.device
    if cfg.lowres_prob > 0:
        low = (rnd(n, 1, 1, 1) < cfg.lowres_prob).to(x.dtype)
        size = x.shape[-1]
        small = max(8, int(size / (1.5 + 2.0 * random.random())))  # one factor a batch, from the host
        xl = F.interpolate(
            F.interpolate(x, size=(small, small), mode="area"), size=(size, size), mode="bilinear", align_corners=False
        )
        x = x * (1 - low) + xl * low
    if cfg.blur_prob > 0:
        blur = (rnd(n, 1, 1, 1) < cfg.blur_prob).to(x.dtype)
        kernel = torch.tensor([1.0, 2.0, 1.0], device=dev)
        kernel = (kernel[:, None] * kernel[None, :]) / 16
        kernel = kernel.expand(x.shape[1], 1, 3, 3).to(x.dtype)
        xb = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        x = x * (1 - blur) + xb * blur
    if cfg.noise_prob > 0:
        noisy = (rnd(n, 1, 1, 1) < cfg.noise_prob).float() * rnd(n, 1, 1, 1) * 0.03
        x = x + torch.randn(x.shape, generator=gen, device=gen.device).to(dev) * noisy
    return x


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Batch augmentation on float images in [0, 1], NCHW, on whatever device they are.

    A cell has no orientation: any rotation and flips.  Scale jitter covers magnification differences;
    brightness/contrast/saturation/hue jitter and an occasional blur cover stain and camera differences.
    The background outside the rotated frame is filled with the image's own border colour.

    Nothing here waits for the device: random numbers come from ``gen`` (best a generator on the batch's
    device) and per-image choices are blends, not masks - each host-device synchronisation stalled a
    shared GPU (the robust preset ran at a third of the basic one's speed before).
    """
    dev = x.device

    def rnd(*shape):
        return torch.rand(*shape, generator=gen, device=gen.device).to(dev)

    if cfg.rotate:
        x = _rotate_scale_flip(x, cfg, rnd)
    if cfg.colour_jitter > 0:
        x = _colour_jitter(x, cfg.colour_jitter, rnd)
    if cfg.hue_jitter > 0:
        x = _hue_rotate(x, cfg.hue_jitter, rnd)
    x = _stain(x, cfg, rnd)
    return _degrade(x, cfg, rnd, gen).clamp(0, 1)


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

AUGMENTATIONS = ("robust", "basic", "stain")


def augmentation(name: str) -> dict[str, float]:
    """TrainConfig overrides of an augmentation preset: ``robust`` (other labs' stains and cameras),
    ``stain`` (robust plus other stains' colours) or ``basic`` (the TrainConfig defaults)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation {name!r} is unknown; expected one of {AUGMENTATIONS}")
    return {"robust": dict(ROBUST_AUGMENTATION), "stain": dict(STAIN_AUGMENTATION), "basic": {}}[name]


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict_logits(model: nn.Module, data: CachedSet, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Logits for a cached set, preprocessed exactly as ``wbcproc.preprocess.to_input`` does."""
    model.eval()
    mean = torch.tensor(data.spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(data.spec.std, device=device).view(1, 3, 1, 1)
    scale = float(data.spec.scale)
    out = []
    for i in range(0, len(data), batch_size):
        xb = torch.from_numpy(data.images[i : i + batch_size]).to(device)
        x = xb.permute(0, 3, 1, 2).float() / scale
        x = _normalise(x, mean, std)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


def class_weights(labels: np.ndarray, k: int = len(CLASSES)) -> np.ndarray:
    counts = np.bincount(labels, minlength=k).astype(float)
    w = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
    return w


def _optimiser(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer {cfg.optimizer!r} is unknown; expected 'adamw' or 'sgd'")


def _warmup_cosine(opt: torch.optim.Optimizer, warm: int, plan: dict[str, int]) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine to zero at ``plan["total"]`` steps (read at each step: a time budget
    may shorten the plan after the first epochs)."""

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, plan["total"] - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)


@dataclass
class _Loop:
    """What one training epoch needs, fixed for the whole run."""

    model: nn.Module
    cfg: TrainConfig
    device: torch.device
    criterion: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    gen: torch.Generator  # the order of images
    aug_gen: torch.Generator  # augmentation, drawn where the batch is

    def epoch(self, n: int) -> tuple[float, int, float]:
        """One pass over the training set: (summed loss, images seen, seconds)."""
        cfg, device = self.cfg, self.device
        use_cuda = device.type == "cuda"
        amp = cfg.amp and use_cuda
        self.model.train()
        _set_frozen_bn_eval(self.model, cfg.freeze_stages)
        perm = torch.randperm(n, generator=self.gen)
        if use_cuda:
            perm = perm.to(device)
        running, seen, t0 = torch.zeros((), device=device), 0, time.perf_counter()
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            x = to_float(self.images[idx].to(device, non_blocking=True))
            y = self.labels[idx].to(device, non_blocking=True)
            x = _normalise(augment(x, cfg, self.aug_gen), self.mean, self.std)
            if use_cuda and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss = self.criterion(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            running += loss.detach().float() * len(idx)  # summed on the device: no wait per step
            seen += len(idx)
        loss_sum = float(running)  # waits for the epoch's last step, so the time below is true
        return loss_sum, seen, time.perf_counter() - t0


def _replan(cfg: TrainConfig, epoch: int, clock: dict[str, float], plan: dict[str, int], log) -> None:
    """Epochs that fit ``cfg.time_budget_s``: planned after epoch 1 from its time, then again after epoch 2
    from the second epoch alone (the first carries start-up costs - cuDNN autotuning, caches - and
    under-counts what fits)."""
    now = time.perf_counter()
    if epoch == 0:
        per_epoch, done_s = now - clock["start"], now - clock["start"]
        clock["first"] = now
    else:
        per_epoch, done_s = now - clock["first"], now - clock["start"]
    fit = max(2, epoch + 1 + int((cfg.time_budget_s - done_s) // max(per_epoch, 1e-6)))
    fit = min(fit, cfg.epochs)
    if fit != plan["epochs"]:
        log(f"time budget {cfg.time_budget_s:.0f} s at {per_epoch:.1f} s/epoch: {fit} epochs, not {cfg.epochs}")
        plan.update(epochs=fit, total=plan["steps_per_epoch"] * fit)


def _setup(train: CachedSet, cfg: TrainConfig) -> tuple[_Loop, dict[str, Any], dict[str, int], np.ndarray]:
    """Model, loss, optimiser, schedule and data on the device: the loop, the init record, the plan (epochs,
    steps) and the class weights."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    model, init_record = build_model(cfg.init, norm=cfg.norm)
    freeze_stages(model, cfg.freeze_stages)
    model.to(device)
    use_cuda = device.type == "cuda"
    if use_cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weights = class_weights(train.labels) if cfg.class_weighting == "loss" else np.ones(len(CLASSES))
    criterion = nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=device), label_smoothing=cfg.label_smoothing
    )
    opt = _optimiser([p for p in model.parameters() if p.requires_grad], cfg)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    plan = {"epochs": cfg.epochs, "total": steps_per_epoch * cfg.epochs, "steps_per_epoch": steps_per_epoch}
    sched = _warmup_cosine(opt, max(1, int(cfg.warmup_epochs * steps_per_epoch)), plan)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    if use_cuda:
        images, labels = images.to(device), labels.to(device)
    mean = torch.tensor(train.spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(train.spec.std, device=device).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    loop = _Loop(model, cfg, device, criterion, opt, sched, images, labels, mean, std, gen, aug_gen)
    return loop, init_record, plan, weights


def _validate(model: nn.Module, val: CachedSet, device: torch.device) -> dict[str, Any]:
    if not len(val):
        return {"macro_f1": 0.0, "accuracy": 0.0}
    return classification_metrics(val.labels, predict_logits(model, val, device).argmax(1), CLASSES)


def train_model(train: CachedSet, val: CachedSet, cfg: TrainConfig, log=print) -> tuple[nn.Module, dict[str, Any]]:
    """Train with early stopping on validation macro-F1; returns the best model and the history."""
    loop, init_record, plan, weights = _setup(train, cfg)
    model, device = loop.model, loop.device
    history: list[dict[str, Any]] = []
    best_f1, best_state, best_epoch, bad = -1.0, None, -1, 0
    t_start = time.perf_counter()
    clock = {"start": t_start, "first": t_start}
    epoch = 0
    while epoch < plan["epochs"]:
        loss_sum, seen, dt = loop.epoch(len(train))
        val_metrics = _validate(model, val, device)
        rec = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(1, seen),
            "val_accuracy": val_metrics["accuracy"],
            "val_macro_f1": val_metrics["macro_f1"],
            "images_per_s": seen / dt if dt > 0 else 0.0,
            "lr": loop.sched.get_last_lr()[0],
        }
        history.append(rec)
        if cfg.time_budget_s > 0 and epoch in (0, 1):
            _replan(cfg, epoch, clock, plan, log)
        log(
            f"epoch {epoch + 1}/{plan['epochs']}: loss {rec['loss']:.4f} val acc {rec['val_accuracy']:.4f} "
            f"macro-F1 {rec['val_macro_f1']:.4f} ({rec['images_per_s']:.0f} img/s)"
        )
        if rec["val_macro_f1"] > best_f1:
            best_f1, best_epoch, bad = rec["val_macro_f1"], epoch + 1, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                log(f"early stop: no validation macro-F1 gain for {cfg.patience} epochs")
                break
        epoch += 1
    if best_state is not None:
        model.load_state_dict(best_state)
    info = {
        "history": history,
        "best_epoch": best_epoch,
        "epochs_planned": plan["epochs"],
        "best_val_macro_f1": best_f1,
        "init": init_record,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "class_weights": dict(zip(CLASSES, [round(float(w), 4) for w in weights], strict=True)),
        "train_seconds": time.perf_counter() - t_start,
        "config": cfg.as_dict(),
    }
    return model.to("cpu").float().to(memory_format=torch.contiguous_format), info

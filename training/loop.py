"""The training loop and prediction: seeding, device choice, optimiser and schedule, early stopping."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from training.augment import augment, to_float
from training.dataset import CachedSet
from training.metrics import classification_metrics
from training.model import build_model, freeze_stages, set_frozen_bn_eval
from training.recipe import TrainConfig
from wbcproc.classes import CLASSES


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


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std


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
        set_frozen_bn_eval(self.model, cfg.freeze_stages)
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
    model, init_record = build_model(cfg.init, norm=cfg.norm, keep_head=cfg.init_head)
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


def score(model: nn.Module, data: CachedSet, device: torch.device) -> dict[str, Any]:
    """``training.metrics.classification_metrics`` of the model's calls on a cached set."""
    return classification_metrics(data.labels, predict_logits(model, data, device).argmax(1), CLASSES)


def _validate(model: nn.Module, val: CachedSet, device: torch.device) -> dict[str, Any]:
    if not len(val):
        return {"macro_f1": 0.0, "accuracy": 0.0}
    return score(model, val, device)


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

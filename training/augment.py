"""Batch augmentation on the training device: rotations/flips, scale, colour, stain and camera changes.

The strengths are :class:`training.recipe.TrainConfig` fields; the named presets are in
:mod:`training.recipe`.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from training.recipe import TrainConfig


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
    if cfg.stain_prob >= 1.0:
        x = _stain(x, cfg, rnd)
    else:  # a blend, not a mask: no host-device wait
        keep = (rnd(x.shape[0], 1, 1, 1) >= cfg.stain_prob).to(x.dtype)
        x = _stain(x, cfg, rnd) * (1 - keep) + x * keep
    return _degrade(x, cfg, rnd, gen).clamp(0, 1)


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(255.0)

"""Images/s of one training step (augment + forward + backward + AdamW) of the project's ResNet50.

    python benchmarks/train_throughput.py [--sizes 128 224] [--batch 128] [--steps 20] [--device auto]

Uses the same ``training.loop`` / ``training.augment`` / ``training.model`` pieces as ``wbc train`` (augmentation on the device, bf16 autocast and
channels_last on CUDA).  Prints the median over the timed steps after warm-up, and the device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine


def main() -> None:
    import torch
    from torch import nn

    from training.augment import augment
    from training.loop import pick_device
    from training.model import build_model
    from training.recipe import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = pick_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"machine: {machine()}\ndevice: {name}; torch {torch.__version__}")
    cfg = TrainConfig()
    for size in args.sizes:
        model, _ = build_model("scratch")
        model.to(dev).train()
        cuda = dev.type == "cuda"
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        x8 = torch.randint(0, 255, (args.batch, 3, size, size), dtype=torch.uint8, device=dev)
        y = torch.randint(0, 8, (args.batch,), device=dev)
        gen = torch.Generator().manual_seed(0)
        times = []
        for step in range(args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x = augment(x8.float() / 255, cfg, gen)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(
            f"{size} px, batch {args.batch}: {args.batch / med:.1f} images/s (median step {med * 1000:.0f} ms, {len(times)} steps)"
        )


if __name__ == "__main__":
    main()

"""Model weights as fp16 shards of bounded size: how trained weights travel back from a GPU machine whose
transfer limit (16 MiB a file) is smaller than a ResNet50 (94 MB in fp32, 47 MB in fp16)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

MAX_SHARD_BYTES = 15 * 1024 * 1024


def save_shards(state: dict[str, torch.Tensor], folder: str | Path, max_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        t = t.detach().cpu()
        t = t.half() if t.is_floating_point() else t
        n = t.numel() * t.element_size()
        if size and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += n
    paths = []
    for i, shard in enumerate(shards):
        p = folder / f"weights-{i:03d}.pt"
        torch.save(shard, p)
        paths.append(p)
    (folder / "weights-index.json").write_text(json.dumps({"shards": [p.name for p in paths], "dtype": "float16"}))
    return paths


def load_shards(folder: str | Path) -> dict[str, torch.Tensor]:
    folder = Path(folder)
    index = json.loads((folder / "weights-index.json").read_text())
    state: dict[str, torch.Tensor] = {}
    for name in index["shards"]:
        for k, t in torch.load(folder / name, map_location="cpu", weights_only=True).items():
            state[k] = t.float() if t.is_floating_point() else t
    return state

"""Weight-space ensembling of a model and its robustness fine-tune (WiSE-FT, Wortsman et al. 2022).

Why: fine-tuning the shipped weights with stain augmentation (``--augment mixed``, a warm start:
``--init <shards> --init-head``) makes the model better on other laboratories' colours but costs some
in-domain accuracy.  Because the fine-tune starts from the shipped weights, both sit in one basin of the
loss, and the straight line between them keeps most of the robustness for a fraction of the in-domain
cost (measured in docs/training.md).  ``alpha`` 0 is the parent, 1 the fine-tune.

The choice of ``alpha`` is made on the training laboratory's *validation* cells only (never on the test
split or on an unseen laboratory): :func:`choose_alpha` takes the largest mixing weight whose validation
macro-F1 stays within ``tolerance`` of the parent's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


def interpolate(
    parent: Mapping[str, torch.Tensor], child: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * parent + alpha * child`` for every floating tensor (weights and BatchNorm running
    statistics); integer buffers (``num_batches_tracked``) are the child's."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha} is outside 0..1 (0: the parent, 1: the fine-tune)")
    if set(parent) != set(child):
        only_p, only_c = sorted(set(parent) - set(child)), sorted(set(child) - set(parent))
        raise ValueError(f"the two state dicts differ: only in the parent {only_p[:5]}, only in the child {only_c[:5]}")
    out: dict[str, torch.Tensor] = {}
    for k, p in parent.items():
        c = child[k]
        if p.shape != c.shape:
            raise ValueError(f"{k}: shape {tuple(p.shape)} in the parent, {tuple(c.shape)} in the child")
        out[k] = (1.0 - alpha) * p.float() + alpha * c.float() if p.is_floating_point() else c.clone()
    return out


@dataclass(frozen=True)
class Scored:
    """One mixing weight and its validation macro-F1 (training laboratory)."""

    alpha: float
    val_macro_f1: float


def choose_alpha(parent_val_macro_f1: float, scored: list[Scored], tolerance: float = 0.0) -> float | None:
    """The largest ``alpha`` > 0 whose validation macro-F1 is at least the parent's minus ``tolerance``;
    None when none is (the fine-tune costs in-domain accuracy at every mixing weight tried)."""
    if tolerance < 0:
        raise ValueError(f"tolerance {tolerance} must be >= 0")
    ok = [s.alpha for s in scored if s.alpha > 0 and s.val_macro_f1 >= parent_val_macro_f1 - tolerance]
    return max(ok) if ok else None

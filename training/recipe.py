"""The one training recipe: what the shipped model was trained with, and the default of every trainer.

``wbc train``, ``python -m training.gpu_train`` and the ``retrain`` flow's full-training mode all take
their defaults from :data:`SHIPPED` (before, each had its own: the weekly retrain ran 30 epochs of
ImageNet-initialised, robust-augmented training that fell back to scratch - a different recipe from the
shipped model's, whose challenger could not win).  Standard library only: the device script imports it.

A run given fewer epochs or a time budget follows the same recipe for less long; the figures in
``models/card.md`` say how long the shipped model trained (``time_budget_s`` on one H100).
"""

from __future__ import annotations

from types import MappingProxyType

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

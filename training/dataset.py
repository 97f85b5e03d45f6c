"""The in-memory labelled set at training resolution (numpy only: importable where OpenCV is not)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class CachedSet:
    images: np.ndarray  # uint8 N x S x S x 3, in the spec's colour order
    labels: np.ndarray  # int64 indices into CLASSES
    splits: np.ndarray  # str
    sha256: np.ndarray  # str
    files: np.ndarray  # str
    spec: Any  # wbcproc.preprocess.PreprocessSpec, or any object with mean/std/scale/colour_order

    def subset(self, split: str) -> CachedSet:
        return self.where(self.splits == split)

    def where(self, mask: np.ndarray) -> CachedSet:
        """The items where ``mask`` (boolean, one per item) is true."""
        return CachedSet(
            self.images[mask], self.labels[mask], self.splits[mask], self.sha256[mask], self.files[mask], self.spec
        )

    def __len__(self) -> int:
        return len(self.labels)

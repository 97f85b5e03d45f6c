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
        m = self.splits == split
        return CachedSet(self.images[m], self.labels[m], self.splits[m], self.sha256[m], self.files[m], self.spec)

    def __len__(self) -> int:
        return len(self.labels)

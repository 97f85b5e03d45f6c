"""The in-memory labelled set at training resolution, and the one loader of the packed cache.

Importable where OpenCV is not (the bare GPU machine has torch, torchvision and numpy only): the cache's
JPEGs are decoded by OpenCV where it is installed and by Pillow (torchvision's own dependency) where not.
The cache is written by :func:`training.cache.build_cache`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from wbcproc.classes import CLASSES

DECODERS = ("auto", "opencv", "pillow")


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


def jpeg_decoder(name: str):
    """bytes -> the cache's image array (``name``: auto, opencv or pillow): the one decoder of packed cells."""
    if name not in DECODERS:
        raise ValueError(f"decoder {name!r} is unknown; expected one of {DECODERS}")
    if name in ("auto", "opencv"):
        try:
            import cv2

            return lambda b: cv2.imdecode(b, cv2.IMREAD_COLOR)
        except ImportError:
            if name == "opencv":
                raise
    from PIL import Image

    def pillow(b: np.ndarray) -> np.ndarray:
        with Image.open(io.BytesIO(b.tobytes())) as im:
            # OpenCV wrote the spec-ordered array as if it were BGR; Pillow decodes to RGB: reverse back
            return np.asarray(im.convert("RGB"))[:, :, ::-1]

    return pillow


def _spec(d: dict[str, Any]) -> Any:
    """The cache's PreprocessSpec; where wbcproc's OpenCV code cannot load, the fields training reads."""
    try:
        from wbcproc.preprocess import PreprocessSpec
    except ImportError:
        return SimpleNamespace(**{k: d[k] for k in ("input_size", "mean", "std", "scale", "colour_order")})
    return PreprocessSpec.from_dict(d)


def named_cache(spec: str) -> tuple[str, CachedSet]:
    """``NAME=PATH`` (a packed evaluation set, ``training.scripts.evalpack``) -> its name and cells."""
    name, sep, path = spec.partition("=")
    if not sep:
        raise ValueError(f"evaluation set {spec!r}: expected NAME=PATH")
    return name, load_cache(path)


def load_cache(path: str | Path, decoder: str = "auto") -> CachedSet:
    """A packed cache as a :class:`CachedSet` (``decoder``: auto, opencv or pillow)."""
    decode = jpeg_decoder(decoder)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta["classes"] != list(CLASSES):
            raise ValueError(f"cache {str(path)!r} has classes {meta['classes']}; expected {list(CLASSES)}")
        jpeg, offsets = z["jpeg"], z["offsets"]
        n, s = len(offsets) - 1, int(meta["spec"]["input_size"])
        images = np.empty((n, s, s, 3), np.uint8)
        for i in range(n):
            images[i] = decode(jpeg[offsets[i] : offsets[i + 1]])
        return CachedSet(images, z["labels"], z["splits"], z["sha256"], z["files"], _spec(meta["spec"]))

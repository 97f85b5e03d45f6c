"""A compact preprocessed cache of a labelled set at training resolution.

Each image goes through ``wbcproc.imageio.read_image`` and ``wbcproc.preprocess.prepare_image`` - the
exact code inference uses - and is stored JPEG-encoded (``wbc train`` uses the recipe's quality, 85) at
the model's input size.  One ``.npz`` holds the bytes, offsets, labels, splits and hashes: 12,000 cells at
128 px are ~46 MB, small enough to carry to a GPU machine, and an epoch reads no source images.  It is read
back by :func:`training.dataset.load_cache`.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from training.data import Gathered, Item
from wbcproc.classes import CLASSES
from wbcproc.config import load_settings
from wbcproc.discovery import Rejected, check_image_header
from wbcproc.imageio import ImageRejected, read_image
from wbcproc.preprocess import PreprocessSpec, prepare_image

JPEG_QUALITY = 90


def build_cache(
    gathered: Gathered, spec: PreprocessSpec, path: str | Path, quality: int = JPEG_QUALITY
) -> tuple[Path, list[tuple[str, str]]]:
    """Write the cache; returns its path and the items that failed to decode (path, reason)."""
    path = Path(path)
    blobs: list[bytes] = []
    kept: list[Item] = []
    failed: list[tuple[str, str]] = []
    settings = load_settings(None)  # the runtime's header checks (pixel limit, size, format) apply here too
    for it in gathered.items:
        try:
            head = check_image_header(it.path, str(it.path), settings)
            if isinstance(head, Rejected):
                failed.append((str(it.path), head.reason))
                continue
            decoded = read_image(it.path)
        except ImageRejected as exc:
            failed.append((str(it.path), exc.reason))
            continue
        prepared = prepare_image(decoded.bgr, spec, framed=it.framed)
        ok, buf = cv2.imencode(".jpg", prepared, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            failed.append((str(it.path), "could not be re-encoded"))
            continue
        blobs.append(buf.tobytes())
        kept.append(it)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        jpeg=np.frombuffer(b"".join(blobs), dtype=np.uint8),
        offsets=offsets,
        labels=np.array([CLASSES.index(it.label) for it in kept], np.int64),
        splits=np.array([it.split for it in kept]),
        sha256=np.array([it.sha256 for it in kept]),
        files=np.array([str(it.path) for it in kept]),
        meta=np.array(json.dumps({"spec": spec.to_dict(), "classes": list(CLASSES), "quality": quality})),
    )
    tmp.replace(path)
    return path, failed

"""Confusion-matrix and misclassified-cell PNGs drawn with OpenCV (no plotting dependency)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def confusion_png(cm: list[list[int]] | np.ndarray, classes: list[str], path: str | Path) -> Path:
    cm = np.asarray(cm)
    k = len(classes)
    cell, left, top = 64, 130, 130
    img = np.full((top + k * cell + 20, left + k * cell + 20, 3), 255, np.uint8)
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    frac = cm / rows
    for i in range(k):
        for j in range(k):
            shade = int(255 - 200 * frac[i, j])
            x0, y0 = left + j * cell, top + i * cell
            colour = (255, shade, shade) if i != j else (shade, 255, shade)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), colour, -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (180, 180, 180), 1)
            cv2.putText(img, str(int(cm[i, j])), (x0 + 8, y0 + 38), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, classes[i][:12], (5, top + i * cell + 38), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for j in range(k):
        org = (left + j * cell + 20, top - 8)
        label = np.full((20, 120, 3), 255, np.uint8)
        cv2.putText(label, classes[j][:12], (2, 15), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rot = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
        img[org[1] - 120 : org[1], org[0] : org[0] + 20] = rot
    cv2.putText(img, "true (rows) vs predicted (columns)", (5, 20), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)
    return Path(path)


def gallery_png(
    images: np.ndarray,
    true: list[str],
    pred: list[str],
    conf: list[float],
    path: str | Path,
    *,
    rgb: bool = True,
    cols: int = 8,
) -> Path:
    """Tiles of misclassified cells, each captioned 'true > predicted (confidence)'."""
    tile = 128
    n = max(1, len(images))
    rows = (n + cols - 1) // cols
    img = np.full((rows * (tile + 30), cols * tile, 3), 255, np.uint8)
    for i in range(len(images)):
        im = cv2.resize(images[i], (tile, tile), interpolation=cv2.INTER_AREA)
        if rgb:
            im = cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
        r, c = divmod(i, cols)
        y, x = r * (tile + 30), c * tile
        img[y : y + tile, x : x + tile] = im
        cv2.putText(
            img, f"{true[i][:6]}>{pred[i][:6]}", (x + 2, y + tile + 12), FONT, 0.38, (0, 0, 160), 1, cv2.LINE_AA
        )
        cv2.putText(img, f"{conf[i]:.2f}", (x + 2, y + tile + 25), FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    if not len(images):
        cv2.putText(img, "no misclassified test cells", (5, 60), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)
    return Path(path)

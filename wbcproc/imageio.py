"""Decode one cell image to 8-bit BGR with an explicit policy for odd encodings.

Policy (documented in docs/reports.md, tested in tests/test_imageio.py):

* 16-bit colour: scaled to 8 bits (value / 257), noted.
* Alpha: composited onto white (the background of a stained smear), noted.
* CMYK JPEG: converted to BGR by the decoder, noted.
* Palette images: expanded to BGR.
* Padding outside the camera image: where a crop ran past the edge of the camera image, export tools pad
  with pure black (LISC: 22 % of its cells) or a flat colour (white, grey; or letterbox to a square).
  Black regions touching the image's edge, and full-length flat bands along a side in a colour that is
  not the slide's background, are filled with the slide's background colour - the colour
  ``wbcproc.framing.cut_square`` gives the parts of a square that leave the image - and noted.  Left as
  they are, the network reads them as cell content (LISC cells with such a border: 19 % classified right,
  60 % once filled; PBC test cells shifted 15 % past the edge: black 17 %, white 58 %, grey 40 %, filled
  99 % - benchmarks/black_border.py).
* Greyscale, or colour files whose three channels are identical: rejected - the classifier depends on
  stain colour, and a grey image would give a confident but meaningless class.
* Truncated files: rejected.  OpenCV decodes a truncated JPEG partially and only prints a warning, so
  the byte stream is checked for its end marker (JPEG EOI, PNG IEND) and BMP/TIFF are verified by a
  full Pillow load.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from wbcproc.framing import brightest_median


class ImageRejected(Exception):
    """The image cannot be classified; ``reason`` says why in words a technologist can act on."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class DecodedImage:
    bgr: np.ndarray
    notes: tuple[str, ...] = ()


def _check_complete(data: bytes) -> None:
    if data[:3] == b"\xff\xd8\xff":
        if not data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
            raise ImageRejected("truncated JPEG (no end-of-image marker): the file is incomplete", "truncated")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-64:]:
            raise ImageRejected("truncated PNG (no IEND chunk): the file is incomplete", "truncated")
    else:
        # BMP and TIFF carry no end marker that is cheap to check: let Pillow decode fully.
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageRejected(f"image data is damaged or truncated: {exc}", "truncated") from None


def _to_8bit(img: np.ndarray, notes: list[str]) -> np.ndarray:
    if img.dtype == np.uint16:
        notes.append("converted from 16-bit to 8-bit")
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype != np.uint8:
        raise ImageRejected(f"unsupported sample type {img.dtype} (expected 8- or 16-bit integers)", "depth")
    return img


def _to_bgr(img: np.ndarray, notes: list[str]) -> np.ndarray:
    """Three channels: greyscale refused, alpha composited onto white (or dropped when opaque)."""
    if img.ndim == 2 or img.shape[2] == 1:
        raise ImageRejected("greyscale image: the classifier needs the stain colours; save in colour", "greyscale")
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        if float(alpha.min()) < 1.0:
            rgb = img[:, :, :3].astype(np.float32)
            notes.append("transparent pixels composited onto white")
            return np.clip(rgb * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
        notes.append("opaque alpha channel dropped")
        return np.ascontiguousarray(img[:, :, :3])
    if img.shape[2] != 3:
        raise ImageRejected(f"{img.shape[2]} colour channels are not supported", "colour_mode")
    return img


#: a pixel is "black" when no channel exceeds this (JPEG noise around a padded band stays below it)
PAD_MAX = 24
#: and a black region touching the edge is padding when its median pixel is this dark (pure padding is 0-2;
#: real dark content - a nucleus, debris - is textured and far brighter in at least one channel)
PAD_MEDIAN_MAX = 8
#: a row or column is part of a uniform band when this share of its pixels is within PAD_TOLERANCE of the
#: band's colour in every channel (JPEG keeps a flat band within a few levels; a smear's background has red
#: cells, noise and a gradient)
PAD_ROW_SHARE = 0.98
PAD_TOLERANCE = 6
#: a band is padding only when its colour is this far from the slide's background in some channel
PAD_BACKGROUND_DIFF = 24


def _black_regions(img: np.ndarray) -> np.ndarray:
    """Black regions touching the edge (bands, or the corners of a round field stop), >= 0.5 % of the image."""
    edges = (img[0], img[-1], img[:, 0], img[:, -1])
    if not any((e.max(axis=1) <= PAD_MAX).any() for e in edges):
        return np.zeros(img.shape[:2], bool)  # the usual case: one look at the edge, not the whole image
    dark = img.max(axis=2) <= PAD_MAX
    pad = np.zeros_like(dark)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark.astype(np.uint8), connectivity=8)
    h, w = dark.shape
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        touches = x == 0 or y == 0 or x + bw == w or y + bh == h
        if not touches or area < 0.005 * h * w:
            continue
        region = labels == i
        if float(np.median(img[region].max(axis=1))) <= PAD_MEDIAN_MAX:
            pad |= region
    return pad


def _uniform_bands(img: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full-length bands of one flat colour along the image's sides (white, grey, black...) - what a crop
    past the camera edge or a letterbox to a square leaves: (mask, colour) per side that has one."""
    h, w = img.shape[:2]
    found = []
    for side in range(4):
        length = h if side < 2 else w

        def line(k: int, side: int = side) -> np.ndarray:
            return (img[k], img[h - 1 - k], img[:, k], img[:, w - 1 - k])[side]

        colour = np.median(line(0), axis=0)
        k = 0
        while k < length // 2:
            near = (np.abs(line(k).astype(np.int16) - colour.astype(np.int16)) <= PAD_TOLERANCE).all(axis=1)
            if near.mean() < PAD_ROW_SHARE:
                break
            k += 1
        if k < 2:
            continue
        k += 1  # and the seam compression leaves along the band's inner edge
        mask = np.zeros((h, w), bool)
        mask[(np.s_[:k], np.s_[h - k :], np.s_[:, :k], np.s_[:, w - k :])[side]] = True
        found.append((mask, colour))
    return found


def fill_outside(img: np.ndarray, notes: list[str]) -> np.ndarray:
    """Padding around the camera image -> the slide's background colour, noted with its share.

    Padding is black touching the edge (>= 0.5 % of the image; a stained smear has nothing that dark: nuclei
    are dark purple, not black), or a full-length band of one flat colour along a side (white, grey:
    letterboxing, or a crop past the edge filled with a constant) whose colour is not the slide's background
    (a smooth real background passes the flatness test: PBC has 300 such images, and filling it would change
    nothing).  Left in, padding is the darkest or flattest thing in the image and the network reads it as
    cell content; a white band also fools the white balance, which takes the brightest pixels for the
    background.  The returned array is ``img`` itself when there is none, or when the image is flat from edge
    to edge.
    """
    black = _black_regions(img)
    bands = _uniform_bands(img)
    if not black.any() and not bands:
        return img
    flat = black.copy()
    for mask, _colour in bands:
        flat |= mask
    if flat.all():
        return img  # one colour from edge to edge: no camera image to tell padding from (not a cell either)
    rest = img[~flat]  # what the camera saw
    background = brightest_median(rest[:: max(1, len(rest) // 20000)])
    pad = black.copy()
    for mask, colour in bands:
        if np.abs(colour - background).max() > PAD_BACKGROUND_DIFF:
            pad |= mask
    if pad.mean() < 0.005:
        return img
    share = float(pad.mean())
    if black.any():
        # the black region's own edge: compression leaves a seam a pixel or two wide, darker than any smear
        seam = cv2.dilate(black.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        pad |= seam & (img.max(axis=2) <= 2 * PAD_MAX)
    out = img.copy()
    out[pad] = np.clip(background + 0.5, 0, 255).astype(np.uint8)
    kind = "black" if int(np.median(img[pad].max(axis=1))) <= PAD_MAX else "uniform"
    notes.append(
        f"{kind} border outside the camera image ({100 * share:.0f} % of the image) filled with the background colour"
    )
    return out


def decode_bytes(data: bytes) -> DecodedImage:
    """Decode image bytes to an 8-bit, 3-channel BGR array according to the module's policy."""
    if not data:
        raise ImageRejected("empty file (0 bytes)", "empty")
    _check_complete(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ImageRejected("the image data could not be decoded", "corrupt")
    notes: list[str] = []
    img = _to_8bit(img, notes)
    img = _to_bgr(img, notes)
    if data[:3] == b"\xff\xd8\xff" and _is_cmyk_jpeg(data):
        notes.append("converted from CMYK")
    step = max(1, min(img.shape[:2]) // 64)
    sub = img[::step, ::step].astype(np.int16)
    if int(np.abs(sub[:, :, 0] - sub[:, :, 1]).max()) <= 2 and int(np.abs(sub[:, :, 1] - sub[:, :, 2]).max()) <= 2:
        raise ImageRejected("greyscale content saved as colour: the classifier needs the stain colours", "greyscale")
    img = fill_outside(img, notes)
    return DecodedImage(np.ascontiguousarray(img), tuple(notes))


def _is_cmyk_jpeg(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.mode == "CMYK"
    except (OSError, ValueError):
        return False


def read_image(path: str | Path) -> DecodedImage:
    """Read and decode one file; I/O failures become :class:`ImageRejected` with a specific reason."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageRejected("file vanished before it could be read", "vanished") from None
    except PermissionError:
        raise ImageRejected("permission denied", "unreadable") from None
    except IsADirectoryError:
        raise ImageRejected("is a folder, not a file", "not_file") from None
    except OSError as exc:
        raise ImageRejected(f"read error: {exc.strerror or exc}", "unreadable") from None
    return decode_bytes(data)

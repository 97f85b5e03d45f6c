"""Decode one cell image to 8-bit BGR with an explicit policy for odd encodings.

Policy (documented in the README, tested in tests/test_imageio.py):

* 16-bit colour: scaled to 8 bits (value / 257), noted.
* Alpha: composited onto white (the background of a stained smear), noted.
* CMYK JPEG: converted to BGR by the decoder, noted.
* Palette images: expanded to BGR.
* Black outside the camera image: where a crop ran past the edge of the camera image, export tools pad
  with pure black (LISC: 19 % of its cells).  Black regions touching the image's edge are filled with the
  slide's background colour - the colour ``wbcproc.framing.cut_square`` gives the parts of a square that
  leave the image - and noted.  Left as they are, they are the darkest thing in the image and the network
  reads them as cell content (LISC cells with such a border: 19 % classified right, 57 % once filled;
  PBC test cells shifted 15 % past the edge: 17 %, 99 % filled - benchmarks/black_border.py).
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


def fill_outside(img: np.ndarray, notes: list[str]) -> np.ndarray:
    """Black padding around the camera image -> the slide's background colour, noted with its share.

    A region counts only if it touches the image's edge, is black in every channel and covers at least
    0.5 % of the image: a stained smear has nothing that dark (nuclei are dark purple, not black).  The
    returned array is ``img`` itself when there is none (the usual case costs one look at the edge pixels).
    """
    dark = img.max(axis=2) <= PAD_MAX
    if not (dark[0].any() or dark[-1].any() or dark[:, 0].any() or dark[:, -1].any()):
        return img
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark.astype(np.uint8), connectivity=8)
    h, w = dark.shape
    pad = np.zeros_like(dark)
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        touches = x == 0 or y == 0 or x + bw == w or y + bh == h
        if not touches or area < 0.005 * h * w:
            continue
        region = labels == i
        if float(np.median(img[region].max(axis=1))) <= PAD_MEDIAN_MAX:
            pad |= region
    if not pad.any():
        return img
    share = float(pad.mean())
    # the band's own edge: compression leaves a seam a pixel or two wide, darker than any smear
    seam = cv2.dilate(pad.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & (img.max(axis=2) <= 2 * PAD_MAX)
    rest = img[~pad][:: max(1, int((~pad).sum()) // 20000)].astype(np.int32)  # what the camera saw
    grey = rest.sum(axis=1)
    # as wbcproc.framing.background_colour: the per-channel median of the brightest 8 %
    colour = np.median(rest[grey >= np.percentile(grey, 92)], axis=0) if len(rest) else np.full(3, 255.0)
    out = img.copy()
    out[pad | seam] = np.clip(colour + 0.5, 0, 255).astype(np.uint8)
    notes.append(
        f"black border outside the camera image ({100 * share:.0f} % of the image) filled with the background colour"
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

"""The one preprocessing function shared by inference and training.

Two stages, because training caches the first one:

``prepare_image``  BGR uint8 of any size -> uint8 HxWx3 at the model's input size, in the model's colour
                   order, after optional colour normalisation.  This is what the training cache stores.
``to_input``       prepared uint8 (HWC or NHWC) -> float32 NCHW, scaled and mean/std-normalised.

``preprocess`` is the two in a row.  Everything is driven by :class:`PreprocessSpec`, read from the
model's sidecar, so a model carries the exact recipe it was trained with.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal, get_args

import cv2
import numpy as np
from pydantic import Field, PositiveFloat, model_validator
from pydantic.dataclasses import dataclass as record

from wbcproc.contract import RECORD, Record
from wbcproc.framing import FrameInfo, Framing, frame_cell, locate_cell, white_balance, white_balance_gain
from wbcproc.resize import resize

ResizeRule = Literal["stretch", "shorter_side_crop", "letterbox"]
RESIZE_RULES: tuple[str, ...] = get_args(ResizeRule)
ColourMethod = Literal["reinhard_lab", "white_balance"]
COLOUR_METHODS: tuple[str, ...] = get_args(ColourMethod)
Triple = tuple[float, float, float]
_READS = {"white_balance": ("reference",), "reinhard_lab": ("mean", "std")}  # what each colour method uses


@record(frozen=True, config=RECORD)
class ColourNormalisation(Record):
    """Colour normalisation to reference statistics of the training data.

    ``white_balance`` (default of trained models): the slide background is mapped onto ``reference`` (BGR),
    see :mod:`wbcproc.framing`.  ``reinhard_lab``: whole-image LAB mean/std transfer (Reinhard et al. 2001);
    kept for older sidecars - it depends on how much of the frame the cell fills.
    """

    method: ColourMethod = "reinhard_lab"
    mean: Triple = (0.0, 0.0, 0.0)
    std: Triple = (1.0, 1.0, 1.0)
    reference: Triple = (255.0, 255.0, 255.0)

    @model_validator(mode="before")
    @classmethod
    def _the_method_and_what_it_reads(cls, data: Any) -> Any:
        """Read from JSON, the method and the values it reads must be written out: a default reference colour
        or LAB statistics would silently recolour every cell."""
        if isinstance(data, dict):
            needed = ("method", *_READS.get(data.get("method"), ()))
            missing = [k for k in needed if k not in data]
            if missing:
                raise ValueError(f"colour normalisation {data.get('method')!r} lacks {missing}")
        return data

    def to_dict(self) -> dict[str, Any]:
        if self.method == "white_balance":
            return {"method": self.method, "reference": [float(v) for v in self.reference]}
        return {"method": self.method, "mean": list(self.mean), "std": list(self.std)}


@record(frozen=True, config=RECORD)
class PreprocessSpec(Record):
    """The one preprocessing recipe training and inference share (a model's sidecar carries it)."""

    WHERE = "the recipe"

    input_size: Annotated[int, Field(ge=8, le=1024)] = 224
    resize: ResizeRule = "stretch"
    colour_order: Literal["RGB", "BGR"] = "RGB"
    scale: PositiveFloat = 255.0
    mean: Triple = (0.485, 0.456, 0.406)
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)
    pad_value: tuple[int, int, int] = (255, 255, 255)
    colour_normalisation: ColourNormalisation | None = None
    framing: Framing | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("mean", "std", "pad_value"):
            d[key] = list(d[key])
        if self.colour_normalisation is not None:
            d["colour_normalisation"] = self.colour_normalisation.to_dict()
        if self.framing is not None:
            d["framing"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.framing).items()}
        return d


def reinhard_normalise(bgr: np.ndarray, norm: ColourNormalisation) -> np.ndarray:
    """Map the image's LAB mean/std onto the reference's (Reinhard et al. 2001)."""
    lab = cv2.cvtColor(bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)
    flat = lab.reshape(-1, 3)
    mu, sd = flat.mean(axis=0), flat.std(axis=0)
    target_mu, target_sd = np.asarray(norm.mean, np.float32), np.asarray(norm.std, np.float32)
    lab = (lab - mu) / np.maximum(sd, 1e-3) * target_sd + target_mu
    out = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2BGR)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _resize(bgr: np.ndarray, size: int, rule: str, pad_value: tuple[int, int, int]) -> np.ndarray:
    """The spec's resize rule; area averaging when shrinking, bilinear when enlarging, the same pixels on
    every CPU (:mod:`wbcproc.resize`)."""
    h, w = bgr.shape[:2]
    if rule == "stretch":
        return resize(bgr, size, size)
    if rule == "shorter_side_crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        resized = resize(bgr, nw, nh)
        y0, x0 = (nh - size) // 2, (nw - size) // 2
        return resized[y0 : y0 + size, x0 : x0 + size]
    # letterbox: keep the aspect ratio, pad the short side (BGR pad value)
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = resize(bgr, nw, nh)
    top, left = (size - nh) // 2, (size - nw) // 2
    return cv2.copyMakeBorder(
        resized, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=pad_value
    )


def prepare_image(
    bgr: np.ndarray,
    spec: PreprocessSpec,
    *,
    framed: bool = False,
    rbc_px: float | None = None,
    located: FrameInfo | None = None,
    wb_gain: np.ndarray | None = None,
    normalised: bool = False,
    ruler_for_every_image: bool = False,
) -> np.ndarray:
    """BGR uint8 (any size) -> uint8 ``input_size`` x ``input_size`` x 3 in the spec's colour order.

    Order: colour normalisation, then framing (its nucleus detection relies on normalised colour), then the
    resize rule.  ``framed``: the image is already a canonical square (a field crop cut at the field's
    measured red-cell scale, see :func:`wbcproc.fields.crop_cell`), so the framing step is skipped.
    ``rbc_px``: the sample's red-cell diameter (see :func:`wbcproc.framing.sample_ruler`) instead of this
    image's own measurement where that is missing or off - or always, with ``ruler_for_every_image`` (see
    :func:`wbcproc.framing.ruler_for_every_image`).  ``located`` / ``wb_gain``: this image's framing measurement and white-balance
    gain from :func:`measure_normalised`, if already made (the result is the same; the work is not done twice).
    ``normalised``: ``bgr`` is already :func:`colour_normalise`'s output (:func:`measure_normalised` makes it).
    """
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected an 8-bit BGR image HxWx3, got dtype {bgr.dtype} shape {bgr.shape}")
    if not normalised:
        bgr = colour_normalise(bgr, spec, wb_gain)
    if spec.framing is not None and not framed:
        bgr, _ = frame_cell(bgr, spec.framing, rbc_px=rbc_px, located=located, every=ruler_for_every_image)
    out = _resize(bgr, int(spec.input_size), spec.resize, spec.pad_value)
    if spec.colour_order == "RGB":
        out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out)


def colour_normalise(bgr: np.ndarray, spec: PreprocessSpec, wb_gain: np.ndarray | None = None) -> np.ndarray:
    """The spec's colour normalisation step alone (identity when it has none)."""
    cn = spec.colour_normalisation
    if cn is None:
        return bgr
    if cn.method == "white_balance":
        return white_balance(bgr, cn.reference, gain=wb_gain)
    return reinhard_normalise(bgr, cn)


def measure_normalised(bgr: np.ndarray, spec: PreprocessSpec) -> tuple[FrameInfo | None, np.ndarray | None, np.ndarray]:
    """What ``prepare_image`` measures on this image - the framing (None: the spec has none) and the
    white-balance gain (None: no white balance) - made once, for a sample's pre-pass to keep; and the
    colour-normalised image the framing was measured on, which ``prepare_image(..., normalised=True)``
    starts from (the normalisation is not done twice)."""
    cn = spec.colour_normalisation
    gain = white_balance_gain(bgr, cn.reference) if cn is not None and cn.method == "white_balance" else None
    normalised = colour_normalise(bgr, spec, gain)
    if spec.framing is None:
        return None, gain, normalised
    return locate_cell(normalised, spec.framing), gain, normalised


def to_input(prepared: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Prepared uint8 HWC or NHWC -> float32 NCHW, divided by ``scale`` and mean/std-normalised."""
    batch = prepared[None] if prepared.ndim == 3 else prepared
    x = batch.astype(np.float32) / np.float32(spec.scale)
    x -= np.asarray(spec.mean, np.float32)
    x /= np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(bgr: np.ndarray, spec: PreprocessSpec, *, framed: bool = False) -> np.ndarray:
    """One image -> a 1x3xSxS float32 model input.  Training and inference both go through this."""
    return to_input(prepare_image(bgr, spec, framed=framed), spec)

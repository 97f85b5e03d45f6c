"""The CLI's closed choices as Enums, so that ``--help`` lists them and click refuses anything else (one
line, exit 2).  Each is made from the tuple the code that uses the value defines; the two the CLI cannot
import without slowing every command's start (OpenCV, pydantic) are spelt here and a test keeps them equal
to their source."""

from __future__ import annotations

from enum import Enum

from training.recipe import AUGMENTATIONS, DEVICES, NORMS, OPTIMIZERS  # standard library only


def _choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


Augment = _choice("Augment", AUGMENTATIONS)
Device = _choice("Device", DEVICES)
Norm = _choice("Norm", NORMS)
Optimizer = _choice("Optimizer", OPTIMIZERS)
Resize = _choice("Resize", ("stretch", "shorter_side_crop", "letterbox"))  # wbcproc.preprocess.RESIZE_RULES
Split = _choice("Split", ("all", "train", "val", "test"))  # "all" and training.data.SPLITS

"""Which model file to use: --model, then $WBC_MODEL, then the registry's current model, then the shipped one.

Its own module because it needs the registry while the registry needs only the sidecar reader: with the
rule here, :mod:`wbcproc.model` and :mod:`wbcproc.registry` no longer import each other.
"""

from __future__ import annotations

import os
from pathlib import Path

from wbcproc import paths
from wbcproc.registry import Registry
from wbcproc.sidecar import ModelNotFoundError, locate_model

HOW_TO_GET_A_MODEL = (
    "No model found: no --model, no $WBC_MODEL, no current registry model, and no shipped default (models/ of "
    "the repository, wbcproc/_models/ of an installed wheel). Train one with "
    "`pip install 'wbc[train]'` and `wbc train --data PBC_DIR --out RUN_DIR` (see docs/training.md), "
    "then pass `--model RUN_DIR/model.onnx`, set WBC_MODEL, or make it current with "
    "`wbc models register RUN_DIR` and `wbc models promote VERSION`."
)


def resolve_model_path(explicit: str | Path | None = None) -> Path:
    """--model, then $WBC_MODEL, then the registry's current model, then the shipped default."""
    if explicit:
        return locate_model(Path(explicit))
    if os.environ.get("WBC_MODEL"):
        return locate_model(Path(os.environ["WBC_MODEL"]))
    current = Registry.default().current_path()
    if current is not None:
        return current
    for d in paths.packaged_model_dirs():
        if (d / "model.onnx").is_file():
            return d / "model.onnx"
    raise ModelNotFoundError(HOW_TO_GET_A_MODEL)

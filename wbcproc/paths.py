"""Where things live: the app's data folder and the folders a shipped default model may be in.

Plain path rules with no imports of the model or registry modules, so both can use them.
"""

from __future__ import annotations

import os
from pathlib import Path


def app_home() -> Path:
    """The app's data folder: $WBC_HOME, else $XDG_DATA_HOME/wbc, else ~/.local/share/wbc."""
    if os.environ.get("WBC_HOME"):
        return Path(os.environ["WBC_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "wbc"


def cache_home() -> Path:
    """Where results that can be recomputed are kept: $WBC_CACHE, else $XDG_CACHE_HOME/wbc, else ~/.cache/wbc."""
    if os.environ.get("WBC_CACHE"):
        return Path(os.environ["WBC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wbc"


def packaged_model_dirs() -> list[Path]:
    """Where a shipped default model may live: inside the installed package, then the checkout."""
    here = Path(__file__).resolve().parent
    return [here / "_models", here.parent / "models"]

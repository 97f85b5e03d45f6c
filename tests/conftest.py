from __future__ import annotations

from pathlib import Path

import pytest
from helpers import copy_cells, make_tiny_model


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Never read or write the user's registry, config or model choice."""
    home = tmp_path_factory.mktemp("wbc-home")
    monkeypatch.setenv("WBC_HOME", str(home))
    monkeypatch.delenv("WBC_MODEL", raising=False)
    monkeypatch.delenv("WBC_CONFIG", raising=False)
    monkeypatch.delenv("WBC_REGISTRY", raising=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def sample(tmp_path) -> Path:
    folder = tmp_path / "S-001"
    copy_cells(folder)
    return folder

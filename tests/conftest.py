from __future__ import annotations

from pathlib import Path

import procs
import pytest
from helpers import copy_cells, make_tiny_model


def pytest_keyboard_interrupt(excinfo) -> None:
    """Ctrl-C: the servers still running are given seconds, not minutes, to stop (``procs.stop``)."""
    procs.INTERRUPTED = True


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wbc-cache")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch, _session_cache):
    """Never read or write the user's registry, config, model choice or cache (one cache for the session:
    the adaptation tests share the shipped model's replay stage inputs, as one machine's adaptations do)."""
    home = tmp_path_factory.mktemp("wbc-home")
    monkeypatch.setenv("WBC_HOME", str(home))
    monkeypatch.setenv("WBC_CACHE", str(_session_cache))
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


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def labelled_set(tmp_path_factory) -> Path:
    """class folders of real cells: each fixture image in 6 orientations (new bytes, new hash): 144 images."""
    import cv2
    from helpers import CELLS

    root = tmp_path_factory.mktemp("labelled")
    for p in sorted(CELLS.glob("*/*.jpg")):
        img = cv2.imread(str(p))
        d = root / p.parent.name
        d.mkdir(exist_ok=True)
        for k in range(6):
            v = img if k % 3 == 0 else cv2.rotate(img, (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180)[k % 3 - 1])
            if k >= 3:
                v = cv2.flip(v, 1)
            cv2.imwrite(str(d / f"{p.stem}_v{k}.jpg"), v)
    return root

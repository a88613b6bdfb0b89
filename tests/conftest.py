"""Shared fixtures: the embedded demo data and a per-session feature cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two xdist workers on two cores: one intra-op thread each avoids oversubscription
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "birds-demo"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The embedded BirdCLEF-style demo data (6 species x 8 real recordings)."""
    assert (DEMO / "train_metadata.csv").is_file(), "embedded demo data missing"
    return DEMO


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature cache shared by the tests of one worker (never the user's cache)."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread while a module's tests run (restored afterwards)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep tests away from the user's ~/.cache and ~/.cache/torch (no downloads)."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("BIRDSTACK_CACHE", str(root / "default-cache"))
    monkeypatch.setenv("TORCH_HOME", str(root / "torch-home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")

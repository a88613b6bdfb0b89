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
def load_script():
    """A function loading ``scripts/<name>.py`` as a module (the scripts are not a package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


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


SOUNDSCAPE_SPECIES = ("acrocephalus_arundinaceus", "coereba_flaveola", "margarops_fuscatus")


def build_soundscapes(demo: Path, out: Path, n_clips: int = 12, seed: int = 0) -> Path:
    """Annotated 10 s "soundscapes" mixed from the demo's real recordings (16 kHz WAV).

    Each clip holds one or two of :data:`SOUNDSCAPE_SPECIES`, each as a 2-4 s excerpt of
    one of its recordings at a random offset, over quiet noise; ``annotations.csv``
    lists them as events (``filename,start_s,end_s,label,taxon``), plus one ``insect``
    event per clip that must never become a target. ``out/negatives/`` gets 4 clips of
    noise alone. No audio from outside the repository is used.
    """
    import numpy as np
    import pandas as pd
    import soundfile as sf

    from birdstack.features.audio import load_audio

    sr = 16000
    rng = np.random.default_rng(seed)
    meta = pd.read_csv(demo / "train_metadata.csv")
    sources = {
        sp: [
            load_audio(demo / "train_audio" / f, sr)
            for f in meta.loc[meta["primary_label"] == sp, "filename"].head(4)
        ]
        for sp in SOUNDSCAPE_SPECIES
    }
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n_clips):
        clip = rng.normal(0, 0.002, 10 * sr).astype(np.float32)
        chosen = [SOUNDSCAPE_SPECIES[k % 3]]
        if k % 2:
            chosen.append(SOUNDSCAPE_SPECIES[(k + 1) % 3])
        name = f"audio/scape{k + 1:03d}.wav"
        for sp in chosen:
            src = sources[sp][int(rng.integers(len(sources[sp])))]
            dur = float(rng.uniform(2.0, 4.0))
            n = min(int(dur * sr), len(src))
            a = int(rng.integers(0, len(src) - n + 1))
            start = float(rng.uniform(0, 10 - n / sr))
            i0 = int(start * sr)
            seg = src[a : a + n]
            clip[i0 : i0 + n] += 0.5 * seg / (np.abs(seg).max() + 1e-9)
            rows.append((name, round(start, 3), round(start + n / sr, 3), sp, "bird"))
        rows.append((name, 0.5, 0.8, "cicada_orni", "insect"))
        sf.write(out / name, clip, sr, subtype="FLOAT")
    pd.DataFrame(rows, columns=["filename", "start_s", "end_s", "label", "taxon"]).to_csv(
        out / "annotations.csv", index=False
    )
    (out / "negatives").mkdir(exist_ok=True)
    for k in range(4):
        noise = rng.normal(0, 0.01, 5 * sr).astype(np.float32)
        sf.write(out / "negatives" / f"empty{k + 1:03d}.wav", noise, sr, subtype="FLOAT")
    return out


@pytest.fixture(scope="session")
def soundscape_root(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`build_soundscapes` once per test session: ``ROOT/scapes``, ``ROOT/negatives``."""
    root = tmp_path_factory.mktemp("soundscapes")
    build_soundscapes(demo_dir, root / "scapes")
    (root / "scapes" / "negatives").rename(root / "negatives")
    return root

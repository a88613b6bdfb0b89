"""Fixtures of the inference tests: small checkpoints trained once per session, test audio.

Imported by ``test_inference.py`` and ``test_inference_cli.py`` (which run in one xdist
group, so each checkpoint is trained once per test session).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdstack.config import Config
from birdstack.training.train import train


@dataclass(frozen=True)
class TrainedRun:
    """A 1-epoch run on the demo data: its best checkpoint and its manifest."""

    checkpoint: Path
    manifest: pd.DataFrame
    run_dir: Path


def _train(demo_dir: Path, cache_dir: Path, out: Path, encoding: dict) -> TrainedRun:
    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
            "preprocessing": {"encoding": encoding},
            "trainer": {
                "epochs": 1,
                "batch_size": 16,
                "progress": False,
                "accelerator": "cpu",
            },
            "optim": {"lr": 0.003},
            "out_dir": str(out),
        }
    )
    result = train(cfg)
    manifest = pd.read_csv(out / "data" / "manifest.csv")
    return TrainedRun(Path(result.best_checkpoint), manifest, out)


@pytest.fixture(scope="session")
def stacked_run(demo_dir: Path, cache_dir: Path, tmp_path_factory) -> TrainedRun:
    """mobilenet_compact, the study's stacked encoding (short recordings padded)."""
    return _train(demo_dir, cache_dir, tmp_path_factory.mktemp("stacked-run"), {"short": "pad"})


@pytest.fixture(scope="session")
def segments_run(demo_dir: Path, cache_dir: Path, tmp_path_factory) -> TrainedRun:
    """mobilenet_compact on 5 s segments every 2.5 s (overlapping windows)."""
    enc = {"kind": "segments", "window_s": 5.0, "hop_s": 2.5}
    return _train(demo_dir, cache_dir, tmp_path_factory.mktemp("segments-run"), enc)


def synthetic_song(seconds: float, sr: int = 32000, seed: int = 0) -> np.ndarray:
    """Noise plus chirps and tone bursts at random times: a stand-in soundscape."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = 0.01 * rng.standard_normal(n)
    for start in rng.uniform(0, max(seconds - 1.0, 0.1), size=max(1, int(seconds / 2))):
        i0, i1 = int(start * sr), int(min(seconds, start + rng.uniform(0.2, 0.9)) * sr)
        f0, f1 = rng.uniform(1500, 7000, size=2)
        tt = t[i0:i1] - t[i0]
        phase = 2 * np.pi * (f0 * tt + (f1 - f0) * tt**2 / (2 * max(tt[-1], 1e-3)))
        x[i0:i1] += rng.uniform(0.1, 0.5) * np.sin(phase) * np.hanning(i1 - i0)
    return x.astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sr: int, subtype: str = "FLOAT") -> Path:
    """Write ``wave`` (``[n]`` or ``[n, channels]``) as a WAV file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype=subtype)
    return path

"""Fixtures of the inference tests: a checkpoint trained once per session, test audio.

Loaded as a plugin (``pytest_plugins``) by ``test_inference.py`` and
``test_inference_cli.py``, which run in one xdist group, so the session fixtures exist
once per test session.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from birdstack.config import Config, EncodingConfig, Preprocessing, from_dict, to_dict
from birdstack.data.datamodule import BirdDataset
from birdstack.models import create_model
from birdstack.training.checkpoint import load_checkpoint
from birdstack.training.train import train


@dataclass(frozen=True)
class TrainedRun:
    """A 1-epoch run on the demo data: its best checkpoint and its manifest."""

    checkpoint: Path
    manifest: pd.DataFrame
    run_dir: Path


def calibrated_checkpoint(
    src: Path, dst: Path, manifest: pd.DataFrame, encoding: dict | None = None
) -> Path:
    """``src`` with batch-norm statistics re-estimated on real inputs, saved as ``dst``.

    One epoch on 48 recordings leaves the running statistics far from the activations,
    and the network then answers nearly the same for every input, which would make the
    comparisons of these tests weak. Re-estimating them (cumulative average over real
    inputs) gives outputs that depend on the input. With ``encoding`` (e.g. segments)
    a fresh network for that encoding is built instead of the trained one, in the
    same checkpoint structure.
    """
    ckpt = load_checkpoint(src)
    meta = ckpt["birdstack"]
    pre = from_dict(Preprocessing, meta["preprocessing"])
    torch.manual_seed(0)
    if encoding is not None:
        pre = dataclasses.replace(pre, encoding=EncodingConfig(**encoding))
    args = {**meta["model"]["args"], "in_chans": pre.input_shape()[0]}
    net = create_model(**args)
    if encoding is None:
        net.load_state_dict(
            {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        )
    kept = manifest[~manifest["dropped"].astype(bool)].reset_index(drop=True)
    ds = BirdDataset(kept, pre)
    pick = np.linspace(0, len(ds) - 1, min(len(ds), 64)).astype(int)
    x = torch.stack([ds[int(i)][0] for i in pick])
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()
    ckpt["state_dict"] = {
        **{k: v for k, v in ckpt["state_dict"].items() if not k.startswith("net.")},
        **{f"net.{k}": v for k, v in net.state_dict().items()},
    }
    meta["preprocessing"] = to_dict(pre)
    meta["model"] = {"name": meta["model"]["name"], "args": dict(net.model_args)}
    torch.save(ckpt, dst)
    return dst


def _train(demo_dir: Path, cache_dir: Path, out: Path, encoding: dict) -> TrainedRun:
    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
            "task": {"kind": "multiclass"},  # the single-label task under test
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
def trained_run(demo_dir: Path, cache_dir: Path, tmp_path_factory) -> TrainedRun:
    """mobilenet_compact, the study's stacked encoding (short padded), 1 epoch of train()."""
    enc = {"kind": "stacked", "short": "pad"}
    return _train(demo_dir, cache_dir, tmp_path_factory.mktemp("stacked-run"), enc)


@pytest.fixture(scope="session")
def stacked_run(trained_run: TrainedRun) -> TrainedRun:
    """The trained stacked checkpoint with re-estimated batch-norm statistics."""
    dst = trained_run.run_dir / "checkpoints" / "calibrated.ckpt"
    calibrated_checkpoint(trained_run.checkpoint, dst, trained_run.manifest)
    return dataclasses.replace(trained_run, checkpoint=dst)


@pytest.fixture(scope="session")
def segments_run(trained_run: TrainedRun) -> TrainedRun:
    """A segments model (5 s windows every 2.5 s) in the run's checkpoint structure."""
    dst = trained_run.run_dir / "checkpoints" / "segments.ckpt"
    enc = {"kind": "segments", "window_s": 5.0, "hop_s": 2.5}
    calibrated_checkpoint(trained_run.checkpoint, dst, trained_run.manifest, enc)
    return dataclasses.replace(trained_run, checkpoint=dst)


@pytest.fixture(scope="session")
def onnx_model(stacked_run: TrainedRun, tmp_path_factory) -> Path:
    """The stacked checkpoint exported with ``birdstack export`` (the command itself)."""
    from birdstack.cli.main import build_parser

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    args = build_parser().parse_args(["export", str(stacked_run.checkpoint), "--onnx", str(out)])
    assert args.func(args) == 0 and out.is_file()
    return out


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

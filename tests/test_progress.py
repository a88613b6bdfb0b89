"""Progress off a terminal: plain lines, no carriage-return bars (logs, CI, job arrays)."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdstack.utils import LineProgress, is_interactive, progress_bar

pytest_plugins = ["test_inference_helpers"]


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_every_interval_and_every_step():
    clock, buf = FakeClock(), io.StringIO()
    bar = LineProgress(total=100, desc="features", unit="file", stream=buf, clock=clock)
    for t in range(100):  # one item per second: 10 % steps come before 30 s intervals
        clock.t = float(t + 1)
        bar.update()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in buf.getvalue()
    assert lines[0] == "features: 10/100 files (10%), 10 s elapsed, about 1 min 30 s left"
    assert lines[-2].startswith("features: 100/100 files (100%)")
    assert lines[-1] == "features: done, 100 files in 1 min 40 s"
    bar.close()  # once only
    assert len(buf.getvalue().splitlines()) == 11

    clock, buf = FakeClock(), io.StringIO()
    bar = LineProgress(desc="windows", stream=buf, clock=clock, interval_s=30)  # no total
    for t in (5, 20, 31, 40, 59, 61, 95):
        clock.t = float(t)
        bar.update(10)
    bar.close()
    assert buf.getvalue().splitlines() == [
        "windows: 30 it, 31 s elapsed",
        "windows: 60 it, 1 min 01 s elapsed",
        "windows: 70 it, 1 min 35 s elapsed",
        "windows: done, 70 it in 1 min 35 s",
    ]


def test_interrupted_iteration_says_where_it_stopped_and_disabled_says_nothing():
    buf = io.StringIO()
    with pytest.raises(KeyError):
        for i in LineProgress(range(4), desc="predict", unit="file", stream=buf):
            if i == 2:
                raise KeyError(i)
    assert buf.getvalue().splitlines()[-1].startswith("predict: stopped at 2/4 files after")
    buf = io.StringIO()
    assert list(LineProgress(range(3), stream=buf, disable=True)) == [0, 1, 2]
    LineProgress(total=0, stream=buf).close()  # nothing to do: no line either
    assert buf.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar_anything_else_lines():
    from tqdm import tqdm

    assert not is_interactive(io.StringIO())
    assert is_interactive(FakeTerminal())
    term = FakeTerminal()
    bar = progress_bar(range(3), desc="x", stream=term)
    assert isinstance(bar, tqdm)
    list(bar)
    assert "\r" in term.getvalue()  # what a log must not get
    assert isinstance(progress_bar(range(3), stream=io.StringIO()), LineProgress)
    assert isinstance(progress_bar(range(3), stream=FakeTerminal(), disable=True), LineProgress)


def _no_bars(text: str) -> None:
    assert "\r" not in text and "\x1b[" not in text, text[:500]


def test_feature_cache_progress_in_a_log(tmp_path, capsys):
    from birdstack.config import AudioConfig, SpectrogramConfig
    from birdstack.features.cache import FeatureCache

    paths = []
    rng = np.random.default_rng(0)
    for i in range(3):
        p = tmp_path / f"r{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
        paths.append(p)
    spec = SpectrogramConfig(n_fft=512, hop_length=256, n_mels=40, fmin=50.0, fmax=7000.0)
    cache = FeatureCache(tmp_path / "cache", AudioConfig(sample_rate=16000), spec)
    res = cache.compute_many(paths, workers=1, progress=True)
    assert res.n_computed == 3
    err = capsys.readouterr().err
    _no_bars(err)
    lines = [ln for ln in err.splitlines() if ln.startswith("features:")]
    assert lines[0].startswith("features: 1/3 files (33%)")
    assert lines[-1].startswith("features: done, 3 files in")


@pytest.mark.xdist_group("inference")
def test_predict_progress_in_a_log(stacked_run, demo_dir, tmp_path, capsys):
    from birdstack.cli.main import build_parser

    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted(demo_dir.glob("train_audio/vireo_latimeri/*.ogg"))[:2]:
        shutil.copy(f, folder / f.name)
    argv = ["predict", str(stacked_run.checkpoint), str(folder), "--out", str(tmp_path / "o")]
    args = build_parser().parse_args(argv)  # progress on (no --no-progress)
    assert args.func(args) == 0
    err = capsys.readouterr().err
    _no_bars(err)
    assert re.search(r"^predict: 1/2 files \(50%\), \d+ s elapsed", err, re.M)
    assert re.search(r"^predict: done, 2 files in \d+ s$", err, re.M)


@pytest.mark.xdist_group("inference")
def test_training_logs_one_line_per_epoch(trained_run, demo_dir, cache_dir, tmp_path, capsys):
    """``train()`` with progress on, stderr not a terminal: no TQDM bar, one line per epoch."""
    from birdstack.config import Config
    from birdstack.training.train import train

    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
            "task": {"kind": "multiclass"},  # the single-label task under test
            "preprocessing": {"encoding": {"kind": "stacked", "short": "pad"}},  # as trained_run
            "trainer": {"epochs": 2, "batch_size": 16, "progress": True, "accelerator": "cpu"},
            "out_dir": str(tmp_path / "run"),
        }
    )
    history = train(cfg).history
    err = capsys.readouterr().err
    _no_bars(err)
    epochs = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in epochs] == ["epoch 1/2", "epoch 2/2"], err[-2000:]
    # before the epochs, one line says what the run trains with, the defaults included
    said = " ".join(err[: err.index("epoch 1/2")].split())  # the console may wrap it
    assert "training: mobilenet_compact, adamw lr 0.001, warm-up 1 epoch(s) + cosine" in said
    assert "training only: SpecAugment, mixup 0.4 (no noise: --noise-dir DIR adds it)" in said
    for ln, (_, row) in zip(epochs, history.iterrows()):
        assert re.search(r"  \(\d+ s\)$", ln)
        # the epoch's own figures, training ones included (logged after the callbacks' hook)
        for key in ("train/loss", "train/acc", "val/loss", "val/rec_f1_macro"):
            assert f"{key} {row[key]:.4f}" in ln, (key, ln)


def test_epoch_lines_callback_in_a_plain_lightning_run():
    """The callback on its own: Lightning treats it as the progress bar (no TQDM added)."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import TQDMProgressBar
    from torch.utils.data import DataLoader, TensorDataset

    from birdstack.training.callbacks import EpochLines, progress_callback

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            loss = self.lin(x).pow(2).mean()
            self.log("train/loss", loss, on_epoch=True, on_step=False)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    assert isinstance(progress_callback(FakeTerminal()), TQDMProgressBar)
    buf = io.StringIO()
    cb = progress_callback(buf)
    assert isinstance(cb, EpochLines)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    assert trainer.progress_bar_callback is cb
    loader = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer.fit(Tiny(), train_dataloaders=loader)
    lines = buf.getvalue().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(re.search(r": train/loss \d\.\d{4}  \(\d+ s\)$", ln) for ln in lines), lines
    _no_bars(buf.getvalue())


def test_lines_go_to_stderr_by_default(capsys):
    for _ in progress_bar(range(2), desc="demo", unit="file"):
        pass
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "demo: 1/2 files (50%), 0 s elapsed, about 0 s left",
        "demo: 2/2 files (100%), 0 s elapsed, about 0 s left",
        "demo: done, 2 files in 0 s",
    ]


def test_no_bare_tqdm_bars_left():
    # the helper is used where birdstack makes bars (no bare tqdm left in those modules)
    src = Path(__file__).resolve().parents[1] / "src" / "birdstack"
    for rel in ("features/cache.py", "cli/predict.py", "training/train.py"):
        text = (src / rel).read_text()
        assert "tqdm(" not in text and "TQDMProgressBar(" not in text, rel

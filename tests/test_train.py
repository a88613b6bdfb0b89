"""Training end to end on the embedded data: loss goes down, seeded runs repeat, resume, DDP;
the best epoch's rule (highest recording-level macro-F1, ties to the later epoch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import birdstack.training.train as train_module
from birdstack.config import Config, ConfigError
from birdstack.data.datamodule import BirdDataset
from birdstack.training.checkpoint import build_model_from_checkpoint, load_checkpoint
from birdstack.training.train import LaterTiesCheckpoint, _best_row, best_epoch_index, train

pytestmark = pytest.mark.xdist_group("train")


def _cfg(demo_dir: Path, cache_dir: Path, out: Path, **over) -> Config:
    base = {
        "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
        "task": {"kind": "multiclass"},  # the single-label task under test
        "preprocessing": {"encoding": {"kind": "stacked", "short": "pad"}},
        "trainer": {"epochs": 3, "batch_size": 8, "progress": False, "accelerator": "cpu"},
        "out_dir": str(out),
    }
    return Config.from_dict(base).override(over)


def test_short_run_lowers_training_loss_and_writes_outputs(
    demo_dir, cache_dir, tmp_path, monkeypatch
):
    stoppers = []

    class Recorded(train_module.EarlyStopping):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            stoppers.append(self)

    monkeypatch.setattr(train_module, "EarlyStopping", Recorded)
    over = {"trainer.epochs": 6, "optim.lr": 0.003, "trainer.early_stopping_patience": 6}
    result = train(_cfg(demo_dir, cache_dir, tmp_path / "run", **over))
    h = result.history
    assert len(h) == 6
    assert h["train/loss"].iloc[-1] < h["train/loss"].iloc[0]
    for name in ("metrics.csv", "curves.png", "result.json", "config.yaml", "data/manifest.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    assert (tmp_path / "run/checkpoints/best.ckpt").is_file()
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()
    # last.ckpt holds the final epoch (what --resume continues from), not the best one
    assert load_checkpoint(tmp_path / "run/checkpoints/last.ckpt")["epoch"] == 5
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/f1_macro"} <= set(h.columns)
    # best.ckpt is the epoch of highest recording-level macro-F1, a tie going to the later
    # epoch, by the run's own metrics.csv; result.json names the same epoch
    logged = pd.read_csv(tmp_path / "run" / "metrics.csv")
    f1 = logged["val/rec_f1_macro"]
    expected = int(logged.loc[f1 == f1.max(), "epoch"].max())
    assert load_checkpoint(result.best_checkpoint)["epoch"] == expected
    assert result.best_checkpoint == tmp_path / "run/checkpoints/best.ckpt"
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["best_epoch"] == expected == int(result.best["epoch"])
    assert res["best"]["val/rec_f1_macro"] == f1.max()
    # early stopping watches the same figure
    assert [(s.monitor, s.mode) for s in stoppers] == [("val/rec_f1_macro", "max")]


def test_best_epoch_is_highest_recording_f1_with_ties_to_the_later_epoch():
    # val/loss is lowest at epoch 0 (a model that predicts one class can have it there)
    hist = pd.DataFrame(
        {
            "epoch": [0, 1, 2, 3, 4],
            "val/loss": [0.9, 1.4, 1.2, 1.3, 1.5],
            "val/rec_f1_macro": [0.06, 0.3, 0.41, 0.41, float("nan")],
        }
    )
    assert int(hist.loc[best_epoch_index(hist), "epoch"]) == 3  # 0.41 twice: the later
    assert _best_row(hist)["epoch"] == 3 and _best_row(hist)["val/rec_f1_macro"] == 0.41
    # row order does not matter, the epoch does
    shuffled = hist.sample(frac=1, random_state=0)
    assert int(shuffled.loc[best_epoch_index(shuffled), "epoch"]) == 3
    # NaN counts as the lowest; all equal: the last epoch
    assert _best_row(hist.assign(**{"val/rec_f1_macro": 0.5}))["epoch"] == 4
    assert _best_row(hist.assign(**{"val/rec_f1_macro": float("nan")}))["epoch"] == 4
    assert best_epoch_index(hist.drop(columns="val/rec_f1_macro")) is None
    assert _best_row(pd.DataFrame()) == {}


def test_best_checkpoint_moves_to_a_later_epoch_of_an_equal_score(tmp_path):
    """Lightning keeps the first of equal scores; birdstack's best.ckpt takes the later."""

    class Strategy:
        @staticmethod
        def reduce_boolean_decision(decision: bool) -> bool:
            return decision

    trainer = SimpleNamespace(strategy=Strategy())
    cb = LaterTiesCheckpoint(dirpath=tmp_path, filename="best", monitor="m", mode="max")
    assert cb.check_monitor_top_k(trainer, torch.tensor(0.4))  # nothing kept yet
    path = str(tmp_path / "best.ckpt")
    cb.best_k_models, cb.kth_best_model_path = {path: torch.tensor(0.4)}, path
    assert cb.check_monitor_top_k(trainer, torch.tensor(0.4))  # a tie: the later epoch
    assert cb.check_monitor_top_k(trainer, torch.tensor(0.5))
    assert not cb.check_monitor_top_k(trainer, torch.tensor(0.3))
    assert not cb.check_monitor_top_k(trainer, torch.tensor(float("nan")))
    assert not cb.check_monitor_top_k(trainer, None)
    plain = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="m", mode="max")
    plain.best_k_models, plain.kth_best_model_path = dict(cb.best_k_models), path
    assert not plain.check_monitor_top_k(trainer, torch.tensor(0.4))  # why the subclass


def test_checkpoint_carries_preprocessing_and_predicts_identically(demo_dir, cache_dir, tmp_path):
    cfg = _cfg(demo_dir, cache_dir, tmp_path / "run", **{"trainer.epochs": 2})
    result = train(cfg)
    ckpt = load_checkpoint(result.last_checkpoint)
    net, info = build_model_from_checkpoint(ckpt)
    assert info.classes == sorted(info.classes) and len(info.classes) == 6
    assert info.preprocessing.encoding.target_frames is not None
    assert info.model_name == "mobilenet_compact"
    # real inputs, encoded as in training: the network rebuilt from the checkpoint alone
    # gives exactly the logits of the network that was just trained (training runs it in
    # channels-last layout, so the rebuilt one is compared in that layout: bit for bit;
    # in the default layout only the order of float sums differs)
    m = pd.read_csv(tmp_path / "run" / "data" / "manifest.csv")
    ds = BirdDataset(m[~m["dropped"]].head(4), info.preprocessing)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.inference_mode():
        trained = result.net(x)
        torch.testing.assert_close(net(x), trained, rtol=1e-4, atol=1e-5)
        last = torch.channels_last
        net = net.to(memory_format=last)
        torch.testing.assert_close(net(x.contiguous(memory_format=last)), trained, rtol=0, atol=0)
    assert trained.std(0).max() > 0  # not a constant output: the comparison means something


def test_same_seed_same_metrics(demo_dir, cache_dir, tmp_path):
    a = train(_cfg(demo_dir, cache_dir, tmp_path / "a", **{"trainer.epochs": 2}))
    b = train(_cfg(demo_dir, cache_dir, tmp_path / "b", **{"trainer.epochs": 2}))
    cols = ["train/loss", "val/loss", "val/acc"]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols])


@pytest.mark.parametrize(("precise_bn", "ema"), [(False, None), (True, None), (True, 0.9)])
def test_resume_continues_to_the_same_result(demo_dir, cache_dir, tmp_path, precise_bn, ema):
    # the resumed run is given more epochs than it started with, so a schedule computed from
    # the epochs (the default warm-up + cosine) would differ by design: a constant rate here;
    # a killed run resumed with its own epochs and schedule is test_kill_resume's
    # (with trainer.ema_decay the checkpoint carries the average and the training weights)
    over = {"trainer.epochs": 3, "trainer.precise_bn": precise_bn, "optim.scheduler": "none"}
    over["trainer.ema_decay"] = ema
    full = train(_cfg(demo_dir, cache_dir, tmp_path / "full", **over))
    part = _cfg(demo_dir, cache_dir, tmp_path / "part", **{**over, "trainer.epochs": 1})
    train(part)
    with pytest.raises(ConfigError, match="--resume"):
        train(part.override({"trainer.epochs": 3}))
    # resuming with other settings would train another model in the second half: refused,
    # with the run's own config to resume it with (the epochs may grow)
    other = part.override({"trainer.epochs": 3, "optim.lr": 0.01, "augment.mixup_alpha": 0.0})
    with pytest.raises(ConfigError) as e:
        train(other, resume=True)
    msg = str(e.value)
    assert "augment.mixup_alpha: 0.4 -> 0.0; optim.lr: 0.001 -> 0.01" in msg, msg
    assert f"--config {tmp_path / 'part' / 'config.yaml'} --resume" in msg
    resumed = train(part.override({"trainer.epochs": 3}), resume=True)
    cols = ["train/loss", "val/loss", "val/acc"]
    pd.testing.assert_frame_equal(
        full.history[cols].reset_index(drop=True), resumed.history[cols].reset_index(drop=True)
    )


def _stem_and_val_loss(net, info, run_dir: Path) -> tuple[torch.Tensor, Any, float]:
    """A rebuilt network's stem outputs on fold 0's training inputs (plain: no
    augmentation), its first BatchNorm, and its loss on the validation recordings."""
    m = pd.read_csv(run_dir / "data" / "manifest.csv")
    rows = m[~m["dropped"] & (m["fold"] != 0)]
    assert 20 <= len(rows) <= 64
    ds = BirdDataset(rows, info.preprocessing)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    conv, bn = net.backbone.features[0][0], net.backbone.features[0][1]
    val = m[~m["dropped"] & (m["fold"] == 0)]
    vs = BirdDataset(val, info.preprocessing)
    xv = torch.stack([vs[i][0] for i in range(len(vs))])
    yv = torch.tensor([vs[i][1] for i in range(len(vs))])
    with torch.no_grad():
        z = conv(x)
        loss = torch.nn.functional.cross_entropy(net.eval()(xv), yv).item()
    return z, bn, loss


@pytest.mark.parametrize("precise", [True, False])
def test_precise_bn_holds_the_statistics_of_the_training_inputs(
    demo_dir, cache_dir, tmp_path, precise
):
    # one epoch of one batch (batch 64 > the training recordings of fold 0), then compare
    # the checkpoint's first BatchNorm statistics with the stem convolution's outputs on the
    # real training inputs, computed here from the rebuilt network
    # (without SpecAugment: precise BN sees the training inputs as training does, masks and
    # all, like pycls' and detectron2's; this compares with the plain inputs)
    over = {"trainer.epochs": 1, "trainer.batch_size": 64, "trainer.precise_bn": precise}
    over["augment.specaugment"] = False
    result = train(_cfg(demo_dir, cache_dir, tmp_path / "run", **over))
    net, info = build_model_from_checkpoint(load_checkpoint(result.last_checkpoint))
    z, bn, loss = _stem_and_val_loss(net, info, tmp_path / "run")
    mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=True)
    matches = torch.allclose(bn.running_mean, mean, rtol=1e-4, atol=1e-5) and torch.allclose(
        bn.running_var, var, rtol=1e-3, atol=1e-5
    )
    assert matches == precise
    # the epoch's validation ran with the statistics the checkpoint holds (recomputed
    # before validation, not after): its loss is the rebuilt network's loss on the
    # validation recordings (one batch)
    assert loss == pytest.approx(result.history["val/loss"].iloc[0], rel=1e-4)


def test_ema_weights_are_validated_saved_and_deployed(demo_dir, cache_dir, tmp_path):
    # trainer.ema_decay: the checkpoint's weights are the moving average, not the training
    # weights (kept beside them for --resume); validation scored the average, with BatchNorm
    # statistics recomputed for it (precise BN after the swap), and predict loads it
    over = {"trainer.epochs": 3, "trainer.batch_size": 64, "trainer.ema_decay": 0.9}
    over["augment.specaugment"] = False
    result = train(_cfg(demo_dir, cache_dir, tmp_path / "run", **over))
    ckpt = load_checkpoint(result.last_checkpoint)
    avg, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert avg.keys() == current.keys()
    w = "net.backbone.features.0.0.weight"
    assert not torch.allclose(avg[w], current[w])
    net, info = build_model_from_checkpoint(ckpt)
    assert torch.equal(net.backbone.features[0][0].weight, avg[w])
    z, bn, loss = _stem_and_val_loss(net, info, tmp_path / "run")
    torch.testing.assert_close(bn.running_mean, z.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert loss == pytest.approx(result.history["val/loss"].iloc[-1], rel=1e-4)
    from birdstack.inference.predictor import Predictor

    pred = Predictor.from_checkpoint(result.last_checkpoint, threads=1)
    first = sorted(demo_dir.glob("train_audio/*/*.ogg"))[0]
    assert pred.predict(first).probs.shape == (len(info.classes),)
    with pytest.raises(ConfigError, match="ema_decay"):
        _cfg(demo_dir, cache_dir, tmp_path / "bad", **{"trainer.ema_decay": 1.0})


def test_unknown_model_and_optimizer_fail_before_work(demo_dir, cache_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'.*mobilenet_compact"):
        train(_cfg(demo_dir, cache_dir, tmp_path / "m", **{"model.name": "resnet9000"}))
    with pytest.raises(ConfigError, match="unknown optimizer 'lbfgs'.*adamw"):
        train(_cfg(demo_dir, cache_dir, tmp_path / "o", **{"optim.name": "lbfgs"}))
    assert not (tmp_path / "m" / "data").exists()  # failed before preparing anything
    with pytest.raises(ConfigError, match="band_norm='mean': choose one of none, median, pcen"):
        _cfg(demo_dir, cache_dir, tmp_path / "b", **{"preprocessing.spectrogram.band_norm": "mean"})
    with pytest.raises(ConfigError, match=r"spectrogram.pcen.gain=-1.0 must be >= 0"):
        _cfg(demo_dir, cache_dir, tmp_path / "b", **{"preprocessing.spectrogram.pcen.gain": -1})


def test_pcen_settings_come_from_the_config_and_old_checkpoints_keep_the_defaults(
    demo_dir, cache_dir, tmp_path
):
    """PCEN's settings are config keys that reach every input's normalisation and travel
    in the preprocessing (its dict round trip); a checkpoint's preprocessing written before
    they existed loads with librosa's defaults."""
    from birdstack.config import PcenConfig, Preprocessing, from_dict, to_dict

    over = {"preprocessing.spectrogram.band_norm": "pcen"}
    over["preprocessing.spectrogram.pcen.time_constant"] = "0.06"
    pre = _cfg(demo_dir, cache_dir, tmp_path / "p", **over).preprocessing
    assert pre.spectrogram.pcen == PcenConfig(time_constant=0.06)
    assert pre.input_norm().pcen.time_constant == 0.06
    assert from_dict(Preprocessing, to_dict(pre)) == pre
    old = to_dict(Preprocessing())
    del old["spectrogram"]["pcen"]
    assert from_dict(Preprocessing, old).spectrogram.pcen == PcenConfig()


def test_resume_with_a_different_class_list_is_refused(demo_dir, cache_dir, tmp_path):
    cfg = _cfg(demo_dir, cache_dir, tmp_path / "run", **{"trainer.epochs": 1})
    train(cfg)
    other = cfg.override({"data.top_k": 4, "trainer.epochs": 2})
    with pytest.raises(ConfigError, match=r"other settings \(data.top_k: 6 -> 4\)"):
        train(other, resume=True)  # the run's config.yaml says so first
    # without it (a folder copied without its config), the checkpoint's classes still do
    (tmp_path / "run" / "config.yaml").unlink()
    with pytest.raises(Exception, match="trained on classes"):
        train(other, resume=True)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(demo_dir, cache_dir, tmp_path):
    """Two DDP processes train the default detector. Each serves half of every epoch, but
    both validate on all the windows of every validation recording, so the logged
    recording-level figures and the checkpoint's thresholds are those of the whole
    validation fold: evaluate on that fold reproduces them."""
    import numpy as np

    from birdstack.evaluation.evaluate import evaluate_checkpoint
    from birdstack.evaluation.metrics import tune_thresholds
    from birdstack.inference.predictor import Predictor

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "birdstack.cli.main", "train", "--data", str(demo_dir)]
    cmd += ["--cache-dir", str(cache_dir), "--epochs", "1", "--batch-size", "8"]
    cmd += ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    cmd += ["--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = out / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    single = Config.from_yaml(out / "config.yaml")
    assert single.task.kind == "multilabel"
    assert ckpt["birdstack"]["classes"] == sorted(ckpt["birdstack"]["classes"])
    assert len(ckpt["birdstack"]["classes"]) == single.data.top_k
    hist = pd.read_csv(out / "metrics.csv")
    assert (
        hist["train/loss"].notna().all()
        and torch.isfinite(torch.tensor(hist["val/loss"].values)).all()
    )
    res = evaluate_checkpoint(
        last,
        demo_dir,
        manifest=out / "data" / "manifest.csv",
        split="val",
        cache_dir=cache_dir,
        progress=False,
    )
    assert res.recording.cmap == pytest.approx(float(hist["val/rec_cmap"].iloc[-1]), abs=1e-4)
    classes = ckpt["birdstack"]["classes"]
    pred = res.predictions
    y = np.array([[c in str(t).split(";") for c in classes] for t in pred["true"]], float)
    p = pred[[f"p_{c}" for c in classes]].to_numpy()
    expected = tune_thresholds(y, p, single.task.threshold, single.task.threshold_beta)
    np.testing.assert_allclose(Predictor.from_checkpoint(last).thresholds, expected, atol=1e-6)


def test_default_encoding_is_segments_for_cnns_and_pooled_for_birdnet_heads():
    """``encoding.kind="auto"``: what worked on real data, decided by the model's front end."""
    from birdstack.training.train import resolve_config

    cfg = Config()
    assert cfg.preprocessing.encoding.kind == "auto"
    cnn = resolve_config(cfg).preprocessing
    assert (cnn.frontend, cnn.encoding.kind, cnn.encoding.train_crops) == (
        "logmel",
        "segments",
        None,  # every window of every recording, each epoch
    )
    assert cnn.input_shape() == cfg.preprocessing.input_shape() == (1, 128, cnn.window_frames())
    head = resolve_config(cfg.override({"model.name": "birdnet_linear"})).preprocessing
    assert (head.frontend, head.encoding.kind) == ("birdnet", "pooled")
    # an explicit choice is kept, also through the switch to the BirdNET front end
    stacked = cfg.override({"preprocessing.encoding.kind": "stacked"})
    assert resolve_config(stacked).preprocessing.encoding.kind == "stacked"
    windows = cfg.override(
        {"model.name": "birdnet_linear", "preprocessing.encoding.kind": "segments"}
    )
    assert resolve_config(windows).preprocessing.encoding.kind == "segments"

"""Training-only augmentations, mixup, label smoothing, warm-up + cosine and class-balanced
sampling (issue #12's training recipe), on the embedded demo data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from birdstack.config import AugmentConfig, Config, ConfigError, OptimConfig
from birdstack.data.augment import (
    TrainAugment,
    check_augment,
    mix_noise_db,
    mixup,
    mixup_draw,
    noise_crop,
    noise_features,
    one_hot_targets,
    soft_cross_entropy,
    time_shift,
)
from birdstack.data.datamodule import BirdDataModule, EpochSeededSampler
from birdstack.data.prepare import prepare
from birdstack.features.mel import normalize_db_np
from birdstack.training.checkpoint import load_checkpoint
from birdstack.training.module import WarmupCosine

pytestmark = pytest.mark.xdist_group("train")

ITEM_AUGMENTS = {
    "shift": {"time_shift": 0.3},
    "specaugment": {"specaugment": True, "time_masks": 2, "freq_masks": 2},
    "noise": {"noise_snr_db": [0.0, 6.0]},  # noise_dir filled in by the test
    "noise+gain": {"noise_snr_db": [20.0, 20.0], "gain_db": [-20.0, -20.0]},
}


@pytest.fixture(scope="module")
def noise_dir(demo_dir, tmp_path_factory) -> Path:
    """Two noise clips cut from a demo recording: 3 s (shorter than a window) and 8 s."""
    audio, sr = sf.read(demo_dir / "train_audio/vireo_latimeri" / _first_ogg(demo_dir))
    audio = audio if audio.ndim == 1 else audio.mean(axis=1)
    out = tmp_path_factory.mktemp("noise")
    sf.write(out / "short.wav", audio[: 3 * sr], sr)
    sf.write(out / "long.wav", audio[3 * sr : 11 * sr], sr)
    return out


def _first_ogg(demo_dir: Path) -> str:
    return sorted(p.name for p in (demo_dir / "train_audio/vireo_latimeri").glob("*.ogg"))[0]


def _prepare(demo_dir, cache_dir, out, encoding):
    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "top_k": 3, "workers": 1},
            "preprocessing": {"encoding": encoding},
        }
    )
    return prepare(cfg.data, cfg.preprocessing, out, progress=False)


@pytest.fixture(scope="module")
def prepared(demo_dir, cache_dir, tmp_path_factory):
    """``segments`` (one random crop per recording) and ``stacked`` prepared data."""
    return {
        "segments": _prepare(
            demo_dir,
            cache_dir,
            tmp_path_factory.mktemp("seg"),
            {"kind": "segments", "train_crops": 1},
        ),
        "stacked": _prepare(
            demo_dir, cache_dir, tmp_path_factory.mktemp("stk"), {"kind": "stacked", "short": "pad"}
        ),
    }


def _augment(prep, cache_dir, **keys) -> TrainAugment:
    cfg = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in keys.items()})
    noise = []
    if cfg.noise_dir:
        noise = noise_features(cfg.noise_dir, prep.preprocessing, cache_dir, 1, False)
    return TrainAugment(cfg, prep.preprocessing, noise)


def _keys(name: str, noise_dir: Path) -> dict:
    keys = dict(ITEM_AUGMENTS[name])
    if "noise" in name:
        keys["noise_dir"] = str(noise_dir)
    return keys


@pytest.mark.parametrize("encoding", ["segments", "stacked"])
@pytest.mark.parametrize("name", list(ITEM_AUGMENTS))
def test_each_augmentation_changes_training_inputs_never_validation(
    prepared, cache_dir, noise_dir, encoding, name
):
    prep = prepared[encoding]
    aug = _augment(prep, cache_dir, **_keys(name, noise_dir))
    plain = BirdDataModule(prep, val_fold=0, batch_size=4, seed=1)
    dm = BirdDataModule(prep, val_fold=0, batch_size=4, seed=1, augment=aug)
    assert dm.train_set.augment is aug and dm.val_set.augment is None
    changed = 0
    for idx in range(6):
        # the same (index, epoch) serves the same crop with and without augmentation
        x, y, rec = dm.train_set[(idx, 0)]
        x0, y0, rec0 = plain.train_set[(idx, 0)]
        assert x.shape == x0.shape and (y, rec) == (y0, rec0)
        assert float(x.min()) >= 0 and float(x.max()) <= 1
        changed += not torch.equal(x, x0)
    assert changed >= 5, f"{name} changed {changed} of 6 training inputs"
    # validation: every item exactly as without augmentation
    for idx in range(len(dm.val_set)):
        torch.testing.assert_close(dm.val_set[idx][0], plain.val_set[idx][0], rtol=0, atol=0)


def _unstack(x: torch.Tensor) -> np.ndarray:
    """``[channels, n_mels, f]`` -> ``[n_mels, channels * f]``: the input's real time axis."""
    c, m, f = x.shape
    return x.numpy().transpose(1, 0, 2).reshape(m, c * f)


def test_stacked_time_shift_follows_real_time_across_channels(prepared, cache_dir, noise_dir):
    prep = prepared["stacked"]
    aug = _augment(prep, cache_dir, time_shift=0.2)
    plain = BirdDataModule(prep, val_fold=0, batch_size=4, seed=1).train_set
    ds = BirdDataModule(prep, val_fold=0, batch_size=4, seed=1, augment=aug).train_set
    for idx in range(3):
        got, want = _unstack(ds[(idx, 2)][0]), _unstack(plain[(idx, 2)][0])
        most = int(0.2 * want.shape[1])
        shifts = [k for k in range(-most, most + 1) if np.array_equal(time_shift(want, k), got)]
        assert shifts, "the stacked input is not a shift of the whole input along real time"


def test_same_seed_same_augmented_batch_other_epoch_other_batch(prepared, cache_dir, noise_dir):
    prep = prepared["segments"]
    keys = {**_keys("noise", noise_dir), **ITEM_AUGMENTS["specaugment"], "time_shift": 0.1}

    def first_batch(seed: int, epoch: int) -> torch.Tensor:
        aug = _augment(prep, cache_dir, **keys)
        loader = BirdDataModule(
            prep, val_fold=0, batch_size=4, seed=seed, augment=aug
        ).train_dataloader()
        assert loader.sampler.with_epoch  # (index, epoch) reaches the dataset
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[0]

    a = first_batch(seed=0, epoch=3)
    torch.testing.assert_close(first_batch(seed=0, epoch=3), a, rtol=0, atol=0)
    assert not torch.equal(first_batch(seed=0, epoch=4), a)
    assert not torch.equal(first_batch(seed=1, epoch=3), a)

    # the augmentation itself (not only the crop or the order) is drawn per epoch and seed:
    # stacked items are the same in every epoch without augmentation
    stacked = prepared["stacked"]
    aug = _augment(stacked, cache_dir, **keys)
    ds = BirdDataModule(stacked, val_fold=0, batch_size=4, seed=0, augment=aug).train_set
    other = BirdDataModule(stacked, val_fold=0, batch_size=4, seed=1, augment=aug).train_set
    for idx in range(3):
        torch.testing.assert_close(ds[(idx, 3)][0], ds[(idx, 3)][0], rtol=0, atol=0)
        assert not torch.equal(ds[(idx, 3)][0], ds[(idx, 4)][0])
        assert not torch.equal(ds[(idx, 3)][0], other[(idx, 3)][0])


def test_stacked_augmentations_pass_index_and_epoch(prepared, cache_dir, noise_dir):
    # stacked has no random crops: with augmentations on the sampler must still pass the epoch
    prep = prepared["stacked"]
    dm = BirdDataModule(prep, val_fold=0, batch_size=4)
    assert not dm.train_dataloader().sampler.with_epoch
    aug = _augment(prep, cache_dir, specaugment=True)
    dm = BirdDataModule(prep, val_fold=0, batch_size=4, augment=aug)
    assert dm.train_dataloader().sampler.with_epoch
    assert isinstance(next(iter(dm.stats_dataloader(epoch=1).sampler)), tuple)


def test_noise_snr_high_barely_changes_low_changes_a_lot(prepared, cache_dir, noise_dir):
    prep = prepared["segments"]
    top_db = prep.preprocessing.spectrogram.top_db
    window = prep.preprocessing.window_frames()
    files = noise_features(str(noise_dir), prep.preprocessing, cache_dir, 1, False)
    assert len(files) == 2
    rng = np.random.default_rng(0)
    db = np.load(prep.kept["cache_file"].iloc[0])[:, :window]
    noise = noise_crop(np.load(files[0]), window, rng)  # the 3 s clip, tiled to 5 s
    assert noise.shape == db.shape
    clean = normalize_db_np(db, top_db)

    def change(snr: float) -> float:
        return float(np.abs(normalize_db_np(mix_noise_db(db, noise, snr), top_db) - clean).mean())

    assert change(60.0) < 0.002
    assert change(-10.0) > 0.05
    assert change(-10.0) > change(10.0) > change(30.0)
    # the SNR is the ratio of mean mel powers
    mixed = 10 ** (mix_noise_db(db, noise, 0.0) / 10)
    assert np.isclose(mixed.mean(), 2 * (10 ** (db / 10)).mean(), rtol=1e-6)


def test_gain_is_relative_to_the_noise_and_refused_without_it(prepared, cache_dir, noise_dir):
    with pytest.raises(ConfigError, match="gain_db needs augment.noise_dir"):
        AugmentConfig(gain_db=(-6.0, 6.0))
    prep = prepared["segments"]
    db = np.load(prep.kept["cache_file"].iloc[0])[:, :300]
    quiet = _augment(prep, cache_dir, noise_dir=str(noise_dir), noise_snr_db=(20, 20))
    loud = _augment(
        prep,
        cache_dir,
        noise_dir=str(noise_dir),
        noise_snr_db=(20, 20),
        gain_db=(-20, -20),
    )
    a = quiet.add_noise(db, np.random.default_rng(5))
    b = loud.add_noise(db, np.random.default_rng(5))
    # the same draws (clip, crop); a gain of -20 dB on the signal makes the SNR 0 dB
    assert not np.allclose(a, b)
    pa = (10 ** (a / 10)).mean() / (10 ** (db / 10)).mean()
    pb = (10 ** (b / 10)).mean() / (10 ** (db / 10)).mean()
    assert np.isclose(pa, 1.01, rtol=1e-4) and np.isclose(pb, 2.0, rtol=1e-4)


def test_spectrogram_augmentations_refused_for_birdnet_features():
    cfg = Config.from_dict(
        {"preprocessing": {"frontend": "birdnet"}, "augment": {"specaugment": True}}
    )
    with pytest.raises(ConfigError, match="BirdNET"):
        check_augment(cfg)
    check_augment(cfg.override({"augment.specaugment": False, "augment.mixup_alpha": 0.2}))
    with pytest.raises(ConfigError, match="BirdNET"):
        TrainAugment(AugmentConfig(time_shift=0.1), cfg.preprocessing)


def test_mixup_targets_are_the_lam_weighted_mix():
    x = torch.randn(5, 1, 4, 6)
    y = torch.tensor([0, 2, 1, 2, 0])
    targets = one_hot_targets(y, 3)
    lam, perm = mixup_draw(0.4, 5, seed=0, epoch=0, batch_idx=0)
    assert 0 < lam < 1
    mx, mt = mixup(x, targets, lam, perm)
    torch.testing.assert_close(mt.sum(1), torch.ones(5))
    torch.testing.assert_close(mt, lam * targets + (1 - lam) * targets[perm])
    torch.testing.assert_close(mx, lam * x + (1 - lam) * x[perm])
    # multi-hot targets mix the same way (per class)
    multi = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    _, mm = mixup(torch.zeros(2, 1), multi, 0.7, torch.tensor([1, 0]))
    torch.testing.assert_close(mm, torch.tensor([[0.7, 0.7, 0.3], [0.3, 0.3, 0.7]]))
    # the seed, epoch and batch fix the draw
    lam2, perm2 = mixup_draw(0.4, 5, seed=0, epoch=1, batch_idx=0)
    assert (lam2, perm2.tolist()) != (lam, perm.tolist())


def test_soft_cross_entropy_matches_label_smoothing_and_skips_unlabelled():
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    for eps in (0.0, 0.1):
        want = F.cross_entropy(logits, y, label_smoothing=eps)
        torch.testing.assert_close(soft_cross_entropy(logits, one_hot_targets(y, 4), eps), want)
    unl = torch.tensor([0, -1, 2, -1, 1, 0])  # -1: unlabelled (distillation): a zero row
    ok = unl >= 0
    torch.testing.assert_close(
        soft_cross_entropy(logits, one_hot_targets(unl, 4), 0.1),
        F.cross_entropy(logits[ok], unl[ok], label_smoothing=0.1),
    )


def test_warmup_cosine_rises_then_falls():
    with pytest.raises(ConfigError, match="warmup_cosine"):
        OptimConfig(scheduler="none", warmup_epochs=1)
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(4, 20))
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = int(np.argmax(lrs))
    assert peak == 3 and np.isclose(lrs[peak], 0.1)
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))  # rises
    assert all(a > b for a, b in zip(lrs[peak + 1 :], lrs[peak + 2 :]))  # then falls
    assert lrs[-1] < 0.002


def test_class_balanced_sampler_is_seeded_and_oversamples_the_rare_class():
    labels = np.array([0] * 18 + [1] * 2)
    s = EpochSeededSampler(20, seed=3, labels=labels)
    s.set_epoch(1)
    a = list(s)
    assert len(a) == 20 and a == list(s)  # deterministic per (seed, epoch)
    s.set_epoch(2)
    assert list(s) != a
    assert list(EpochSeededSampler(20, seed=4, labels=labels)) != list(
        EpochSeededSampler(20, seed=3, labels=labels)
    )
    rare = []
    for epoch in range(20):
        s.set_epoch(epoch)
        rare.append(sum(labels[i] == 1 for i in s))
    assert np.mean(rare) > 7  # about half of the draws, against 2 of 20 with shuffle
    # with per-epoch draws: (index, epoch, k), k counting earlier servings of the index
    s = EpochSeededSampler(20, seed=3, labels=labels, with_epoch=True)
    items = list(s)
    for i, epoch, k in items:
        assert epoch == 0 and k == sum(j == i for j, _, _ in items[: items.index((i, epoch, k))])


def test_sampler_splits_each_epoch_between_ddp_processes():
    """Under DDP every process serves a strided share of the one seeded epoch order
    (padded to equal lengths), class-balanced draws and per-epoch draws included."""
    labels = np.array([0] * 9 + [1] * 2)
    for kw in ({}, {"labels": labels}, {"labels": labels, "with_epoch": True}):
        whole = EpochSeededSampler(11, seed=5, **kw)
        parts = [EpochSeededSampler(11, seed=5, num_replicas=3, rank=r, **kw) for r in range(3)]
        for s in (whole, *parts):
            s.set_epoch(4)
        order = list(whole)
        served = [list(p) for p in parts]
        assert [len(x) for x in served] == [len(p) for p in parts] == [4, 4, 4]
        padded = order + order[:1]
        assert [padded[r::3] for r in range(3)] == served
    with pytest.raises(ValueError, match="rank 2"):
        EpochSeededSampler(4, seed=0, num_replicas=2, rank=2)


def test_class_balanced_loader_repeats_get_their_own_crops(prepared):
    prep = prepared["segments"]
    dm = BirdDataModule(prep, val_fold=0, batch_size=4, seed=0, sampling="class_balanced")
    sampler = dm.train_dataloader().sampler
    assert sampler.weights is not None and sampler.with_epoch
    repeat = next((i, e, k) for i, e, k in sampler if k > 0)
    first = dm.train_set[(repeat[0], repeat[1])]
    again = dm.train_set[repeat]
    assert first[1:] == again[1:] and not torch.equal(first[0], again[0])


def _recipe_cfg(demo_dir, cache_dir, noise_dir, out: Path, **over) -> Config:
    return Config.from_yaml(
        Path(__file__).resolve().parents[1] / "experiments" / "recipe.yaml",
        [
            f"data.path={demo_dir}",
            f"data.cache_dir={cache_dir}",
            "data.top_k=3",
            "data.workers=1",
            "task.kind=multiclass",
            "preprocessing.encoding.kind=segments",
            "preprocessing.encoding.train_crops=1",
            f"augment.noise_dir={noise_dir}",
            "trainer.batch_size=8",
            "trainer.accelerator=cpu",
            "trainer.progress=false",
            f"out_dir={out}",
            *[f"{k}={v}" for k, v in over.items()],
        ],
    )


def test_short_run_with_the_full_recipe_records_it_in_the_checkpoint(
    demo_dir, cache_dir, noise_dir, tmp_path
):
    from birdstack.training.train import train

    cfg = _recipe_cfg(
        demo_dir, cache_dir, noise_dir, tmp_path / "run", **{"trainer.epochs": 1}
    ).override({"trainer.limit_train_batches": 2, "data.sampling": "class_balanced"})
    a = cfg.augment
    assert a.item_level and a.mixup_alpha > 0 and a.specaugment and a.gain_db != (0.0, 0.0)
    assert cfg.optim.scheduler == "warmup_cosine" and cfg.optim.label_smoothing > 0
    result = train(cfg)
    assert np.isfinite(result.history["train/loss"]).all()
    ckpt = load_checkpoint(result.last_checkpoint)
    saved = ckpt["birdstack"]["config"]
    assert saved["augment"] == cfg.to_dict()["augment"]
    assert saved["augment"]["noise_dir"] == str(noise_dir)
    assert saved["optim"]["scheduler"] == "warmup_cosine"
    assert saved["data"]["sampling"] == "class_balanced"
    assert ckpt["lr_schedulers"][0]["_step_count"] == 3  # stepped per optimizer step


def test_resumed_recipe_run_equals_the_uninterrupted_one(demo_dir, cache_dir, noise_dir, tmp_path):
    """Augmentations and mixup draw from (seed, epoch, item/batch): resuming after epoch 1
    gives the second epoch of a run that was never interrupted."""
    from birdstack.training.train import train

    over = {"optim.scheduler": "none", "optim.warmup_epochs": 0, "trainer.limit_train_batches": 2}
    whole = train(
        _recipe_cfg(
            demo_dir, cache_dir, noise_dir, tmp_path / "a", **{"trainer.epochs": 2}
        ).override(over)
    )
    part = _recipe_cfg(demo_dir, cache_dir, noise_dir, tmp_path / "b", **{"trainer.epochs": 1})
    train(part.override(over))
    resumed = train(part.override({**over, "trainer.epochs": 2}), resume=True)
    cols = ["train/loss", "val/loss", "val/acc"]
    pd.testing.assert_frame_equal(resumed.history[cols], whole.history[cols])


def test_cli_flags_and_sweep_overrides_set_the_recipe_keys(tmp_path):
    from birdstack.cli.main import build_parser, config_from_args
    from birdstack.sweeps.sweep import experiment_from_dict, plan_runs

    argv = ["train", "--noise-dir", "N", "--mixup", "0.3", "--specaugment"]
    argv += ["--label-smoothing", "0.1", "--warmup-epochs", "2", "--sampling", "class_balanced"]
    argv += ["--noise-snr-db", "0,20", "--gain-db=-6,6", "--time-shift", "0.2"]
    argv += ["--loader-workers", "3"]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert cfg.trainer.num_workers == 3
    a = cfg.augment
    assert (a.noise_dir, a.mixup_alpha, a.specaugment, a.time_shift) == ("N", 0.3, True, 0.2)
    assert a.noise_snr_db == (0.0, 20.0) and a.gain_db == (-6.0, 6.0)
    assert cfg.optim.label_smoothing == 0.1 and cfg.data.sampling == "class_balanced"
    assert cfg.optim.warmup_epochs == 2 and cfg.optim.scheduler == "warmup_cosine"
    assert Config().augment == AugmentConfig()  # left open: the front end decides (below)
    exp = experiment_from_dict({"name": "x", "folds": [0]})
    sets = ["augment.mixup_alpha=0.2", "augment.specaugment=true", "augment.noise_snr_db=[1,2]"]
    run = plan_runs(exp, tmp_path, overrides=sets, progress=False)[0]
    assert run.config.augment.mixup_alpha == 0.2 and run.config.augment.specaugment
    assert run.config.augment.noise_snr_db == (1.0, 2.0)
    with pytest.raises(ConfigError, match="augment.time_shift"):
        plan_runs(exp, tmp_path, overrides=["augment.time_shift=2"], progress=False)


def test_training_defaults_follow_the_front_end_and_keep_what_a_config_sets(tmp_path):
    from birdstack.cli.main import build_parser, config_from_args
    from birdstack.training.module import BirdClassifier
    from birdstack.training.train import resolve_config

    # a log-mel CNN trains with the recipe minus noise (default_recipe_compact) ...
    cnn = resolve_config(Config().override({"task.kind": "multiclass"}))
    assert (cnn.optim.scheduler, cnn.optim.warmup_epochs, cnn.optim.label_smoothing) == (
        "warmup_cosine",
        1.0,
        0.1,
    )
    assert cnn.augment.specaugment and cnn.augment.mixup_alpha == 0.4 and not cnn.augment.noise_dir
    # ... a head on BirdNET features without it (default_recipe_birdnet), and the
    # spectrogram masks would be refused there
    head = resolve_config(Config().override({"model.name": "birdnet_fused"}))
    assert (head.optim.scheduler, head.optim.warmup_epochs, head.optim.label_smoothing) == (
        "none",
        0.0,
        0.0,
    )
    assert head.augment.specaugment is False and head.augment.mixup_alpha == 0.0
    # the default task is the detector: multi-label BCE has no label smoothing
    assert Config().task.kind == "multilabel" and Config().data.other_species == "negatives"
    assert resolve_config(Config()).optim.label_smoothing == 0
    # what a config or a flag says is kept; a schedule of its own has no warm-up
    argv = ["train", "--no-specaugment", "--mixup", "0", "--scheduler", "cosine"]
    plain = resolve_config(config_from_args(build_parser().parse_args(argv)))
    assert plain.augment.specaugment is False and plain.augment.mixup_alpha == 0.0
    assert (plain.optim.scheduler, plain.optim.warmup_epochs) == ("cosine", 0.0)
    argv = ["train", "--warmup-epochs", "3"]
    warm = resolve_config(config_from_args(build_parser().parse_args(argv)))
    assert (warm.optim.scheduler, warm.optim.warmup_epochs) == ("warmup_cosine", 3.0)
    keep = Config().override({"optim.label_smoothing": 0.0, "model.name": "birdnet_linear"})
    assert resolve_config(keep).optim.label_smoothing == 0.0
    # resolving twice changes nothing (sweeps compare saved and planned configs this way)
    assert resolve_config(cnn) == cnn and resolve_config(head) == head
    # the console line says what the run trains with, defaults included
    from birdstack.training.train import describe_training

    assert "SpecAugment, mixup 0.4 (no noise" in describe_training(cnn)
    assert describe_training(plain).endswith(
        "cosine per epoch, 20 epochs of batch 16; "  # a detector: BCE, no label smoothing
        "no augmentation (no noise: --noise-dir DIR adds it)"
    )
    noisy = resolve_config(Config().override({"augment.noise_dir": str(tmp_path)}))
    assert f"noise from {tmp_path} at 3-30 dB SNR" in describe_training(noisy)
    assert describe_training(head).endswith("constant rate, 20 epochs of batch 16; no augmentation")
    # the module refuses a config whose defaults are still open
    with pytest.raises(ConfigError, match="resolve_training"):
        BirdClassifier(torch.nn.Linear(2, 2), OptimConfig(), ["a", "b"])


def test_pcen_inputs_are_augmented_after_the_noise_and_validated_plain(
    prepared, cache_dir, noise_dir
):
    """band_norm='pcen' through TrainAugment: noise is mixed in dB before PCEN, so
    training inputs change; with no augmentation at all they are the plain PCEN inputs;
    validation never changes; PCEN values are >= 0 and not clipped to [0, 1]."""
    prep = prepared["segments"]
    spec = dataclasses.replace(prep.preprocessing.spectrogram, band_norm="pcen")
    prep = dataclasses.replace(
        prep, preprocessing=dataclasses.replace(prep.preprocessing, spectrogram=spec)
    )
    plain = BirdDataModule(prep, val_fold=0, batch_size=4, seed=1)
    none = BirdDataModule(prep, val_fold=0, batch_size=4, seed=1, augment=_augment(prep, cache_dir))
    noisy = _augment(prep, cache_dir, **_keys("noise", noise_dir))
    dm = BirdDataModule(prep, val_fold=0, batch_size=4, seed=1, augment=noisy)
    changed = 0
    for idx in range(6):
        x0 = plain.train_set[(idx, 0)][0]
        torch.testing.assert_close(none.train_set[(idx, 0)][0], x0, rtol=0, atol=0)
        x = dm.train_set[(idx, 0)][0]
        assert float(x.min()) >= 0 and x.shape == x0.shape
        changed += not torch.equal(x, x0)
    assert changed >= 5
    assert max(float(plain.train_set[(i, 0)][0].max()) for i in range(6)) > 1  # not [0, 1]
    for idx in range(len(dm.val_set)):
        torch.testing.assert_close(dm.val_set[idx][0], plain.val_set[idx][0], rtol=0, atol=0)

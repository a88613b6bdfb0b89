"""The DataModule on the embedded data: segments windows, random training crops, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from birdstack.config import Config, ConfigError
from birdstack.data.datamodule import BirdDataModule, EpochSeededSampler
from birdstack.data.prepare import prepare
from birdstack.features.encoding import encode_segment
from birdstack.features.melbank import InputNorm


@pytest.fixture(scope="module")
def prepared_segments(demo_dir, cache_dir, tmp_path_factory):
    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir)},
            "preprocessing": {"encoding": {"kind": "segments", "train_crops": 2}},
        }
    )
    out = tmp_path_factory.mktemp("prepared-segments")
    return prepare(cfg.data, cfg.preprocessing, out, progress=False)


def _crop_start(db: np.ndarray, x: torch.Tensor, window: int, norm: InputNorm) -> int:
    """The start frame whose window encodes to ``x`` (the crop must be a real window)."""
    for s in range(max(1, db.shape[1] - window + 1)):
        if np.array_equal(encode_segment(db, s, window, norm), x.numpy()):
            return s
    raise AssertionError("the crop is not a window of its recording")


def test_random_crops_are_real_windows_seeded_by_epoch(prepared_segments):
    dm = BirdDataModule(prepared_segments, val_fold=0, batch_size=4, seed=3)
    train, val = dm.train_set, dm.val_set
    assert len(train) == 2 * len(dm.train_records)  # two crops per recording and epoch
    # validation still scores every window of every recording
    assert len(val) > len(dm.val_records)
    assert set(val.item_recordings) == set(range(len(dm.val_records)))

    window, norm = train.window, train.norm
    starts: dict[int, list[int]] = {}
    for epoch in (0, 1):
        for idx in range(6):
            x, y, rec = train[(idx, epoch)]
            assert x.shape == (1, 128, window)
            assert y == int(dm.train_records["label_idx"].iloc[rec])
            starts.setdefault(idx, []).append(_crop_start(train._db(rec), x, window, norm))
        # the same (index, epoch) draws the same crop again (a resumed run sees the same data)
        torch.testing.assert_close(train[(0, epoch)][0], train[(0, epoch)][0], rtol=0, atol=0)
    # the demo recordings are 10-30 s, so a new epoch moves the 5 s crops
    assert any(a != b for a, b in starts.values())
    for idx, ss in starts.items():
        assert all(0 <= s <= train.frames[train.items[idx][0]] - window for s in ss)


def test_train_loader_serves_k_crops_per_recording_each_epoch(prepared_segments):
    dm = BirdDataModule(prepared_segments, val_fold=0, batch_size=4, seed=0)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededSampler) and loader.sampler.with_epoch
    seen = np.concatenate([rec.numpy() for _, _, rec in loader])
    n = len(dm.train_records)
    assert len(seen) == (2 * n // 4) * 4  # incomplete last batch dropped
    counts = np.bincount(seen, minlength=n)
    assert counts.max() <= 2


def test_train_crops_is_checked_and_read_from_strings(demo_dir):
    with pytest.raises(ConfigError, match="train_crops"):
        Config.from_dict({"preprocessing": {"encoding": {"train_crops": 0}}})
    cfg = Config.from_dict({"data": {"path": str(demo_dir)}})
    # what `--set preprocessing.encoding.train_crops=3` passes
    crops = cfg.override(["preprocessing.encoding.train_crops=3"]).preprocessing.encoding
    assert crops.train_crops == 3
    with pytest.raises(ConfigError, match="train_crops"):
        cfg.override(["preprocessing.encoding.train_crops=1.5"])


def test_stacked_training_ignores_train_crops(demo_dir, cache_dir, tmp_path):
    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir)},
            "preprocessing": {"encoding": {"kind": "stacked", "short": "pad", "train_crops": 4}},
        }
    )
    prepared = prepare(cfg.data, cfg.preprocessing, tmp_path, progress=False)
    dm = BirdDataModule(prepared, val_fold=0, batch_size=4)
    assert dm.train_set.random_crops is None
    assert len(dm.train_set) == len(dm.train_records)


def test_stats_loader_serves_every_training_crop_of_the_epoch_once(prepared_segments):
    # what precise BatchNorm averages over: the inputs training saw in that epoch, each once
    dm = BirdDataModule(prepared_segments, val_fold=0, batch_size=4, seed=5)
    train = dm.train_dataloader()
    train.sampler.set_epoch(2)
    seen = {}
    for x, _, _ in DataLoader(dm.train_set, batch_size=1, sampler=list(train.sampler)):
        seen[len(seen)] = x
    trained = sorted(x.flatten()[:64].tolist() for x in seen.values())
    stats = [x for batch, _, _ in dm.stats_dataloader(epoch=2) for x in batch]
    assert len(stats) == len(dm.train_set)  # nothing dropped, nothing repeated
    assert sorted(x.flatten()[:64].tolist() for x in stats) == trained
    # another epoch draws other crops
    other = [x for batch, _, _ in dm.stats_dataloader(epoch=3) for x in batch]
    assert sorted(x.flatten()[:64].tolist() for x in other) != trained

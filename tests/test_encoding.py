"""The study's trimming rule and both encodings, on crafted and real spectrograms."""

from __future__ import annotations

import numpy as np
import pytest

from birdstack.config import ConfigError, EncodingConfig
from birdstack.features.encoding import (
    center_trim,
    encode_segment,
    encode_stacked,
    segment_starts,
    stack_channels,
    target_frames_rule,
)


def test_target_rule_averages_class_means_not_recordings():
    # class a: mean 200 over 2 recordings, class b: mean 1000 over 1 -> (200+1000)/2 = 600
    frames = [100, 300, 1000]
    labels = ["a", "a", "b"]
    assert target_frames_rule(frames, labels, trim_factor=1.0, channels=1) == 600
    # a recording-weighted mean would give 466; scaled by 0.8 and rounded down to a multiple of 7
    assert target_frames_rule(frames, labels, trim_factor=0.8, channels=7) == 476


def test_target_rule_rejects_more_channels_than_frames():
    with pytest.raises(ConfigError, match="channels"):
        target_frames_rule([5, 6], ["a", "b"], trim_factor=1.0, channels=10)
    with pytest.raises(ConfigError, match="channels"):
        EncodingConfig(channels=10, target_frames=4)


def test_center_trim_cuts_both_ends_equally():
    x = np.arange(20)[None].repeat(3, 0)
    t = center_trim(x, 10)
    assert t.shape == (3, 10)
    assert t[0, 0] == 5 and t[0, -1] == 14  # 5 frames off each end
    t = center_trim(np.arange(21)[None], 10)  # odd surplus: the extra frame comes off the end
    assert t[0, 0] == 5 and t[0, -1] == 14


def test_stack_channels_keeps_time_order():
    x = np.arange(2 * 12, dtype=np.float32).reshape(2, 12)  # 2 mels, 12 frames
    s = stack_channels(x, 3)
    assert s.shape == (3, 2, 4)
    np.testing.assert_array_equal(s[1], x[:, 4:8])  # channel i = i-th time segment
    np.testing.assert_array_equal(s.transpose(1, 0, 2).reshape(2, 12), x)


def test_encode_stacked_normalises_and_pads():
    rng = np.random.default_rng(0)
    db = rng.normal(-40, 10, size=(16, 95)).astype(np.float32)
    x = encode_stacked(db, target_frames=100, channels=10, top_db=80.0)
    assert x.shape == (10, 16, 10)
    assert x.max() == pytest.approx(1.0) and x.min() >= 0.0
    assert np.all(x[-1, :, 5:] == 0.0)  # the 5 missing frames are padded with the floor
    long = rng.normal(-40, 10, size=(16, 300)).astype(np.float32)
    y = encode_stacked(long, target_frames=100, channels=10, top_db=80.0)
    centre = long[:, 100:200]
    expected = np.clip(centre - centre.max(), -80, None) / 80 + 1
    np.testing.assert_allclose(y.transpose(1, 0, 2).reshape(16, 100), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "n,window,hop,min_last,expected",
    [
        (100, 40, 40, 0.5, [0, 40, 80]),  # 20 frames left = half a window: kept
        (99, 40, 40, 0.5, [0, 40]),  # 19 left < 20: dropped
        (130, 40, 40, 0.5, [0, 40, 80]),  # 10 left: dropped
        (30, 40, 40, 0.5, [0]),  # shorter than a window: one padded window
        (100, 40, 20, 0.5, [0, 20, 40, 60]),  # 50% overlap, the last window ends exactly
        (140, 40, 40, 0.5, [0, 40, 80, 120]),
    ],
)
def test_segment_starts(n, window, hop, min_last, expected):
    assert segment_starts(n, window, hop, min_last) == expected


def test_encode_segment_shape_and_padding():
    db = np.linspace(-80, 0, 16 * 50, dtype=np.float32).reshape(16, 50)
    x = encode_segment(db, start=40, window=20, top_db=80.0)
    assert x.shape == (1, 16, 20)
    assert np.all(x[0, :, 10:] == 0) and x.max() == pytest.approx(1.0)

"""The study's trimming rule and both encodings, on crafted and real spectrograms."""

from __future__ import annotations

import numpy as np
import pytest

from birdstack.config import ConfigError, EncodingConfig, PcenConfig
from birdstack.features.encoding import (
    center_trim,
    encode_segment,
    encode_stacked,
    segment_starts,
    stack_channels,
    target_frames_rule,
)
from birdstack.features.melbank import InputNorm

PLAIN = InputNorm(80.0)
MEDIAN = InputNorm(80.0, "median")


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
    x = encode_stacked(db, target_frames=100, channels=10, norm=InputNorm(80.0))
    assert x.shape == (10, 16, 10)
    assert x.max() == pytest.approx(1.0) and x.min() >= 0.0
    assert np.all(x[-1, :, 5:] == 0.0)  # the 5 missing frames are padded with the floor
    long = rng.normal(-40, 10, size=(16, 300)).astype(np.float32)
    y = encode_stacked(long, target_frames=100, channels=10, norm=InputNorm(80.0))
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
    x = encode_segment(db, start=40, window=20, norm=InputNorm(80.0))
    assert x.shape == (1, 16, 20)
    assert np.all(x[0, :, 10:] == 0) and x.max() == pytest.approx(1.0)


def test_band_median_removes_what_a_session_adds_to_every_frame():
    """A recorder's response and a stationary hum (a per-band dB offset on every frame)
    leave a band-median-normalised input unchanged; the plain normalisation keeps them."""
    rng = np.random.default_rng(0)
    db = rng.normal(-60, 8, size=(16, 120)).astype(np.float32)
    db[5, 40:60] += 30  # a call: stands above its band's typical level
    session = np.linspace(-12, 6, 16, dtype=np.float32)[:, None]  # tilt
    session[9] += 25  # hum in one band
    other = db + session
    for start, window in ((0, 120), (30, 60), (100, 60)):  # the last one is padded
        a = encode_segment(db, start, window, MEDIAN)
        b = encode_segment(other, start, window, MEDIAN)
        np.testing.assert_allclose(a, b, atol=1e-5)
        plain = encode_segment(other, start, window, PLAIN)
        assert np.abs(plain - encode_segment(db, start, window, PLAIN)).max() > 0.1
    # the median is over the window's own frames, the padding is not counted
    short = encode_segment(db, 100, 60, MEDIAN)
    assert np.all(short[0, :, 20:] == 0)
    centred = db[:, 100:] - np.median(db[:, 100:], axis=-1, keepdims=True)
    np.testing.assert_allclose(
        short[0, :, :20], encode_segment(centred, 0, 20, PLAIN)[0], atol=1e-6
    )
    # the call is what remains at the top
    x = encode_segment(db, 0, 120, MEDIAN)[0]
    assert np.unravel_index(np.argmax(x), x.shape)[0] == 5
    # stacked: one median per band over the whole (trimmed) recording
    a = encode_stacked(db, 100, 10, MEDIAN)
    b = encode_stacked(other, 100, 10, MEDIAN)
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="band_norm"):
        InputNorm(80.0, "mean")


@pytest.mark.parametrize("frames", [1, 2, 311, 312, 313])
def test_band_median_equals_numpy_median(frames):
    """The partition median is np.median, ties at the dB floor and batches included."""
    from birdstack.features.melbank import band_median

    rng = np.random.default_rng(frames)
    db = rng.normal(-60, 20, size=(4, 1, 32, frames)).astype(np.float32)
    db = np.maximum(db, -80.0)  # the floor repeats: ties
    db[0, 0, 3] = -80.0  # a band that is all floor
    got = band_median(db)
    assert got.dtype == np.float32 and got.shape == (4, 1, 32, 1)
    np.testing.assert_array_equal(got, np.median(db, axis=-1, keepdims=True))


def test_pcen_is_librosas_and_cancels_gain_and_stationary_background():
    """band_norm='pcen': librosa.pcen at its defaults (the smoother started at each band's
    median), nearly blind to the recording's gain and to a band's stationary hum, with the
    call on top; segments and stacked inputs both get it; it needs the frame rate."""
    librosa = pytest.importorskip("librosa")
    from scipy.signal import lfilter_zi

    from birdstack.features.melbank import (
        PCEN_INPUT_SCALE,
        band_median,
        normalize_db_np,
        pcen_smoothing,
    )

    fps = 32000 / 512
    rng = np.random.default_rng(1)
    db = rng.normal(-70, 3, size=(16, 200)).astype(np.float32)
    db[5, 80:110] += 35  # a call
    mag = np.power(10.0, db.astype(np.float64) / 20) * PCEN_INPUT_SCALE
    b = pcen_smoothing(fps)
    zi = lfilter_zi([b], [1, b - 1]) * np.power(10.0, band_median(db) / 20.0) * PCEN_INPUT_SCALE
    ref = librosa.pcen(mag, sr=32000, hop_length=512, zi=zi)
    pcen = InputNorm(80.0, "pcen", frame_rate=fps)
    x = encode_segment(db, 0, 200, pcen)[0]
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-6)
    assert np.unravel_index(np.argmax(x), x.shape)[0] == 5  # the call stands out
    # 20 dB louder: the inputs move by under 5 % (gain 0.98: 10 ** (20 / 20 * 0.02) - 1)
    louder = db + 20.0
    y = encode_segment(louder, 0, 200, pcen)[0]
    assert np.abs(y / x - 1).max() < 0.05
    # ... and 36 dB more of stationary hum in band 9: under 15 % there; the dB scaling
    # makes the hum the loudest thing in the window
    louder[9] += 36.0
    y = encode_segment(louder, 0, 200, pcen)[0]
    assert np.abs(y / x - 1).max() < 0.15
    assert np.unravel_index(np.argmax(y), y.shape)[0] == 5
    plain = encode_segment(louder, 0, 200, PLAIN)[0]
    assert np.unravel_index(np.argmax(plain), plain.shape)[0] == 9
    # padding stays 0 ("nothing above the background"), the window's frames only
    short = encode_segment(db, 180, 60, pcen)[0]
    assert np.all(short[:, 20:] == 0)
    np.testing.assert_allclose(
        short[:, :20],
        normalize_db_np(db[:, 180:], 80.0, band_norm="pcen", frame_rate=fps),
    )
    stacked = encode_stacked(db, 200, 10, pcen)
    np.testing.assert_allclose(stacked[8], x[:, 160:180], rtol=1e-6)  # channel 8 = frames 160-179
    # other settings (a 60 ms smoother, gain 0.8, bias 10, power 0.25) are librosa's too
    birds = PcenConfig(time_constant=0.06, gain=0.8, bias=10.0, power=0.25)
    b = pcen_smoothing(fps, birds.time_constant)
    zi = lfilter_zi([b], [1, b - 1]) * np.power(10.0, band_median(db) / 20.0) * PCEN_INPUT_SCALE
    ref = librosa.pcen(
        mag, sr=32000, hop_length=512, zi=zi, time_constant=0.06, gain=0.8, bias=10.0, power=0.25
    )
    other = encode_segment(db, 0, 200, InputNorm(80.0, "pcen", fps, birds))[0]
    np.testing.assert_allclose(other, ref, rtol=1e-5, atol=1e-6)
    assert np.abs(other - x).max() > 0.1  # not the default settings
    with pytest.raises(ValueError, match="frame rate"):
        InputNorm(80.0, "pcen")
    with pytest.raises(ValueError, match="frame rate"):
        normalize_db_np(db, 80.0, band_norm="pcen")

"""Log-mel: librosa parity, frame counts, batches, streaming, normalisation."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from birdstack.config import SpectrogramConfig
from birdstack.features.audio import load_audio
from birdstack.features.mel import (
    LogMel,
    compute_logmel,
    librosa_logmel,
    mel_filterbank,
    n_frames,
    normalize_db,
    normalize_db_np,
)

# one xdist worker pays librosa's slow first calls (numba) for all of these tests
pytestmark = pytest.mark.xdist_group("librosa")

SPEC = SpectrogramConfig()  # n_fft 2048, hop 512, 128 mels, 50-14000 Hz, power 2
SR = 32000


@pytest.fixture(autouse=True, scope="module")
def _features_thread(one_torch_thread):
    """Features are computed with one intra-op thread per process (see LogMel)."""


@pytest.fixture(scope="module")
def wave() -> np.ndarray:
    """30 s of a real recording from the embedded demo data (32 kHz)."""
    demo = Path(__file__).resolve().parents[1] / "data" / "birds-demo" / "train_audio"
    files = sorted(demo.rglob("*.ogg"))
    assert files, "embedded demo data missing"
    return load_audio(files[0], SR)


def librosa_db(y: np.ndarray, spec: SpectrogramConfig = SPEC, sr: int = SR) -> np.ndarray:
    return librosa_logmel(y, sr, spec)


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [
        (32000, 2048, 128, 50.0, 14000.0),
        (22050, 512, 40, 0.0, 8000.0),
        (16000, 1024, 64, 300.0, 7600.0),
    ],
)
def test_filterbank_matches_librosa(sr: int, n_fft: int, n_mels: int, fmin, fmax) -> None:
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == (n_mels, 1 + n_fft // 2) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


def test_parity_with_librosa_on_real_audio(wave: np.ndarray) -> None:
    """Measured: max |diff| about 2e-5 dB (float64 FFT, the default)."""
    ours = compute_logmel(wave, SPEC, SR)
    ref = librosa_db(wave)
    assert ours.shape == ref.shape == (128, 1 + len(wave) // 512)
    assert ours.dtype == np.float32
    mask = ref > -100
    assert mask.mean() > 0.99
    err = np.abs(ours - ref)[mask].max()
    assert err < 0.01, f"max |ours - librosa| = {err:.4g} dB"


def test_float32_fft_close_in_the_range_that_is_kept(wave: np.ndarray) -> None:
    """float32 FFT: exact within ``top_db`` of the maximum (the only range models see)."""
    ours = compute_logmel(wave, SPEC, SR, dtype=torch.float32)
    ref = librosa_db(wave)
    mask = ref > ref.max() - SPEC.top_db
    assert np.abs(ours - ref)[mask].max() < 0.01


def test_power_one_matches_librosa(wave: np.ndarray) -> None:
    spec = SpectrogramConfig(power=1.0, n_mels=64)
    y = wave[: SR * 5]
    ref = librosa_db(y, spec)
    ours = compute_logmel(y, spec, SR)
    mask = ref > -100
    assert np.abs(ours - ref)[mask].max() < 0.01


def test_same_as_torch_stft(wave: np.ndarray) -> None:
    """The chunked transform equals the plain torch.stft formulation."""
    y = torch.from_numpy(wave[: SR * 4]).double()
    stft = torch.stft(
        y,
        SPEC.n_fft,
        SPEC.hop_length,
        window=torch.hann_window(SPEC.n_fft, dtype=torch.float64),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    fb = torch.from_numpy(
        mel_filterbank(SR, SPEC.n_fft, SPEC.n_mels, SPEC.fmin, SPEC.fmax, np.float64)
    )
    ref = 10 * torch.log10((fb @ stft.abs() ** 2).clamp(min=SPEC.amin))
    ours = LogMel(SPEC, SR)(y.float())
    torch.testing.assert_close(ours.double(), ref, atol=1e-3, rtol=0)


@pytest.mark.parametrize("length", [0, 1, 100, 511, 512, 1024, 1025, 2048, 32000, 32001])
def test_frame_count_rule(length: int) -> None:
    db = LogMel(SPEC, SR)(torch.randn(length))
    assert db.shape == (128, 1 + length // 512) == (128, n_frames(length, SPEC))
    assert torch.isfinite(db).all()


def test_silence_is_amin() -> None:
    db = compute_logmel(np.zeros(5000, np.float32), SPEC, SR)
    np.testing.assert_array_equal(db, np.full_like(db, -100.0))


def test_batch_equals_items(wave: np.ndarray) -> None:
    m = LogMel(SPEC, SR)
    x = torch.from_numpy(wave[: 3 * 20000].reshape(3, 20000).copy())
    batch = m(x)
    assert batch.shape == (3, 128, 1 + 20000 // 512)
    for i in range(3):
        torch.testing.assert_close(batch[i], m(x[i]), atol=1e-4, rtol=0)


def test_stream_equals_whole(wave: np.ndarray) -> None:
    m = LogMel(SPEC, SR)
    y = wave[: SR * 6]
    cuts = [0, 700, 5000, 5001, 60000, 100000, len(y)]
    blocks = [y[a:b] for a, b in zip(cuts, cuts[1:])]
    streamed = m.stream(blocks)
    whole = m(torch.from_numpy(y))
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, atol=1e-4, rtol=0)


def test_buffers_follow_the_module() -> None:
    m = LogMel(SPEC, SR)
    names = {n for n, _ in m.named_buffers()}
    assert "window" in names and any(n.startswith("fb_") for n in names)
    assert m.state_dict() == {}  # derived from the settings, not saved in checkpoints
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    on_cpu = m(x)
    m = m.to(device)
    assert all(b.device.type == device for b in m.buffers())
    out = m(x.to(device))
    assert out.device.type == device and out.shape == (2, 128, 8)
    torch.testing.assert_close(out.cpu(), on_cpu, atol=1e-3, rtol=0)


def test_module_copies_and_casts(wave: np.ndarray) -> None:
    m = LogMel(SPEC, SR)
    x = torch.from_numpy(wave[:8000])
    ref = m(x)
    torch.testing.assert_close(copy.deepcopy(m)(x), ref, atol=0, rtol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(m))(x), ref, atol=0, rtol=0)
    torch.testing.assert_close(m.double()(x).float(), ref, atol=1e-4, rtol=0)


def test_bad_shape() -> None:
    with pytest.raises(ValueError, match="wave"):
        LogMel(SPEC, SR)(torch.zeros(1, 2, 3))


def test_normalize_db_range_and_peak() -> None:
    g = torch.Generator().manual_seed(0)
    db = torch.rand(2, 3, 8, 10, generator=g) * 150 - 120  # [-120, 30] dB
    db[1] -= 40
    out = normalize_db(db, 80.0)
    assert out.min() >= 0 and out.max() <= 1
    for i in range(2):  # a batch: each item on its own
        assert out[i].max() == 1
        torch.testing.assert_close(out[i], normalize_db(db[i], 80.0))
        assert (out[i] == 0).sum() == (db[i] <= db[i].max() - 80).sum()
    single = normalize_db(db[0], 80.0)  # [C, M, F]: one input
    expected = (db[0] - db[0].max()).clamp(min=-80) / 80 + 1
    torch.testing.assert_close(single, expected)
    np.testing.assert_allclose(normalize_db_np(db.numpy(), 80.0), out.numpy(), atol=1e-6)
    np.testing.assert_allclose(normalize_db_np(db[0].numpy(), 80.0), single.numpy(), atol=1e-6)
    assert normalize_db_np(db.numpy(), 80.0).dtype == np.float32

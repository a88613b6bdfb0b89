"""Audio decoding: formats by content, mono mixing, resampling, bad files, streaming."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdstack.features.audio import AudioInfo, audio_info, load_audio, stream_audio
from birdstack.utils import BadInputError


@pytest.fixture(scope="module")
def real_ogg() -> Path:
    """A real 32 kHz OGG recording of the embedded demo data."""
    demo = Path(__file__).resolve().parents[1] / "data" / "birds-demo" / "train_audio"
    files = sorted(demo.rglob("*.ogg"))
    assert files, "embedded demo data missing"
    return files[0]


def sine(freq: float, sr: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()])


# --------------------------------------------------------------------------- good files


def test_real_ogg(real_ogg: Path) -> None:
    wave = load_audio(real_ogg, 32000)
    ref, sr = sf.read(real_ogg, dtype="float32")
    assert sr == 32000
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.flags.c_contiguous
    np.testing.assert_array_equal(wave, ref)
    assert np.abs(wave).max() > 0.01
    info = audio_info(real_ogg)
    assert info == AudioInfo(32000, 1, len(ref), len(ref) / 32000)


def test_wav_named_mp3_decodes_by_content(tmp_path: Path) -> None:
    x = sine(440, 16000)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    (tmp_path / "a.wav").rename(tmp_path / "really_a_wav.mp3")
    np.testing.assert_array_equal(load_audio(tmp_path / "really_a_wav.mp3", 16000), x)


def test_flac_and_str_path(tmp_path: Path) -> None:
    x = sine(300, 16000, amp=0.3)
    sf.write(tmp_path / "a.flac", x, 16000)
    np.testing.assert_allclose(load_audio(str(tmp_path / "a.flac"), 16000), x, atol=1e-4)


def test_stereo_mixed_to_mono(tmp_path: Path) -> None:
    left, right = sine(440, 8000), sine(1000, 8000, amp=0.2)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    wave = load_audio(tmp_path / "st.wav", 8000)
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-7)
    assert audio_info(tmp_path / "st.wav").channels == 2


@pytest.mark.parametrize("native", [8000, 96000])
def test_resampled_to_target_rate(tmp_path: Path, native: int) -> None:
    x = sine(1000, native, seconds=2.0)
    sf.write(tmp_path / "r.wav", x, native, subtype="FLOAT")
    wave = load_audio(tmp_path / "r.wav", 32000)
    assert wave.dtype == np.float32
    assert len(wave) == 64000  # 2 s at 32 kHz
    assert abs(peak_hz(wave, 32000) - 1000) <= 1.0
    # amplitude kept (away from the resampler's edge transients)
    assert abs(np.abs(wave[4000:-4000]).max() - 0.5) < 0.01


@pytest.mark.parametrize(
    ("subtype", "atol"), [("PCM_U8", 1 / 100), ("PCM_24", 1e-6), ("FLOAT", 0.0), ("PCM_16", 1e-4)]
)
def test_bit_depths(tmp_path: Path, subtype: str, atol: float) -> None:
    x = sine(500, 8000, amp=0.6)
    sf.write(tmp_path / "b.wav", x, 8000, subtype=subtype)
    wave = load_audio(tmp_path / "b.wav", 8000)
    assert wave.dtype == np.float32
    np.testing.assert_allclose(wave, x, atol=atol)


def test_silent_file_is_valid(tmp_path: Path) -> None:
    sf.write(tmp_path / "silence.wav", np.zeros(4000, np.float32), 8000)
    wave = load_audio(tmp_path / "silence.wav", 8000)
    assert wave.shape == (4000,) and not wave.any()


# --------------------------------------------------------------------------- bad files


def make_bad(kind: str, d: Path, ogg: Path) -> Path:
    """Write one kind of unusable file into ``d`` and return its path."""
    if kind == "missing":
        return d / "missing.ogg"
    if kind == "dir":
        return d
    path = d / {"nan": "nan.wav", "inf": "inf.wav", "no-samples": "zero.wav"}.get(kind, kind)
    if kind == "empty.ogg":
        path.write_bytes(b"")
    elif kind == "truncated.ogg":
        data = ogg.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind in ("random-bytes.ogg", "random-bytes.mp3"):
        path.write_bytes(np.random.default_rng(0).bytes(20000))
    elif kind in ("nan", "inf"):
        x = sine(200, 8000)
        x[100] = np.nan if kind == "nan" else np.inf
        sf.write(path, x, 8000, subtype="FLOAT")
    elif kind == "no-samples":
        sf.write(path, np.zeros(0, np.float32), 8000)
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "file not found"),
        ("empty.ogg", "empty file"),
        ("truncated.ogg", "truncated"),
        ("random-bytes.ogg", "not a recognised audio format"),
        ("random-bytes.mp3", "not a recognised audio format"),
        ("nan", "non-finite"),
        ("inf", "non-finite"),
        ("no-samples", "no audio samples"),
        ("dir", "directory"),
    ],
)
def test_bad_files_raise_bad_input(tmp_path: Path, real_ogg: Path, kind: str, reason: str) -> None:
    path = make_bad(kind, tmp_path, real_ogg)
    with pytest.raises(BadInputError) as err:
        load_audio(path, 32000)
    msg = str(err.value)
    assert path.name in msg and reason in msg
    assert err.value.path == str(path)
    if reason != "non-finite":  # the header of a NaN file is fine
        with pytest.raises(BadInputError, match=reason):
            audio_info(path)
    with pytest.raises(BadInputError, match=reason):
        list(stream_audio(path, 32000))


def test_corrupt_ogg_pages_detected(tmp_path: Path, real_ogg: Path) -> None:
    data = bytearray(real_ogg.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4000] = np.random.default_rng(1).bytes(4000)
    bad = tmp_path / "garbled.ogg"
    bad.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="corrupt"):
        load_audio(bad, 32000)


def test_ogg_cut_at_page_boundary_detected(tmp_path: Path, real_ogg: Path) -> None:
    data = real_ogg.read_bytes()
    cut = data.rfind(b"OggS", 0, len(data) // 2)  # a page start: every page before is whole
    bad = tmp_path / "cut_clean.ogg"
    bad.write_bytes(data[:cut])
    with pytest.raises(BadInputError, match="end-of-stream"):
        load_audio(bad, 32000)


# --------------------------------------------------------------------------- streaming


def test_stream_equals_load_at_native_rate(real_ogg: Path) -> None:
    full = load_audio(real_ogg, 32000)
    blocks = list(stream_audio(real_ogg, 32000, block_s=3.7))
    assert all(len(b) == round(3.7 * 32000) for b in blocks[:-1])
    assert 0 < len(blocks[-1]) <= round(3.7 * 32000)
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), full)


@pytest.mark.parametrize("target", [22050, 48000])
def test_stream_resampled_joins_are_seamless(real_ogg: Path, target: int) -> None:
    full = load_audio(real_ogg, target)
    joined = np.concatenate(list(stream_audio(real_ogg, target, block_s=2.3)))
    assert len(joined) == len(full)
    np.testing.assert_allclose(joined, full, atol=1e-5)


def test_stream_overlap(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 8000 * 5).astype(np.float32)
    sf.write(tmp_path / "n.wav", x, 8000, subtype="FLOAT")
    blocks = list(stream_audio(tmp_path / "n.wav", 8000, block_s=1.0, overlap_samples=100))
    assert len(blocks[0]) == 8000 and all(len(b) == 8100 for b in blocks[1:])
    for prev, cur in zip(blocks, blocks[1:]):
        np.testing.assert_array_equal(cur[:100], prev[-100:])
    rebuilt = np.concatenate([blocks[0]] + [b[100:] for b in blocks[1:]])
    np.testing.assert_array_equal(rebuilt, x)


def test_stream_memory_is_bounded(tmp_path: Path) -> None:
    """A 10-minute file streamed in 5 s blocks never holds the whole signal."""
    sr, minutes = 8000, 10
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as fh:
        chunk = sine(700, sr, seconds=60.0, amp=0.3)
        for _ in range(minutes):
            fh.write(chunk)
    full_bytes = sr * 60 * minutes * 4
    tracemalloc.start()
    try:
        n = 0
        for block in stream_audio(path, 16000, block_s=5.0):
            n += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 16000 * 60 * minutes
    assert peak < full_bytes / 10, f"peak {peak} bytes for a {full_bytes}-byte signal"


def test_stream_bad_arguments(real_ogg: Path) -> None:
    with pytest.raises(ValueError, match="block_s"):
        next(stream_audio(real_ogg, 32000, block_s=0))
    with pytest.raises(ValueError, match="overlap"):
        next(stream_audio(real_ogg, 32000, overlap_samples=-1))

"""Feature cache: content keys, reuse, resumption, damaged entries, errors, workers."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdstack.config import AudioConfig, PcenConfig, SpectrogramConfig
from birdstack.features.audio import load_audio
from birdstack.features.cache import FeatureCache
from birdstack.features.mel import compute_logmel, torch_fft_dtype_for
from birdstack.utils import BadInputError, file_sha1

AUDIO = AudioConfig(sample_rate=16000)
SPEC = SpectrogramConfig(n_fft=512, hop_length=256, n_mels=40, fmin=50.0, fmax=7000.0)


@pytest.fixture(autouse=True, scope="module")
def _features_thread(one_torch_thread):
    """Features are computed with one intra-op thread per process (see LogMel)."""


def chirp(seed: int, seconds: float = 1.0, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    f0 = 300 + 100 * seed
    x = 0.4 * np.sin(2 * np.pi * (f0 + 800 * t) * t) + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture
def wavs(tmp_path: Path) -> list[Path]:
    """Four small recordings: 16 kHz, 22.05 kHz (resampled), stereo, and 1.5 s."""
    d = tmp_path / "audio"
    d.mkdir()
    paths = []
    sf.write(d / "a.wav", chirp(0), 16000)
    sf.write(d / "b.flac", chirp(1, sr=22050), 22050)
    sf.write(d / "c.wav", np.stack([chirp(2), chirp(3)], axis=1), 16000)
    sf.write(d / "d.ogg", chirp(4, seconds=1.5), 16000)
    for name in ["a.wav", "b.flac", "c.wav", "d.ogg"]:
        paths.append(d / name)
    return paths


def cache_at(root: Path, **spec) -> FeatureCache:
    return FeatureCache(root, AUDIO, SpectrogramConfig(**{**SPEC.__dict__, **spec}))


def test_features_and_metadata(tmp_path: Path, wavs: list[Path]) -> None:
    cache = cache_at(tmp_path / "cache")
    res = cache.compute_many(wavs, workers=1, progress=False)
    assert res.n_computed == 4 and res.n_reused == 0 and not res.failed
    for p in wavs:
        e = res[p]
        wave = load_audio(p, 16000)
        expected = compute_logmel(wave, SPEC, 16000, dtype=torch_fft_dtype_for(SPEC))
        stored = np.load(e.cache_file)
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, expected)
        assert e.frames == expected.shape[1] == 1 + len(wave) // 256
        assert e.samples == len(wave) and e.duration_s == pytest.approx(len(wave) / 16000)
        np.testing.assert_array_equal(cache.get(p), expected)
        np.testing.assert_array_equal(cache.load(p), expected)
    # layout: <root>/<settings_hash>/<sha[:2]>/<sha>.npy
    sha = file_sha1(wavs[0])
    assert res[wavs[0]].cache_file == tmp_path / "cache" / cache.settings_hash / sha[:2] / (
        sha + ".npy"
    )
    assert cache.path_for(wavs[0]) == res[wavs[0]].cache_file
    assert json.loads((cache.dir / "settings.json").read_text())["spectrogram"]["n_mels"] == 40
    assert res[1].path == wavs[1]  # positional access too
    with pytest.raises(KeyError):
        res[tmp_path / "not_asked.wav"]
    assert cache.entry(wavs[3]).frames == res[wavs[3]].frames


def test_second_call_computes_nothing(tmp_path: Path, wavs: list[Path]) -> None:
    cache = cache_at(tmp_path / "cache")
    first = cache.compute_many(wavs, workers=1, progress=False)
    again = cache_at(tmp_path / "cache").compute_many(wavs, workers=1, progress=False)
    assert again.n_computed == 0 and again.n_reused == 4
    assert [e.cache_file for e in again] == [e.cache_file for e in first]
    assert [e.frames for e in again] == [e.frames for e in first]


def test_content_keys(tmp_path: Path, wavs: list[Path]) -> None:
    cache = cache_at(tmp_path / "cache")
    cache.compute_many(wavs[:1], workers=1, progress=False)
    copy = tmp_path / "renamed_copy.wav"
    shutil.copy(wavs[0], copy)
    res = cache.compute_many([copy], workers=1, progress=False)
    assert res.n_computed == 0  # same content, other name: a hit
    sf.write(wavs[0], chirp(9), 16000)  # same name, new content: a miss
    res = cache.compute_many(wavs[:1], workers=1, progress=False)
    assert res.n_computed == 1
    expected = compute_logmel(load_audio(wavs[0], 16000), SPEC, 16000, torch_fft_dtype_for(SPEC))
    np.testing.assert_array_equal(np.load(res[0].cache_file), expected)
    # identical contents in one call are computed once
    twin = tmp_path / "twin.wav"
    shutil.copy(wavs[1], twin)
    res = cache.compute_many([wavs[1], twin], workers=1, progress=False)
    assert res.n_computed == 1 and res[twin].cache_file == res[wavs[1]].cache_file


def test_settings_select_the_folder(tmp_path: Path) -> None:
    base = cache_at(tmp_path)
    assert cache_at(tmp_path, top_db=60.0).dir == base.dir  # normalisation: not in the key
    assert cache_at(tmp_path, band_norm="median").dir == base.dir
    assert cache_at(tmp_path, band_norm="pcen").dir == base.dir
    assert cache_at(tmp_path, band_norm="pcen", pcen=PcenConfig(time_constant=0.06)).dir == base.dir
    # ... but the FFT precision it implies is: 160 dB of power range needs float64
    assert cache_at(tmp_path, top_db=160.0).dir != base.dir
    assert cache_at(tmp_path, n_mels=64).dir != base.dir
    assert FeatureCache(tmp_path, AudioConfig(32000), SPEC).dir != base.dir


def test_damaged_entry_is_recomputed(tmp_path: Path, wavs: list[Path]) -> None:
    cache = cache_at(tmp_path / "cache")
    res = cache.compute_many(wavs, workers=1, progress=False)
    good = np.load(res[0].cache_file)
    # a disk-full truncation
    npy = res[0].cache_file
    npy.write_bytes(npy.read_bytes()[:300])
    assert cache.get(wavs[0]) is None
    np.testing.assert_array_equal(cache.load(wavs[0]), good)
    # same size but garbage inside (not a .npy at all)
    npy.write_bytes(b"\0" * npy.stat().st_size)
    assert cache.get(wavs[0]) is None
    np.testing.assert_array_equal(cache.load(wavs[0]), good)
    # truncated again: compute_many notices it too
    npy.write_bytes(npy.read_bytes()[:-10])
    again = cache.compute_many(wavs, workers=1, progress=False)
    assert again.n_computed == 1 and again[0].computed
    np.testing.assert_array_equal(np.load(npy), good)


def test_killed_between_files_resumes(tmp_path: Path, wavs: list[Path]) -> None:
    """An interrupted run (some entries done, one half-written) then the full list."""
    cache = cache_at(tmp_path / "cache")
    cache.compute_many(wavs[:2], workers=1, progress=False)
    # killed while writing the third: its .npy temp file and a .npy without .json
    sha = file_sha1(wavs[2])
    folder = cache.dir / sha[:2]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{sha}.npy.abc123.tmp").write_bytes(b"partial")
    (folder / f"{sha}.npy").write_bytes(b"\x93NUMPY partial")
    resumed = cache.compute_many(wavs, workers=1, progress=False)
    assert resumed.n_computed == 2
    assert [e.computed for e in resumed] == [False, False, True, True]
    single = cache_at(tmp_path / "single").compute_many(wavs, workers=1, progress=False)
    for a, b in zip(resumed, single):
        assert (a.frames, a.samples) == (b.frames, b.samples)
        np.testing.assert_array_equal(np.load(a.cache_file), np.load(b.cache_file))


def test_data_written_but_not_committed_is_invisible_and_cleaned(
    tmp_path: Path, wavs: list[Path]
) -> None:
    """A run killed after a worker wrote an entry's data, before the parent committed it."""
    cache = cache_at(tmp_path / "cache")
    sha = file_sha1(wavs[0])
    npy = cache._files(sha)[0]
    code = (
        "import sys, pickle\nfrom birdstack.features.cache import _work\n"
        "a = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
        "meta, tmp = _work(*a)\nprint(tmp)"  # exits without committing
    )
    args = (str(wavs[0]), sha, str(npy), cache.audio, cache.spec)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, pickle.dumps(args).hex()],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = Path(out.stdout.strip())
    assert orphan.parent == npy.parent and orphan.stat().st_size > 0 and not npy.exists()
    assert cache.get(wavs[0]) is None  # the data alone are no entry
    res = cache.compute_many(wavs[:2], workers=1, progress=False)
    assert res.n_computed == 2 and not orphan.exists()  # the dead writer's file is removed
    np.testing.assert_array_equal(np.load(npy), cache_at(tmp_path / "fresh").load(wavs[0]))


def test_worker_processes_match_in_process(tmp_path: Path, wavs: list[Path]) -> None:
    par = cache_at(tmp_path / "par").compute_many(wavs, workers=2, progress=False)
    ser = cache_at(tmp_path / "ser").compute_many(wavs, workers=1, progress=False)
    assert par.n_computed == 4
    # the workers' data files were all committed by the parent: none left as temp files
    assert not [p.name for p in (tmp_path / "par").rglob("*") if ".tmp" in p.name]
    for a, b in zip(par, ser):
        np.testing.assert_array_equal(np.load(a.cache_file), np.load(b.cache_file))
    assert cache_at(tmp_path / "par").compute_many(wavs, workers=2).n_computed == 0


def test_unreadable_files_are_reported(tmp_path: Path, wavs: list[Path]) -> None:
    bad = tmp_path / "audio" / "noise.ogg"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    missing = tmp_path / "audio" / "gone.wav"
    cache = cache_at(tmp_path / "cache")
    res = cache.compute_many([wavs[0], bad, missing], workers=2, progress=False)
    assert [e.ok for e in res] == [True, False, False]
    assert "noise.ogg" in res[bad].error and "not a recognised audio format" in res[bad].error
    assert "gone.wav" in res[missing].error and "file not found" in res[missing].error
    assert res[bad].cache_file is None and len(res.failed) == 2 and len(res.ok) == 1
    # the failure is remembered: not decoded again, same message (naming the new path)
    renamed = tmp_path / "audio" / "noise_copy.ogg"
    shutil.copy(bad, renamed)
    again = cache.compute_many([bad, renamed], workers=1, progress=False)
    assert again.n_computed == 0
    assert "noise_copy.ogg" in again[renamed].error
    assert cache.get(bad) is None
    with pytest.raises(BadInputError, match="not a recognised audio format"):
        cache.load(bad)
    with pytest.raises(BadInputError, match="file not found"):
        cache.load(missing)


def test_long_files_are_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files above STREAM_ABOVE_S are transformed block by block, with the same result."""
    import birdstack.features.cache as cache_mod

    path = tmp_path / "long.wav"
    x = np.concatenate([chirp(i, seconds=2.0) for i in range(4)])  # 8 s
    sf.write(path, x, 16000, subtype="FLOAT")
    whole = cache_at(tmp_path / "a").load(path)
    monkeypatch.setattr(cache_mod, "STREAM_ABOVE_S", 1.0)
    entry = cache_at(tmp_path / "b").compute_many([path], workers=1, progress=False)[0]
    assert entry.samples == x.size and entry.frames == whole.shape[1]
    np.testing.assert_allclose(np.load(entry.cache_file), whole, atol=1e-4, rtol=0)


def test_real_recordings_default_settings(tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parents[1] / "data" / "birds-demo" / "train_audio"
    files = sorted(demo.rglob("*.ogg"))[:2]
    assert len(files) == 2, "embedded demo data missing"
    cache = FeatureCache(tmp_path, AudioConfig(), SpectrogramConfig())
    res = cache.compute_many(files, workers=2, progress=False)
    for f, e in zip(files, res):
        info = sf.info(f)
        assert e.samples == info.frames and e.duration_s == pytest.approx(info.duration)
        assert np.load(e.cache_file).shape == (128, 1 + info.frames // 512) == (128, e.frames)

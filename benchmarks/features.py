"""Feature extraction speed: birdstack's FeatureCache against a librosa loop.

Measured in one run, on the same files, as seconds of audio per second of wall time:

* baseline: ``librosa.load(sr=32000)`` + ``librosa.feature.melspectrogram`` +
  ``librosa.power_to_db``, file by file (the usual notebook loop);
* birdstack cold: :meth:`FeatureCache.compute_many` into a fresh temporary cache
  (decoding, log-mel and atomic writes, in ``--workers`` processes);
* birdstack warm: the same call again (everything found in the cache).

Both sides are warmed up on one file first (imports, librosa's lazy loading), and
every file is read once beforehand so neither side pays for cold disk reads::

    .venv/bin/python benchmarks/features.py                # the dev set (or the demo data)
    .venv/bin/python benchmarks/features.py --limit 40 --serial
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / ".." / "shared" / "data" / "birds-dev"
DEMO = REPO / "data" / "birds-demo"
AUDIO_EXT = {".ogg", ".mp3", ".wav", ".flac"}


def find_files(data: Path, limit: int | None) -> list[Path]:
    root = data / "train_audio" if (data / "train_audio").is_dir() else data
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXT and p.is_file())
    return files[:limit] if limit else files


def librosa_features(path: Path, sr: int, spec) -> np.ndarray:
    import librosa

    y, _ = librosa.load(path, sr=sr)
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=sr,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.fmax,
        power=spec.power,
        center=True,
        pad_mode="constant",
    )
    return librosa.power_to_db(mel, ref=1.0, amin=spec.amin, top_db=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default: dev set)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N files")
    ap.add_argument("--workers", type=int, default=0, help="processes (0: all CPUs)")
    ap.add_argument("--serial", action="store_true", help="also time birdstack with 1 process")
    args = ap.parse_args(argv)

    from birdstack.config import AudioConfig, SpectrogramConfig
    from birdstack.features.cache import FeatureCache, default_workers

    data = args.data or (DEV if DEV.is_dir() else DEMO)
    files = find_files(data.resolve(), args.limit)
    if not files:
        print(f"no audio files under {data}", file=sys.stderr)
        return 1
    audio, spec = AudioConfig(), SpectrogramConfig()
    sr = audio.sample_rate
    total_s = sum(sf.info(f).duration for f in files)
    for f in files:  # page cache: neither side pays for cold reads
        f.read_bytes()
    workers = args.workers or default_workers()
    print(f"data: {data.resolve()}")
    hours = total_s / 3600
    print(f"files: {len(files)}, audio: {total_s:.0f} s ({hours:.2f} h), workers: {workers}")

    # warm-up (imports, librosa's lazy loading, torch's first ops)
    with tempfile.TemporaryDirectory() as tmp:
        librosa_features(files[0], sr, spec)
        FeatureCache(Path(tmp), audio, spec).compute_many(files[:1], workers=1, progress=False)

    t0 = time.perf_counter()
    for f in files:
        librosa_features(f, sr, spec)
    t_base = time.perf_counter() - t0
    print(f"baseline (librosa loop):   {t_base:7.2f} s  {total_s / t_base:8.0f} audio-s/s")

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp), audio, spec)
        t0 = time.perf_counter()
        res = cache.compute_many(files, workers=args.workers, progress=False)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = cache.compute_many(files, workers=args.workers, progress=False)
        t_warm = time.perf_counter() - t0
    print(
        f"birdstack cold cache:      {t_cold:7.2f} s  {total_s / t_cold:8.0f} audio-s/s  "
        f"({res.n_computed} computed, {len(res.failed)} unreadable)"
    )
    print(
        f"birdstack warm cache:      {t_warm:7.2f} s  {total_s / t_warm:8.0f} audio-s/s  "
        f"({again.n_computed} computed)"
    )
    if args.serial:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            FeatureCache(Path(tmp), audio, spec).compute_many(files, workers=1, progress=False)
            t_one = time.perf_counter() - t0
        print(f"birdstack cold, 1 process: {t_one:7.2f} s  {total_s / t_one:8.0f} audio-s/s")
    print(f"speed-up cold vs baseline: {t_base / t_cold:.2f}x (target >= 3x on 2 cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

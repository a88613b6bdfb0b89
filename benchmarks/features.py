"""Feature extraction speed: birdstack's FeatureCache against a librosa loop.

Measured in one run, on the same files, as seconds of audio per second of wall time:

* baseline: ``librosa.load(sr=32000)`` + ``librosa.feature.melspectrogram`` +
  ``librosa.power_to_db``, file by file (the usual notebook loop);
* birdstack cold: :meth:`FeatureCache.compute_many` into a fresh temporary cache
  (decoding, log-mel and atomic writes, in ``--workers`` processes);
* birdstack warm: the same call again (everything found in the cache).

CPU time (this process plus its worker processes) is printed too: on a machine
whose cores are shared with other jobs, wall-time ratios understate what more
processes would give, the CPU-time ratio does not.

Both sides are warmed up on one file first (imports, librosa's lazy loading), and
every file is read once beforehand so neither side pays for cold disk reads::

    .venv/bin/python benchmarks/features.py                # the dev set (or the demo data)
    .venv/bin/python benchmarks/features.py --limit 40 --serial
"""

from __future__ import annotations

import argparse
import os
import resource
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

    from birdstack.features.mel import librosa_logmel

    y, _ = librosa.load(path, sr=sr)
    return librosa_logmel(y, sr, spec)


class Timer:
    """Wall time and CPU time (this process and its finished children)."""

    def _cpu(self) -> float:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + kids.ru_utime + kids.ru_stime

    def __enter__(self) -> Timer:
        self._wall, self._cpu0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = self._cpu() - self._cpu0


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

    def report(name: str, wall: float, cpu: float, extra: str = "") -> None:
        print(
            f"{name:27s} {wall:7.2f} s wall {total_s / wall:8.0f} audio-s/s   "
            f"{cpu:7.2f} s CPU {total_s / cpu:6.0f} audio-s/CPU-s  {extra}"
        )

    load0 = os.getloadavg()[0]
    with Timer() as base:
        for f in files:
            librosa_features(f, sr, spec)
    report("baseline (librosa loop):", base.wall, base.cpu)

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp), audio, spec)
        with Timer() as cold:
            res = cache.compute_many(files, workers=args.workers, progress=False)
        with Timer() as warm:
            again = cache.compute_many(files, workers=args.workers, progress=False)
    n_bad = len(res.failed)
    report(
        "birdstack cold cache:", cold.wall, cold.cpu, f"({res.n_computed} computed, {n_bad} bad)"
    )
    report("birdstack warm cache:", warm.wall, warm.cpu, f"({again.n_computed} computed)")
    if args.serial:
        with tempfile.TemporaryDirectory() as tmp, Timer() as one:
            FeatureCache(Path(tmp), audio, spec).compute_many(files, workers=1, progress=False)
        report("birdstack cold, 1 process:", one.wall, one.cpu)
    print(
        f"speed-up cold vs baseline: {base.wall / cold.wall:.2f}x wall (target >= 3x on 2 cores), "
        f"{base.cpu / cold.cpu:.2f}x less CPU time"
    )
    print(
        f"load average (1 min) before/after: {load0:.1f} / {os.getloadavg()[0]:.1f} "
        f"on {workers} CPUs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

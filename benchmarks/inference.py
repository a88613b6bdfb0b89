"""Inference speed: real-time factor (audio seconds per wall second) of ``Predictor.predict``.

    .venv/bin/python benchmarks/inference.py                 # 30 min, 2 threads
    .venv/bin/python benchmarks/inference.py --minutes 60    # the 1-hour memory check

A long recording is made by concatenating real recordings (birds-dev when present:
``$BIRDSTACK_DEV_DATA``, ``data/birds-dev`` or ``../shared/data/birds-dev``; else the
embedded ``data/birds-demo``) to at least ``--minutes`` and written to a temporary
WAV (``--container ogg`` for Ogg Vorbis). Each configuration (model x runtime) runs
in its own process so its peak memory (RSS, polled with psutil) is its own; "growth"
is the peak minus the RSS just before the measured run (libraries and the model are
already loaded then), i.e. what processing the file itself needed. The time covers
decoding, log-mel and the model (loading the model is not counted); "CPU s" is the
process CPU time, a figure less sensitive than wall time to other load on the machine.
Decoding alone and decoding + log-mel are printed as ceilings. The models are
randomly initialised (speed does not depend on the weights); the stacked target
length follows the study's rule on the source recordings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mobilenet_compact", "resnet18")
RUNTIMES = ("torch", "onnx")


def find_data() -> Path:
    """birds-dev when available, else the embedded demo data."""
    cands = [os.environ.get("BIRDSTACK_DEV_DATA")]
    cands += [str(REPO / "data" / "birds-dev"), str(REPO.parent / "shared" / "data" / "birds-dev")]
    for c in cands:
        if c and (Path(c) / "train_audio").is_dir():
            return Path(c)
    return REPO / "data" / "birds-demo"


class PeakRSS:
    """Polls this process's resident memory in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.base = self.proc.memory_info().rss  # before the measured work
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def make_long_recording(data: Path, minutes: float, out: Path, container: str) -> dict:
    """Concatenate recordings of ``data`` (sorted, repeated as needed) into ``out``."""
    import numpy as np
    import soundfile as sf

    from birdstack.features.audio import audio_info, load_audio

    files = sorted((data / "train_audio").rglob("*.ogg"))
    sr = 32000
    infos = [audio_info(f) for f in files]
    frames = [1 + int(i.duration_s * sr) // 512 for i in infos]
    labels = [f.parent.name for f in files]
    need = int(minutes * 60 * sr)
    fmt = {"wav": ("WAV", "PCM_16"), "ogg": ("OGG", "VORBIS")}[container]
    total, i = 0, 0
    with sf.SoundFile(out, "w", sr, 1, format=fmt[0], subtype=fmt[1]) as fh:
        while total < need:
            w = load_audio(files[i % len(files)], sr)[: need - total]
            fh.write(np.clip(w, -1, 1))
            total += w.size
            i += 1
    return {"seconds": total / sr, "frames": frames, "labels": labels, "n_files": len(files)}


def make_checkpoint(path: Path, model: str, target_frames: int, n_classes: int) -> None:
    """A randomly initialised birdstack checkpoint (same structure as a trained one)."""
    import torch

    from birdstack.config import Config, EncodingConfig, OptimConfig, Preprocessing, to_dict
    from birdstack.models import create_model
    from birdstack.training.module import BirdClassifier

    torch.manual_seed(0)
    pre = Preprocessing(encoding=EncodingConfig(kind="stacked", target_frames=target_frames))
    classes = [f"species_{i:02d}" for i in range(n_classes)]
    net = create_model(model, num_classes=n_classes, in_chans=pre.input_shape()[0])
    meta = {
        "model": {"name": model, "args": dict(net.model_args)},
        "preprocessing": to_dict(pre),
        "config": Config().to_dict(),
    }
    module = BirdClassifier(net, OptimConfig(), classes, meta=meta)
    ckpt = {"state_dict": module.state_dict(), "epoch": 0}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)


# --------------------------------------------------------------------------- one measurement


def _best_of(repeat: int, fn) -> tuple[float, float, object]:
    """Run ``fn`` ``repeat`` times; the fastest run's wall and CPU seconds and its result."""
    best = (float("inf"), 0.0, None)
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best[0]:
            best = (wall, cpu, out)
    return best


def run_one(
    kind: str, audio: Path, ckpt: Path | None, runtime: str, threads: int, repeat: int = 2
) -> dict:
    """Measure one configuration in this process (best of ``repeat`` runs)."""
    import torch

    torch.set_num_threads(threads)
    from birdstack.features.audio import audio_info, stream_audio

    seconds = audio_info(audio).duration_s
    if kind == "decode":

        def decode() -> int:
            return sum(b.size for b in stream_audio(audio, 32000, block_s=60.0))

        return _measure(seconds, repeat, decode)[0]

    from birdstack.inference.predictor import Predictor, iter_ahead

    if kind == "features":  # as predict runs it: decoding + log-mel in a background thread
        assert ckpt is not None
        pred = Predictor.from_checkpoint(ckpt, threads=threads)

        def features() -> int:
            return sum(c.shape[1] for c in iter_ahead(pred.file_chunks(audio)))

        return _measure(seconds, repeat, features)[0]

    assert ckpt is not None
    onnx_path = None
    if runtime == "onnx":
        from birdstack.inference.export import export_onnx

        onnx_path = export_onnx(ckpt, ckpt.with_suffix(".onnx"))
    pred = Predictor.from_checkpoint(ckpt, runtime=runtime, onnx_path=onnx_path, threads=threads)
    pred.predict(__import__("numpy").zeros(32000 * 40, "float32"))  # warm-up
    figures, result = _measure(seconds, repeat, lambda: pred.predict(audio))
    return {
        **figures,
        "windows": int(len(result.starts_s)),
        "input_shape": list(pred.preprocessing.input_shape()),
    }


def _measure(seconds: float, repeat: int, fn) -> tuple[dict, object]:
    """Best-of-``repeat`` wall and CPU time of ``fn`` with its peak RSS; and its last result."""
    with PeakRSS() as mem:
        wall, cpu, result = _best_of(repeat, fn)
    figures = {
        "seconds": seconds,
        "wall": wall,
        "cpu": cpu,
        "peak_rss": mem.peak,
        "base_rss": mem.base,
    }
    return figures, result


def _subprocess(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark step {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--container", choices=("wav", "ogg"), default="wav")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    ap.add_argument("--repeat", type=int, default=2, help="runs per configuration (best counts)")
    ap.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        kind, audio, ckpt, runtime, threads, repeat = args.one
        ck = Path(ckpt) if ckpt != "-" else None
        res = run_one(kind, Path(audio), ck, runtime, int(threads), int(repeat))
        print(json.dumps(res))
        return

    from birdstack.features.encoding import target_frames_rule

    data = find_data()
    with tempfile.TemporaryDirectory(prefix="birdstack-bench-") as tmp:
        tmpd = Path(tmp)
        audio = tmpd / f"long.{args.container}"
        t = time.perf_counter()
        src = make_long_recording(data, args.minutes, audio, args.container)
        target = target_frames_rule(src["frames"], src["labels"], 0.8, 10)
        n_classes = len(set(src["labels"]))
        print(
            f"recording: {src['seconds'] / 60:.1f} min from {src['n_files']} files of {data.name} "
            f"({args.container}, {audio.stat().st_size / 1e6:.0f} MB, made in "
            f"{time.perf_counter() - t:.0f} s); stacked target {target} frames "
            f"({target * 512 / 32000:.1f} s), {n_classes} classes, {args.threads} threads"
        )
        ckpts = {}
        for m in args.models:
            ckpts[m] = tmpd / f"{m}.ckpt"
            make_checkpoint(ckpts[m], m, target, n_classes)

        rows: list[tuple[str, str, dict]] = []
        th, rep = str(args.threads), str(args.repeat)
        first = str(ckpts[args.models[0]])
        rows.append(("decoding only", "", _subprocess(["decode", str(audio), "-", "-", th, rep])))
        rows.append(
            ("decoding + log-mel", "", _subprocess(["features", str(audio), first, "-", th, rep]))
        )
        for m in args.models:
            for rt in args.runtimes:
                argv = ["predict", str(audio), str(ckpts[m]), rt, th, rep]
                rows.append((m, rt, _subprocess(argv)))

    load = f" (load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    print(f"\nbest of {args.repeat} runs each{load}")
    print(
        f"{'configuration':<22} {'runtime':<8} {'wall s':>8} {'RTF':>9} {'CPU s':>7} "
        f"{'peak RSS':>10} {'growth':>8}"
    )
    for name, rt, r in rows:
        rtf = r["seconds"] / r["wall"]
        print(
            f"{name:<22} {rt:<8} {r['wall']:>8.2f} {rtf:>8.0f}x {r['cpu']:>7.2f} "
            f"{r['peak_rss'] / 2**20:>7.0f} MiB {(r['peak_rss'] - r['base_rss']) / 2**20:>4.0f} MiB"
        )
    by = {(n, rt): r for n, rt, r in rows}
    for m in args.models:
        if (m, "torch") in by and (m, "onnx") in by:
            ratio = by[(m, "torch")]["wall"] / by[(m, "onnx")]["wall"]
            print(f"{m}: ONNX Runtime is {ratio:.2f}x the speed of PyTorch eager")


if __name__ == "__main__":
    main()

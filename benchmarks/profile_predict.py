"""Where the CPU time of ``predict`` goes, and the front end's options side by side.

    .venv/bin/python benchmarks/profile_predict.py --minutes 30

1. **Profile**: cProfile of one recording through the same stages ``birdstack
   predict`` runs (decode in blocks, log-mel, window encoding, the model with ONNX
   Runtime on ``--threads``, the CSV writer), run serially in this thread so the
   profiler sees every stage; the profiler's clock is the process CPU time, so the
   model's ONNX Runtime threads are counted. Shares are of the total CPU time.
2. **Side by side**, in CPU seconds per audio hour (one thread): decoders
   (libsndfile via soundfile; PyAV when installed), soxr qualities (resampling a
   48 kHz copy of the same audio to 32 kHz: birds-dev is stored at 32 kHz, field
   recorders write 44.1/48 kHz), and the log-mel STFT in float64 (the default,
   as training) against float32. Parity: max |dB difference| against the default
   (HQ / float64, which equals librosa's ``soxr_hq`` load and log-mel) within
   ``top_db`` of each file's maximum, the range models see (tests/test_mel.py
   pins < 0.01 dB for the float32 STFT against librosa there).

The recording is birds-dev concatenated to ``--minutes`` (as benchmarks/inference.py
makes it), written as Ogg Vorbis; the model is a randomly initialised
mobilenet_compact (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = {  # stage: (module path fragment, function name) whose cumulative time counts
    "Ogg container check": [("features/audio.py", "_ogg_problem")],
    "decode (libsndfile)": [("soundfile.py", "read")],
    "resample (soxr)": [("soxr", "resample_chunk")],
    "STFT + mel + dB (torch)": [("features/mel.py", "forward")],
    "window encoding (numpy)": [("inference/predictor.py", "encode")],
    "model (ONNX Runtime)": [("inference/predictor.py", "__call__")],
    "softmax": [("inference/predictor.py", "softmax")],
    "writing (CSV)": [("inference/writers.py", "write"), ("inference/writers.py", "finish")],
}


def cpu_per_hour(fn, seconds: float, repeat: int = 2) -> tuple[float, object]:
    """Best-of-``repeat`` process CPU seconds of ``fn`` per hour of audio, and its result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        c0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - c0)
    return best / (seconds / 3600), out


def profile(audio: Path, onnx: Path, threads: int, out_dir: Path) -> None:
    from birdstack.inference.predictor import Predictor
    from birdstack.inference.writers import OutputOptions, PredictionWriter

    pred = Predictor.from_onnx(onnx, threads=threads)
    pred.feature_workers = 1  # serial: the profiler sees one thread
    pred.threads = 1  # torch threads of this thread: 1, as predict's decoding threads run
    pred.predict(np.zeros(32000 * 40, "float32"))  # warm-up
    writer = PredictionWriter(out_dir, OutputOptions(), {"model": "bench"})
    prof = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    prof.enable()
    counter = [0]
    res = pred.score_frames(pred.file_chunks(audio, counter=counter), audio.name, counter)
    writer.write("long", res, audio)
    writer.finish(["long"])
    prof.disable()
    total = time.process_time() - c0
    st = pstats.Stats(prof, stream=io.StringIO())
    hours = res.duration_s / 3600
    print(
        f"\n1. profile: {res.duration_s / 60:.1f} min Ogg, {len(res.starts_s)} windows, "
        f"{total:.2f} CPU s in all ({total / hours:.1f} CPU s per audio hour)"
    )
    print(f"{'stage':<28} {'CPU s':>7} {'share':>7} {'CPU s/h':>8}")
    counted = 0.0
    for stage, keys in STAGES.items():
        cum = 0.0
        for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
            if any(frag in file and name == fn for frag, fn in keys):
                cum += ct
        counted += cum
        print(f"{stage:<28} {cum:>7.2f} {cum / total:>7.1%} {cum / hours:>8.1f}")
    rest = total - counted
    print(f"{'other (glue, copies)':<28} {rest:>7.2f} {rest / total:>7.1%} {rest / hours:>8.1f}")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    print("\ntop functions by own CPU time:")
    print("\n".join(buf.getvalue().splitlines()[6:22]))


def side_by_side(audio: Path, tmp: Path) -> None:
    import soundfile as sf
    import soxr
    import torch

    from birdstack.config import SpectrogramConfig
    from birdstack.features.audio import stream_audio
    from birdstack.features.mel import LogMel

    torch.set_num_threads(1)
    seconds = sf.info(audio).duration
    block = 32000 * 60
    print(f"\n2. side by side, one thread, CPU s per audio hour ({seconds / 60:.1f} min of audio)")

    def sf_decode(path: Path) -> int:
        n = 0
        with sf.SoundFile(path) as fh:
            for b in fh.blocks(blocksize=block, dtype="float32"):
                n += b.shape[0]
        return n

    rows = []
    cps, _ = cpu_per_hour(lambda: sf_decode(audio), seconds)
    rows.append(("decode Ogg Vorbis, libsndfile (soundfile)", cps, ""))
    try:
        import av  # noqa: F401

        def av_decode(path: Path) -> int:
            n = 0
            with av.open(str(path)) as c:
                for frame in c.decode(audio=0):
                    n += frame.samples
            return n

        cps, _ = cpu_per_hour(lambda: av_decode(audio), seconds)
        rows.append(("decode Ogg Vorbis, FFmpeg (PyAV)", cps, ""))
    except ImportError:
        rows.append(("decode Ogg Vorbis, FFmpeg (PyAV)", float("nan"), "not installed: skipped"))
    cps, _ = cpu_per_hour(lambda: sum(b.size for b in stream_audio(audio, 32000)), seconds)
    rows.append(("birdstack stream_audio (checks + decode)", cps, ""))

    # a 48 kHz copy of the same audio, to resample back to 32 kHz
    wave = np.concatenate(list(stream_audio(audio, 32000)))
    hi = soxr.resample(wave, 32000, 48000, quality="VHQ").astype(np.float32)
    spec = SpectrogramConfig()
    ref_mel = LogMel(spec, 32000)
    probe = [hi[i * 48000 * 60 : i * 48000 * 60 + 48000 * 30] for i in (1, 7, 13)]

    def logmel(m: LogMel, w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return m(torch.from_numpy(np.ascontiguousarray(w))).numpy()

    ref_db = [logmel(ref_mel, soxr.resample(p, 48000, 32000, quality="HQ")) for p in probe]

    def max_diff(dbs: list[np.ndarray]) -> float:
        worst = 0.0
        for db, ref in zip(dbs, ref_db):
            n = min(db.shape[1], ref.shape[1])
            mask = ref[:, :n] > ref.max() - spec.top_db
            worst = max(worst, float(np.abs(db[:, :n] - ref[:, :n])[mask].max()))
        return worst

    for q in ("VHQ", "HQ", "MQ", "LQ", "QQ"):

        def resample(q: str = q, hi: np.ndarray = hi) -> int:
            rs = soxr.ResampleStream(48000, 32000, 1, dtype="float32", quality=q)
            n = 0
            step = 48000 * 60
            for i in range(0, hi.size, step):
                n += rs.resample_chunk(hi[i : i + step], last=i + step >= hi.size).size
            return n

        cps, _ = cpu_per_hour(resample, seconds)
        d = max_diff([logmel(ref_mel, soxr.resample(p, 48000, 32000, quality=q)) for p in probe])
        note = "default (= librosa soxr_hq)" if q == "HQ" else ""
        rows.append((f"resample 48 -> 32 kHz, soxr {q}", cps, f"max {d:.3g} dB vs HQ {note}"))
    del hi

    for name, dt in (("float64", torch.float64), ("float32", torch.float32)):
        m = LogMel(spec, 32000, dtype=dt)

        def run(m: LogMel = m) -> int:
            n = 0
            for i in range(0, wave.size, block):
                n += logmel(m, wave[i : i + block]).shape[1]
            return n

        cps, _ = cpu_per_hour(run, seconds)
        d = max_diff([logmel(m, soxr.resample(p, 48000, 32000, quality="HQ")) for p in probe])
        note = "default (as training)" if dt == torch.float64 else ""
        rows.append(
            (f"log-mel, {name} STFT (60 s blocks)", cps, f"max {d:.3g} dB vs float64 {note}")
        )

    print(f"{'step':<44} {'CPU s/h':>8}  parity / note")
    for name, cps, note in rows:
        print(f"{name:<44} {cps:>8.1f}  {note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (2)")
    ap.add_argument("--audio", help="an existing long recording (default: made from birds-dev)")
    args = ap.parse_args()

    from birdstack.inference.export import export_onnx
    from inference import find_data, make_checkpoint, make_long_recording

    with tempfile.TemporaryDirectory(prefix="birdstack-profile-") as tmp:
        tmpd = Path(tmp)
        audio = Path(args.audio) if args.audio else tmpd / "long.ogg"
        if not args.audio:
            make_long_recording(find_data(), args.minutes, audio, "ogg")
        ckpt = tmpd / "m.ckpt"
        make_checkpoint(ckpt, "mobilenet_compact", 310, 24)
        onnx = export_onnx(ckpt, tmpd / "m.onnx")
        profile(audio, Path(onnx), args.threads, tmpd / "out")
        side_by_side(audio, tmpd)


if __name__ == "__main__":
    main()

"""ONNX Runtime's spin-waiting threads on or off, measured side by side on the same file.

    PYTHONPATH=src .venv/bin/python benchmarks/ort_spinning.py AUDIO [--repeat 5]

``predict``'s ONNX runner turns off ``session.intra_op.allow_spinning`` (ONNX Runtime's
intra-op threads otherwise spin for work between calls, on the cores the decoding and
log-mel threads need). This script builds two predictors of the same randomly initialised
mobilenet_compact (stacked and 5 s segments inputs, as ``benchmarks/inference.py``), one
with spinning on and one with it off, and runs them in turn on ``AUDIO`` ``--repeat``
times each, so both see the same machine load. It prints the best and median real-time
factor and the median CPU time of each. Make the long recording with
``benchmarks/inference.py``'s recipe, or give any long file (e.g. 30 min of Ogg Vorbis).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build(tmp: Path, encoding: str) -> Path:
    """An exported mobilenet_compact with random weights and ``encoding`` inputs."""
    from birdstack.config import EncodingConfig, Preprocessing
    from birdstack.inference.export import export_onnx
    from inference import make_checkpoint

    enc = EncodingConfig(kind="stacked", target_frames=2690) if encoding == "stacked" else None
    pre = Preprocessing(encoding=enc) if enc else Preprocessing()
    ckpt = tmp / f"{encoding}.ckpt"
    make_checkpoint(ckpt, "mobilenet_compact", pre, 6)
    export_onnx(ckpt, ckpt.with_suffix(".onnx"))
    return ckpt.with_suffix(".onnx")


def predictor(onnx: Path, spinning: bool, threads: int):
    """A Predictor whose ONNX Runtime session has spinning on or off."""
    import onnxruntime as ort

    from birdstack.inference.predictor import Predictor

    original = ort.SessionOptions

    class Options(original):  # the runner's own options, with this one setting changed
        def add_session_config_entry(self, key: str, value: str) -> None:
            if key == "session.intra_op.allow_spinning":
                value = "1" if spinning else "0"
            super().add_session_config_entry(key, value)

    ort.SessionOptions = Options
    try:
        pred = Predictor.from_onnx(onnx, threads=threads)
    finally:
        ort.SessionOptions = original
    pred.predict(np.zeros(32000 * 40, "float32"))  # warm-up
    return pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("audio", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encodings", nargs="+", default=["stacked", "segments"])
    args = ap.parse_args()
    from birdstack.features.audio import audio_info

    seconds = audio_info(args.audio).duration_s
    with tempfile.TemporaryDirectory() as tmp:
        for enc in args.encodings:
            onnx = build(Path(tmp), enc)
            preds = {s: predictor(onnx, s, args.threads) for s in (True, False)}
            runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for _ in range(args.repeat):
                for s, p in preds.items():
                    c0, t0 = time.process_time(), time.perf_counter()
                    p.predict(args.audio)
                    runs[s].append((time.perf_counter() - t0, time.process_time() - c0))
            for s, r in runs.items():
                walls = [w for w, _ in r]
                print(
                    f"{enc:9s} spinning {'on ' if s else 'off'}: best {seconds / min(walls):5.0f}x"
                    f"  median {seconds / statistics.median(walls):5.0f}x"
                    f"  CPU s median {statistics.median(c for _, c in r):.2f}"
                )


if __name__ == "__main__":
    main()

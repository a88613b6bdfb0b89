"""Inference speed: real-time factor (audio seconds per wall second) of ``Predictor.predict``.

    .venv/bin/python benchmarks/inference.py                 # 30 min, 2 threads
    .venv/bin/python benchmarks/inference.py --minutes 60 --models mobilenet_compact \
        --runtimes onnx --containers ogg                     # the 1-hour memory check
    .venv/bin/python benchmarks/inference.py --containers ogg --runtimes onnx \
        --checkpoints labels=RUN_A/checkpoints/last.ckpt distilled=RUN_B/checkpoints/last.ckpt

A long recording is made by concatenating real recordings (birds-dev when present:
``$BIRDSTACK_DEV_DATA``, ``data/birds-dev`` or ``../shared/data/birds-dev``; else the
embedded ``data/birds-demo``) to at least ``--minutes``, written to a temporary
WAV and transcoded with soundfile into each of ``--containers`` (Ogg Vorbis, MP3,
FLAC; a codec this libsndfile lacks is skipped with the reason printed). Each
configuration (container x model x runtime) runs in its own process so its peak
memory (RSS, polled with psutil) is its own; "growth" is the peak minus the RSS
just before the measured run (libraries and the model are already loaded then),
i.e. what processing the file itself needed. The memory table gives the RSS after
the imports, after loading the model and the peak, and the imports' share of the
peak; the ``birdstack predict`` row runs the command line itself (ONNX export
given, ``--threads``) and polls its RSS from outside. The time covers
decoding, log-mel and the model (loading the model is not counted); "CPU s" is the
process CPU time, a figure less sensitive than wall time to other load on the machine.
Decoding alone and decoding + log-mel are printed as ceilings. The models are
randomly initialised (speed does not depend on the weights), each with the inputs of
``--encodings``: the study's stacked recording (its target length follows the study's
rule on the source recordings; N segments as the channels of one input, so a tenth of
the pixels of the same audio as 5 s segments) and 5 s segments (the training default),
with ``predict``'s default windows (the model's span, no overlap). ``--checkpoints
NAME=CKPT ...`` measures trained checkpoints instead (each with its own
preprocessing, exported to ONNX here), e.g. a distilled student next to the same
architecture trained on labels alone.

``--birdnet`` adds, per input format, the BirdNET-based model (a ``birdnet_linear``
head on BirdNET V2.4 windows: decoding, soxr to 48 kHz, BirdNET on LiteRT, the head;
``birdstack[birdnet]``) next to the ``birdnet`` package's own ``predict`` on the same
file and model file, with the same number of inference workers (``--threads``) plus
its one decoding process (``pip install 'birdstack[bench]'``)::

    .venv/bin/python benchmarks/inference.py --containers ogg --models mobilenet_compact \
        --runtimes onnx --birdnet
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mobilenet_compact", "resnet18")
RUNTIMES = ("torch", "onnx")
CONTAINERS = {  # soundfile format, subtype
    "wav": ("WAV", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "flac": ("FLAC", "PCM_16"),
}


def rss_now() -> dict:
    """Resident memory now: total, anonymous (private) and file-backed (shared libraries)."""
    import psutil

    out = {"rss": psutil.Process().memory_info().rss}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("RssAnon:", "RssFile:")):
                    key = "anon" if line.startswith("RssAnon") else "file"
                    out[key] = int(line.split()[1]) * 1024
    except OSError:  # not Linux
        pass
    return out


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
    fmt = CONTAINERS[container]
    total, i = 0, 0
    with sf.SoundFile(out, "w", sr, 1, format=fmt[0], subtype=fmt[1]) as fh:
        while total < need:
            w = load_audio(files[i % len(files)], sr)[: need - total]
            fh.write(np.clip(w, -1, 1))
            total += w.size
            i += 1
    return {"seconds": total / sr, "frames": frames, "labels": labels, "n_files": len(files)}


def container_problem(container: str) -> str | None:
    """Why soundfile cannot write ``container`` here, or ``None``."""
    import soundfile as sf

    fmt, subtype = CONTAINERS[container]
    if fmt not in sf.available_formats():
        return f"libsndfile {sf.__libsndfile_version__} has no {fmt} format"
    if subtype not in sf.available_subtypes(fmt):
        return f"libsndfile {sf.__libsndfile_version__} cannot write {fmt}/{subtype}"
    return None


def transcode(src: Path, out: Path, container: str, block: int = 32000 * 60) -> None:
    """Re-encode ``src`` into ``out`` block by block (bounded memory)."""
    import soundfile as sf

    fmt, subtype = CONTAINERS[container]
    with (
        sf.SoundFile(src) as fin,
        sf.SoundFile(out, "w", fin.samplerate, fin.channels, format=fmt, subtype=subtype) as fout,
    ):
        for b in fin.blocks(blocksize=block, dtype="float32"):
            fout.write(b)


def make_checkpoint(path: Path, model: str, pre: Any, n_classes: int) -> None:
    """A randomly initialised birdstack checkpoint (same structure as a trained one).

    ``pre`` is its :class:`~birdstack.config.Preprocessing`; with the BirdNET front end
    the checkpoint also carries the installed model's identity, as training writes it.
    """
    import torch

    from birdstack.config import Config, OptimConfig, to_dict
    from birdstack.models import create_model
    from birdstack.training.module import BirdClassifier

    torch.manual_seed(0)
    classes = [f"species_{i:02d}" for i in range(n_classes)]
    net = create_model(model, num_classes=n_classes, in_chans=pre.input_shape()[0])
    meta = {
        "model": {"name": model, "args": dict(net.model_args)},
        "preprocessing": to_dict(pre),
        "config": Config().override({"task.kind": "multiclass"}).to_dict(),  # a softmax model
    }
    if pre.is_birdnet:
        from birdstack.features.birdnet import identity

        meta["backbone"] = identity(pre.birdnet)
    optim = OptimConfig(scheduler="none", label_smoothing=0.0)  # never trained
    module = BirdClassifier(net, optim, classes, meta=meta)
    ckpt = {"state_dict": module.state_dict(), "epoch": 0}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)


def run_birdnet_package(audio: Path, workers: int, repeat: int) -> dict:
    """The ``birdnet`` package's ``predict`` on ``audio`` with birdstack's model file."""
    from birdnet_embeddings import load_birdnet  # this folder's BirdNET benchmark
    from birdstack.config import Preprocessing
    from birdstack.features.birdnet import LABELS_NAME, model_path

    mfile = model_path(Preprocessing(frontend="birdnet").birdnet.model_file)
    model, _ = load_birdnet(mfile, mfile.parent / LABELS_NAME)
    if model is None:
        raise RuntimeError("the birdnet package is not installed: pip install 'birdstack[bench]'")
    opts = {"n_workers": workers, "n_producers": 1, "batch_size": 1, "top_k": 5}
    model.predict(audio, **opts)  # warm-up: imports, model file in the page cache
    # birdnet starts its decoding and inference processes on every call and they end with
    # it, so their CPU time is in os.times()'s children fields afterwards (not their RSS)
    t0 = os.times()
    figures = _measure(_audio_seconds(audio), repeat, lambda: model.predict(audio, **opts))[0]
    t1 = os.times()
    children = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    figures["cpu"] += children / repeat
    return figures


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
    phases = {"start": rss_now()}
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    if runtime == "torch":  # the ONNX path never imports torch (as birdstack predict runs it)
        import torch

        torch.set_num_threads(threads)
    import birdstack.inference.predictor  # noqa: F401

    phases["imports"] = rss_now()
    from birdstack.features.audio import audio_info, stream_audio

    seconds = audio_info(audio).duration_s
    if kind == "decode":

        def decode() -> int:
            return sum(b.size for b in stream_audio(audio, 32000, block_s=60.0))

        return _measure(seconds, repeat, decode)[0]

    from birdstack.inference.predictor import Predictor, iter_ahead

    if kind == "features":  # as predict runs it: decoding + log-mel in a background thread
        assert ckpt is not None
        if runtime == "onnx":  # the NumPy front end of an ONNX predictor
            pred = Predictor.from_onnx(ckpt.with_suffix(".onnx"), threads=threads)
        else:  # torch's LogMel, the feature cache's own
            pred = Predictor.from_checkpoint(ckpt, threads=threads)

        def features() -> int:
            return sum(c.shape[1] for c in iter_ahead(pred.file_chunks(audio)))

        return _measure(seconds, repeat, features)[0]

    assert ckpt is not None
    if runtime == "onnx":  # exported beforehand (main), as a user runs an exported model
        pred = Predictor.from_onnx(ckpt.with_suffix(".onnx"), threads=threads)
    else:
        pred = Predictor.from_checkpoint(ckpt, runtime=runtime, threads=threads)
    phases["model"] = rss_now()
    pred.predict(__import__("numpy").zeros(32000 * 40, "float32"))  # warm-up
    figures, result = _measure(seconds, repeat, lambda: pred.predict(audio))
    return {
        **figures,
        "phases": phases,
        "windows": int(len(result.starts_s)),
        "input_shape": list(pred.preprocessing.input_shape()),
    }


def run_cli(audio: Path, onnx: Path, threads: int, out: Path) -> dict:
    """``birdstack predict MODEL.onnx AUDIO`` as a user runs it; peak RSS polled from outside."""
    import psutil

    seconds = _audio_seconds(audio)
    cmd = [sys.executable, "-m", "birdstack.cli.main", "predict", str(onnx), str(audio)]
    cmd += ["--out", str(out), "--threads", str(threads), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak, cpu = 0, 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
            t = ps.cpu_times()
            cpu = t.user + t.system
        except psutil.Error:
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"birdstack predict failed:\n{err[-3000:]}")
    return {"seconds": seconds, "wall": wall, "cpu": cpu, "peak_rss": peak, "base_rss": 0}


def _audio_seconds(audio: Path) -> float:
    from birdstack.features.audio import audio_info

    return audio_info(audio).duration_s


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
    ap.add_argument(
        "--containers",
        nargs="+",
        choices=tuple(CONTAINERS),
        default=["ogg", "mp3", "flac"],
        help="input formats, each made from the same audio (default: ogg mp3 flac)",
    )
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument(
        "--encodings",
        nargs="+",
        choices=("stacked", "segments"),
        default=["stacked", "segments"],
        help="inputs of the --models: the study's stacked recording (10 segments as the "
        "channels of one input) and/or 5 s segments (the default for training since #12), "
        "each with predict's default windows",
    )
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    ap.add_argument(
        "--checkpoints",
        nargs="+",
        metavar="NAME=CKPT",
        help="trained birdstack checkpoints to measure instead of --models (random weights)",
    )
    ap.add_argument(
        "--birdnet",
        action="store_true",
        help="also the BirdNET-based model and the birdnet package's predict (same file)",
    )
    ap.add_argument("--repeat", type=int, default=2, help="runs per configuration (best counts)")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    ap.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        kind, audio, ckpt, runtime, threads, repeat = args.one
        ck = Path(ckpt) if ckpt != "-" else None
        if kind == "birdnet-package":
            res = run_birdnet_package(Path(audio), int(threads), int(repeat))
        else:
            res = run_one(kind, Path(audio), ck, runtime, int(threads), int(repeat))
        print(json.dumps(res))
        return

    from birdstack.config import EncodingConfig, Preprocessing
    from birdstack.features.encoding import target_frames_rule
    from birdstack.inference.export import export_onnx

    data = find_data()
    print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows: list[tuple[str, str, str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="birdstack-bench-") as tmp:
        tmpd = Path(tmp)
        wav = tmpd / "long.wav"
        t = time.perf_counter()
        src = make_long_recording(data, args.minutes, wav, "wav")
        target = target_frames_rule(src["frames"], src["labels"], 0.8, 10)
        n_classes = len(set(src["labels"]))
        print(
            f"recording: {src['seconds'] / 60:.1f} min from {src['n_files']} files of {data.name} "
            f"(made in {time.perf_counter() - t:.0f} s); stacked target {target} frames "
            f"({target * 512 / 32000:.1f} s), {n_classes} classes, {args.threads} threads"
        )
        ckpts = {}
        if args.checkpoints:
            args.models = []
            for spec in args.checkpoints:
                name, sep, path = spec.partition("=")
                if not sep or not Path(path).is_file():
                    raise SystemExit(f"--checkpoints {spec!r}: give NAME=PATH of a checkpoint")
                ckpts[name] = tmpd / f"{name}.ckpt"  # a copy: the ONNX file goes beside it
                shutil.copyfile(path, ckpts[name])
                args.models.append(name)
        else:
            inputs = {
                "stacked": Preprocessing(
                    encoding=EncodingConfig(kind="stacked", target_frames=target)
                ),
                "segments": Preprocessing(encoding=EncodingConfig(kind="segments")),
            }
            names = []
            for m in args.models:
                for enc in args.encodings:
                    name = f"{m} ({enc})"
                    ckpts[name] = tmpd / f"{m}-{enc}.ckpt"
                    make_checkpoint(ckpts[name], m, inputs[enc], n_classes)
                    names.append(name)
            args.models = names
        if "onnx" in args.runtimes:
            for ck in ckpts.values():
                export_onnx(ck, ck.with_suffix(".onnx"))
        bn_ckpt = tmpd / "birdnet_linear.ckpt"
        if args.birdnet:
            make_checkpoint(bn_ckpt, "birdnet_linear", Preprocessing(frontend="birdnet"), n_classes)
            if "onnx" in args.runtimes:  # the head exported: BirdNET in LiteRT, no torch
                export_onnx(bn_ckpt, bn_ckpt.with_suffix(".onnx"))

        th, rep = str(args.threads), str(args.repeat)
        first = str(ckpts[args.models[0]])
        front = "onnx" if "onnx" in args.runtimes else "torch"  # which log-mel front end
        for c in args.containers:
            problem = container_problem(c)
            if problem:
                print(f"{c}: skipped ({problem})")
                continue
            audio = wav if c == "wav" else tmpd / f"long.{c}"
            if c != "wav":
                t = time.perf_counter()
                transcode(wav, audio, c)
                print(
                    f"{c}: {audio.stat().st_size / 1e6:.0f} MB, encoded in "
                    f"{time.perf_counter() - t:.0f} s"
                )
            rows.append(
                (c, "decoding only", "", _subprocess(["decode", str(audio), "-", "-", th, rep]))
            )
            rows.append(
                (
                    c,
                    "decoding + log-mel",
                    "",
                    _subprocess(["features", str(audio), first, front, th, rep]),
                )
            )
            for m in args.models:
                for rt in args.runtimes:
                    argv = ["predict", str(audio), str(ckpts[m]), rt, th, rep]
                    rows.append((c, m, rt, _subprocess(argv)))
            if args.birdnet:  # the head in torch, then exported to ONNX (torch-free)
                argv = ["predict", str(audio), str(bn_ckpt), "torch", th, rep]
                rows.append((c, "BirdNET V2.4 + linear head", "litert", _subprocess(argv)))
                if "onnx" in args.runtimes:
                    argv = ["predict", str(audio), str(bn_ckpt), "onnx", th, rep]
                    name = "BirdNET V2.4 + linear head (ONNX)"
                    rows.append((c, name, "litert", _subprocess(argv)))
                try:
                    argv = ["birdnet-package", str(audio), "-", "-", th, rep]
                    rows.append((c, "birdnet package predict", "litert", _subprocess(argv)))
                except RuntimeError as e:
                    print(f"{c}: birdnet package not measured ({str(e).splitlines()[-1]})")
            if "onnx" in args.runtimes:
                for i, m in enumerate(args.models):
                    out = tmpd / f"out-{c}-{i}"
                    r = run_cli(audio, ckpts[m].with_suffix(".onnx"), args.threads, out)
                    rows.append((c, f"birdstack predict, {m}", "onnx", r))

    load = f" (load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    print(f"\nbest of {args.repeat} runs each{load}")
    print(
        f"{'input':<5} {'configuration':<50} {'runtime':<8} {'wall s':>8} {'RTF':>9} "
        f"{'CPU s':>7} {'CPU s/h':>8} {'peak RSS':>10} {'growth':>8}"
    )
    for c, name, rt, r in rows:
        rtf = r["seconds"] / r["wall"]
        per_h = r["cpu"] / (r["seconds"] / 3600)
        growth = (r["peak_rss"] - r["base_rss"]) / 2**20 if r["base_rss"] else float("nan")
        print(
            f"{c:<5} {name:<50} {rt:<8} {r['wall']:>8.2f} {rtf:>8.0f}x {r['cpu']:>7.2f} "
            f"{per_h:>8.1f} {r['peak_rss'] / 2**20:>7.0f} MiB {growth:>4.0f} MiB"
        )
    print("(the birdstack predict row: the whole command, imports and model loading included)")
    by = {(c, n, rt): r for c, n, rt, r in rows}
    for c in args.containers:
        for m in args.models:
            if (c, m, "torch") in by and (c, m, "onnx") in by:
                ratio = by[(c, m, "torch")]["wall"] / by[(c, m, "onnx")]["wall"]
                cpu = by[(c, m, "torch")]["cpu"] / by[(c, m, "onnx")]["cpu"]
                print(
                    f"{c} {m}: ONNX Runtime is {ratio:.2f}x the speed of PyTorch eager "
                    f"({cpu:.2f}x in CPU time)"
                )
        if args.checkpoints:  # each trained model's speed against the first one's
            ref = args.models[0]
            for m in args.models[1:]:
                for rt in args.runtimes:
                    a, b = by.get((c, ref, rt)), by.get((c, m, rt))
                    if a and b:
                        print(
                            f"{c} {rt}: {m} runs at {a['wall'] / b['wall']:.1%} of {ref}'s "
                            f"real-time factor ({a['cpu'] / b['cpu']:.1%} in CPU time)"
                        )
        ours = by.get((c, "BirdNET V2.4 + linear head", "litert"))
        theirs = by.get((c, "birdnet package predict", "litert"))
        if ours and theirs:
            print(
                f"{c}: birdstack's BirdNET model runs at {theirs['wall'] / ours['wall']:.2f}x "
                f"the speed of the birdnet package's predict ({theirs['cpu'] / ours['cpu']:.2f}x "
                "in CPU time, birdnet's processes included; its peak RSS is the parent's only)"
            )
        base = by.get((c, "decoding only", ""))
        for m in args.models:
            r = by.get((c, m, "onnx")) or by.get((c, m, "torch"))
            if base and r:
                print(
                    f"{c} {m}: predict takes {r['cpu'] / base['cpu']:.2f}x the CPU time "
                    f"of decoding alone and runs at {base['wall'] / r['wall']:.0%} of its "
                    "real-time factor (the decoder's ceiling, measured in the same run: "
                    "comparable across days when the machine's speed is not)"
                )
    print(
        "\nmemory (MiB): RSS after the imports (onnxruntime, birdstack; torch with the torch "
        "runtime only), after loading the model, peak while predicting; anon = private, "
        "file = shared library pages"
    )
    for c, name, rt, r in rows:
        ph = r.get("phases")
        if not ph or "model" not in ph:
            continue
        imp, mod, peak = ph["imports"], ph["model"], r["peak_rss"]
        print(
            f"{c:<5} {name:<20} {rt:<6} imports {imp['rss'] / 2**20:>5.0f} "
            f"(anon {imp.get('anon', 0) / 2**20:.0f}, file {imp.get('file', 0) / 2**20:.0f}), "
            f"model loaded {mod['rss'] / 2**20:>5.0f}, peak {peak / 2**20:>5.0f}; "
            f"imports are {imp['rss'] / peak:.0%} of the peak"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "minutes": args.minutes,
                    "load_end": os.getloadavg()[0],
                    "rows": [
                        {"input": c, "configuration": n, "runtime": rt, **r} for c, n, rt, r in rows
                    ],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()

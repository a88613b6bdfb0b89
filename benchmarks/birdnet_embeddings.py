"""BirdNET V2.4 embedding speed: birdstack's FeatureCache against the ``birdnet`` package.

Measured in one run, on the same files and the same CPUs (``--cpus``, default 2:
this process is pinned to them and every worker process inherits the pinning),
as seconds of audio per second of wall time and per second of CPU time:

* birdstack cold: :meth:`FeatureCache.compute_many` into a fresh temporary cache
  (decoding, soxr resampling to 48 kHz, BirdNET on LiteRT with XNNPACK, batches of
  ``BirdnetConfig.batch_size`` windows (4; 32 before 2026-12-03), atomic writes of
  embeddings + logits), in ``--workers`` processes
  with one interpreter thread each;
* birdstack warm: the same call again (everything found in the cache);
* the ``birdnet`` package (1.3.1, ``pip install 'birdstack[bench]'``): its own
  embedding API, ``model.encode(files, n_workers=.., n_producers=.., batch_size=..)``,
  on the same FP32 model file birdstack uses (loaded with ``birdnet.load_custom``
  and ``library="litert"``, since nothing can be downloaded here).

How ``birdnet`` gets the same cores: ``n_workers=--workers`` inference processes
with one LiteRT thread each (birdnet always uses ``num_threads=1``), i.e. the same
inference parallelism as birdstack, plus ``n_producers=1`` process that decodes and
resamples (birdnet's pipeline cannot run without one). ``batch_size=1`` is
birdnet's default and its fastest setting here: to read the embeddings it runs the
interpreter with ``experimental_preserve_all_tensors`` (no XNNPACK), which keeps
every intermediate tensor (~110 MB per window), so larger batches mostly add page
faults (measured here: batch 4 1.8x slower, batch 32 about 4x slower and 4.5 GB of
memory). 2 producers were 1.4x slower than 1: they only oversubscribe 2 cores.
All three can be changed (``--bn-workers``, ``--bn-producers``, ``--bn-batch-size``).
birdnet starts its processes with ``fork`` here (``load_custom`` fixes the global
multiprocessing default, which birdnet then honours; ``BIRDNET_START_METHOD=spawn``
changes it); it starts them anew on every ``encode`` call, which is timed, as
birdstack's process pool is.

A correctness check compares, for the first ``--check`` files, birdstack's cached
embeddings with birdnet's for the same windows (the first min(n) of each file):
they differ slightly, birdnet resamples each 3 s window on its own with
``scipy.signal.resample`` and birdstack the whole stream with soxr; birdnet also
keeps a last window however short, birdstack only one holding >= 0.5 window.

Every file is read once beforehand (so no side pays for cold disk reads), and both
sides are warmed up on one file first (imports, model files in the page cache).
CPU time is this process plus its finished child processes. The machine may be
shared with other jobs: its load average is printed before and after::

    .venv/bin/python benchmarks/birdnet_embeddings.py               # the dev set (or demo data)
    .venv/bin/python benchmarks/birdnet_embeddings.py --data data/birds-demo --limit 8
    .venv/bin/python benchmarks/birdnet_embeddings.py --json birdnet_bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

# the dev-set lookup and the wall/CPU timer are shared with the features benchmark
from features import DEMO, DEV, Timer, find_files  # noqa: E402

BN_VERSION = "1.3.1"
BN_HINT = (
    f"the birdnet package is not installed (pip install 'birdstack[bench]', i.e. "
    f"birdnet=={BN_VERSION}): reporting birdstack's figures only"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pin_cpus(n: int) -> list[int]:
    """Pin this process (and so its future children) to ``n`` of its CPUs."""
    if not hasattr(os, "sched_setaffinity"):  # not on Linux: nothing to pin
        return list(range(os.cpu_count() or 1))
    allowed = sorted(os.sched_getaffinity(0))
    if 0 < n < len(allowed):
        os.sched_setaffinity(0, allowed[:n])
    return sorted(os.sched_getaffinity(0))


def machine(cpus: list[int]) -> dict[str, Any]:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover - a birdstack dependency
        physical = None
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical,
        "pinned_cpus": cpus,
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_birdnet(model_file: Path, labels_file: Path):  # noqa: ANN201 - birdnet's model class
    """birdnet's V2.4 model on birdstack's model file, or ``None`` when not installed."""
    try:
        import birdnet
    except ImportError:
        return None, None
    version = getattr(birdnet, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("birdnet")
    model = birdnet.load_custom("acoustic", "2.4", "tf", model_file, labels_file, library="litert")
    return model, version


def n_valid_segments(result: Any) -> np.ndarray:
    """Windows birdnet computed per file (the rest of its array is padding)."""
    return (~result.embeddings_masked.all(axis=2)).sum(axis=1)


def compare(cache: Any, files: list[Path], result: Any) -> list[dict[str, Any]]:
    """birdstack's cached embeddings against birdnet's, window by window."""
    from birdstack.features.birdnet import EMBED_DIM

    n_bn = n_valid_segments(result)
    index = {str(Path(p).resolve()): i for i, p in enumerate(result.inputs)}
    out = []
    for f in files:
        feats = cache.get(f)
        i = index.get(str(f.resolve()))
        if feats is None or i is None or n_bn[i] == 0:
            out.append({"file": f.name, "error": "missing on one side"})
            continue
        ours = feats[:EMBED_DIM].T.astype(np.float64)  # [W, 1024]
        theirs = np.asarray(result.embeddings[i, : n_bn[i]], dtype=np.float64)
        n = min(len(ours), len(theirs))
        a, b = ours[:n], theirs[:n]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        out.append(
            {
                "file": f.name,
                "windows_birdstack": len(ours),
                "windows_birdnet": int(n_bn[i]),
                "compared": n,
                "max_abs_diff": float(np.abs(a - b).max()),
                "mean_abs_diff": float(np.abs(a - b).mean()),
                "mean_abs_value": float(np.abs(b).mean()),
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
            }
        )
    return out


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    head = [
        ("method", "l"),
        ("files", "r"),
        ("audio h", "r"),
        ("wall s", "r"),
        ("audio-s/wall-s", "r"),
        ("CPU s", "r"),
        ("audio-s/CPU-s", "r"),
        ("vs birdnet, wall", "r"),
        ("vs birdnet, CPU", "r"),
    ]

    def cells(r: dict[str, Any]) -> list[str]:
        def ratio(k: str) -> str:
            return "-" if r[k] is None else f"{r[k]:.2f}x"

        return [
            r["method"],
            str(r["files"]),
            f"{r['audio_h']:.2f}",
            f"{r['wall_s']:.2f}",
            f"{r['audio_s_per_wall_s']:.1f}",
            f"{r['cpu_s']:.2f}",
            f"{r['audio_s_per_cpu_s']:.1f}",
            ratio("ratio_wall_vs_birdnet"),
            ratio("ratio_cpu_vs_birdnet"),
        ]

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a birdstack dependency
        widths = [max(len(h), *(len(cells(r)[k]) for r in rows)) for k, (h, _) in enumerate(head)]
        print(title)
        print("  ".join(h.ljust(w) for (h, _), w in zip(head, widths)))
        for r in rows:
            c = cells(r)
            print(
                "  ".join(
                    v.ljust(w) if j == "l" else v.rjust(w) for v, (_, j), w in zip(c, head, widths)
                )
            )
        return
    table = Table(title=title)
    for h, j in head:
        table.add_column(h, justify="left" if j == "l" else "right", no_wrap=j == "l")
    for r in rows:
        table.add_row(*cells(r))
    Console(width=max(132, Console().width)).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default: dev set)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N files")
    ap.add_argument("--cpus", type=int, default=2, help="pin everything to N CPUs (0: all)")
    ap.add_argument("--workers", type=int, default=2, help="birdstack worker processes")
    ap.add_argument("--bn-workers", type=int, default=None, help="birdnet n_workers (--workers)")
    ap.add_argument("--bn-producers", type=int, default=1, help="birdnet n_producers")
    ap.add_argument("--bn-batch-size", type=int, default=1, help="birdnet batch_size")
    ap.add_argument("--check", type=int, default=5, help="compare embeddings of N files")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="write figures here")
    args = ap.parse_args(argv)

    from birdstack.config import Preprocessing
    from birdstack.features.birdnet import LABELS_NAME, BirdnetUnavailable, model_path
    from birdstack.features.cache import FeatureCache

    cpus = pin_cpus(args.cpus)
    mach = machine(cpus)
    print(
        f"machine: {mach['cpu']}, {mach['logical_cpus']} logical CPUs "
        f"({mach['physical_cores']} physical cores), pinned to {len(cpus)}: {cpus}, "
        "load average at start: " + " / ".join(f"{x:.2f}" for x in mach["load_avg_start"])
    )

    data = args.data or (DEV if DEV.is_dir() else DEMO)
    files = find_files(data.resolve(), args.limit)
    if not files:
        print(f"no audio files under {data}", file=sys.stderr)
        return 1
    pre = Preprocessing(frontend="birdnet")
    try:
        mfile = model_path(pre.birdnet.model_file)
    except BirdnetUnavailable as e:
        print(e, file=sys.stderr)
        return 1
    labels_file = mfile.parent / LABELS_NAME
    total_s = sum(sf.info(f).duration for f in files)
    hours = total_s / 3600
    for f in [*files, mfile]:  # page cache: no side pays for cold reads
        f.read_bytes()
    print(f"data: {data.resolve()}")
    print(f"files: {len(files)}, audio: {total_s:.0f} s ({hours:.2f} h), model: {mfile}")

    bn_model, bn_version = load_birdnet(mfile, labels_file)
    bn_start = None
    bn_workers = args.bn_workers or args.workers
    bn_opts = {
        "n_workers": bn_workers,
        "n_producers": args.bn_producers,
        "batch_size": args.bn_batch_size,
    }
    if bn_model is None:
        print(BN_HINT)
    else:
        from birdnet.core.start_method import resolve_start_method

        bn_start = resolve_start_method()
        opts = ", ".join(f"{k}={v}" for k, v in bn_opts.items())
        print(f"birdnet {bn_version}: encode({opts}), processes started with {bn_start!r}")

    # warm-up on one file (imports, model loading); birdnet's per-call startup is shown too
    with tempfile.TemporaryDirectory() as tmp, Timer() as w_bs:
        FeatureCache.for_preprocessing(tmp, pre).compute_many(files[:1], workers=1, progress=False)
    warm_msg = f"warm-up on 1 file: birdstack {w_bs.wall:.1f} s"
    if bn_model is not None:
        with Timer() as w_bn:
            bn_model.encode(files[:1], **bn_opts)
        warm_msg += f", birdnet {w_bn.wall:.1f} s (starts its processes on every call)"
    print(warm_msg)

    rows: list[dict[str, Any]] = []

    def row(name: str, t: Timer, n_files: int, note: str) -> None:
        rows.append(
            {
                "method": name,
                "files": n_files,
                "audio_h": hours,
                "wall_s": t.wall,
                "audio_s_per_wall_s": total_s / t.wall,
                "cpu_s": t.cpu,
                "audio_s_per_cpu_s": total_s / t.cpu,
                "note": note,
            }
        )

    checks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache.for_preprocessing(tmp, pre)
        with Timer() as cold:
            res = cache.compute_many(files, workers=args.workers, progress=False)
        with Timer() as warm:
            again = cache.compute_many(files, workers=args.workers, progress=False)
        n_ok = len(res.ok)
        windows = sum(e.frames for e in res.ok)
        row(
            f"birdstack cold ({args.workers} proc.)",
            cold,
            len(files),
            f"{res.n_computed} computed, {len(res.failed)} unreadable, {windows} windows",
        )
        row("birdstack warm", warm, len(files), f"{again.n_computed} computed")
        if bn_model is not None:
            with Timer() as bn_t:
                bn_res = bn_model.encode(files, **bn_opts)
            n_bad = len(bn_res.unprocessable_inputs())
            bn_windows = int(n_valid_segments(bn_res).sum())
            row(
                f"birdnet {bn_version} encode",
                bn_t,
                len(files),
                f"{len(files) - n_bad} encoded, {n_bad} unprocessable, {bn_windows} windows, "
                f"embeddings {tuple(bn_res.embeddings.shape)}",
            )
            ok = [e.path for e in res.ok]
            checks = compare(cache, ok[: max(0, args.check)], bn_res) if args.check else []
    load_end = os.getloadavg()

    bn_row = next((r for r in rows if r["method"].startswith("birdnet")), None)
    for r in rows:
        has = bn_row is not None
        r["ratio_wall_vs_birdnet"] = bn_row["wall_s"] / r["wall_s"] if has else None
        r["ratio_cpu_vs_birdnet"] = bn_row["cpu_s"] / r["cpu_s"] if has else None

    print()
    print_table(rows, f"BirdNET V2.4 embeddings, {len(files)} files, {hours:.2f} h of audio")
    for r in rows:
        print(f"  {r['method']}: {r['note']}")
    if n_ok < len(files):
        print(f"  ({len(files) - n_ok} file(s) birdstack could not read)")
    if checks:
        print("embeddings, birdstack vs birdnet (first min(n) windows of each file):")
        for c in checks:
            if "error" in c:
                print(f"  {c['file']}: {c['error']}")
                continue
            print(
                f"  {c['file']}: {c['compared']} windows "
                f"(birdstack {c['windows_birdstack']}, birdnet {c['windows_birdnet']}), "
                f"max |diff| {c['max_abs_diff']:.4f} (mean {c['mean_abs_diff']:.4f}, "
                f"mean |value| {c['mean_abs_value']:.3f}), cosine mean {c['cosine_mean']:.6f} "
                f"min {c['cosine_min']:.6f}"
            )
    print(
        "load average (1/5/15 min) before: "
        + " / ".join(f"{x:.2f}" for x in mach["load_avg_start"])
        + ", after: "
        + " / ".join(f"{x:.2f}" for x in load_end)
        + f" on {len(cpus)} pinned CPU(s)"
    )

    if args.json:
        out = {
            "machine": {**mach, "load_avg_end": [round(x, 2) for x in load_end]},
            "data": str(data.resolve()),
            "files": len(files),
            "audio_s": total_s,
            "birdstack": {"workers": args.workers, "birdnet": dataclasses.asdict(pre.birdnet)},
            "birdnet_package": None
            if bn_model is None
            else {
                "version": bn_version,
                "encode": bn_opts,
                "library": "litert",
                "start_method": bn_start,
            },
            "results": rows,
            "check": checks,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

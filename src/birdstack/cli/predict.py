"""``birdstack predict``, ``merge`` and ``export`` (wired in by :mod:`birdstack.cli.main`).

    birdstack predict runs/demo/checkpoints/best.ckpt recordings/ --out preds \\
        --format csv raven json --window-s 5 --hop-s 2.5 --min-confidence 0.3 --merge
    birdstack predict best.ckpt archive/ --out preds --shard 0/8     # ... up to 7/8
    birdstack merge preds                                            # all 8 shards joined
    birdstack export runs/demo/checkpoints/best.ckpt --onnx model.onnx

Folders are searched recursively for audio files by extension (files named
explicitly are used whatever their name); every file is decoded by its content.
Decoding runs in background threads ahead of the model. A file that cannot be used
is reported in one log line naming it and the reason, and the rest is processed.
Reruns resume: recordings whose results are complete (same settings, same input
file) are not predicted again; the combined files are rebuilt every time.
``--shard K/N`` predicts only the recordings of shard K (by a hash of each file's
relative path) and ``birdstack merge`` joins N finished shards into the files one
run would write (layout: :mod:`birdstack.inference.shards`).

Heavy imports (torch, onnxruntime) happen inside the ``cmd_*`` functions only.
"""

from __future__ import annotations

import argparse
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birdstack.config import ConfigError

_END = object()


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``birdstack predict``."""
    p.add_argument("checkpoint", help="birdstack checkpoint (.ckpt) or a birdstack ONNX export")
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="audio files and/or folders (recursive)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--top-k",
        type=int,
        default=3,
        help="species per window / recording (3); a multi-label checkpoint reports every "
        "species above its stored threshold in each window instead",
    )
    p.add_argument("--window-s", type=float, default=None, help="window length (model's span)")
    p.add_argument(
        "--hop-s",
        type=float,
        default=None,
        help="hop between windows (default: one window, no overlap; half the window for "
        "overlapping windows, at twice the model time)",
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        default=0.1,
        help="window detections below this are not reported (0.1); recording top-k always is",
    )
    p.add_argument(
        "--merge", action="store_true", help="merge consecutive windows of the same species"
    )
    p.add_argument("--species-list", help="file with one label per line: only report these")
    p.add_argument(
        "--format",
        nargs="+",
        default=["csv"],
        choices=("csv", "raven", "json"),
        help="output formats (several allowed; default csv)",
    )
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="torch | onnx")
    p.add_argument("--onnx", help="ONNX export to run with --runtime onnx (default: export now)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the model")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="windows per model call (default: 4 with ONNX Runtime, 16 with torch; more on a GPU)",
    )
    p.add_argument(
        "--decode-workers", type=int, default=2, help="files decoded ahead in threads (2)"
    )
    p.add_argument("--block-s", type=float, default=60.0, help="decoding block length (60 s)")
    p.add_argument(
        "--shard",
        metavar="K/N",
        help="predict only shard K (0..N-1) of N, e.g. $SLURM_ARRAY_TASK_ID/$N; the files "
        "are split by a hash of their relative paths; join the shards with birdstack merge",
    )
    loc = p.add_argument_group(
        "location filter",
        "BirdNET's location and season model (needs birdstack[birdnet]) drops or down-weights "
        "species unlikely at the recording place and week; classes BirdNET does not know are "
        "never filtered",
    )
    loc.add_argument("--lat", type=float, help="latitude of the recordings (decimal degrees)")
    loc.add_argument("--lon", type=float, help="longitude of the recordings (decimal degrees)")
    loc.add_argument("--week", type=int, help="week of the year, 1-48 (BirdNET's weeks)")
    loc.add_argument("--date", help="recording date YYYY-MM-DD (instead of --week)")
    loc.add_argument(
        "--location-filter",
        choices=("drop", "weight"),
        default="drop",
        help="drop species below the threshold (default) or weight them down",
    )
    loc.add_argument(
        "--location-threshold", type=float, default=0.03, help="occurrence threshold (0.03)"
    )


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``birdstack merge``."""
    p.add_argument("out", metavar="OUT", help="the --out folder of the predict --shard runs")
    p.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="which split to merge when OUT holds shards of several N",
    )


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``birdstack export``."""
    p.add_argument("checkpoint", help="birdstack checkpoint (.ckpt)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="ONNX file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (18)")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputFile:
    """An input recording: where it is, how outputs name it, and its key (output path stem).

    ``rel``: its path relative to the folder it was found in (``/``-separated; for a file
    named on the command line, its name), which decides its shard.
    """

    path: Path
    display: str
    key: str
    rel: str = ""


def _safe_key(rel: str) -> str:
    parts = [re.sub(r"[^\w.\-]+", "_", p) or "_" for p in Path(rel).parts if p not in ("", ".")]
    parts = [p if p not in (".", "..") else "_" for p in parts]
    return "/".join(parts) or "_"


def collect_inputs(paths: list[str]) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Audio files under ``paths`` (folders recursively, by extension) and missing paths."""
    from birdstack.features.audio import AUDIO_EXTENSIONS, find_audio_files

    found: list[InputFile] = []
    missing: list[tuple[str, str]] = []
    keys: set[str] = set()

    def add(path: Path, display: str, rel: str) -> None:
        key = _safe_key(str(Path(rel).with_suffix("")))
        base, n = key, 2
        while key in keys:
            key = f"{base}__{n}"
            n += 1
        keys.add(key)
        found.append(InputFile(path, display, key, Path(rel).as_posix()))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = find_audio_files(p)
            if not files:
                exts = ", ".join(sorted(AUDIO_EXTENSIONS))
                missing.append((raw, f"folder holds no audio files ({exts})"))
            for f in files:
                add(f, str(f), str(f.relative_to(p)))
        elif p.exists():
            add(p, str(p), p.name)
        else:
            missing.append((raw, "not found"))
    return found, missing


def read_species_list(path: str, classes: list[str], names: dict[str, str]) -> tuple[str, ...]:
    """Labels listed in ``path`` (one per line, ``#`` comments); scientific names are accepted."""
    from birdstack.inference.writers import scientific_name

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--species-list {path}: file not found")
    by_name = {scientific_name(c, names).lower(): c for c in classes}
    by_name.update({c.lower(): c for c in classes})
    wanted: list[str] = []
    unknown: list[str] = []
    for line in p.read_text(encoding="utf-8").splitlines():
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        label = by_name.get(s.lower()) or by_name.get(s.lower().replace(" ", "_"))
        (wanted if label else unknown).append(label or s)
    if unknown:
        raise ConfigError(
            f"--species-list {path}: not species of this model: {', '.join(unknown)} "
            f"(the model knows: {', '.join(classes)})"
        )
    if not wanted:
        raise ConfigError(f"--species-list {path}: no species listed")
    return tuple(dict.fromkeys(wanted))


# --------------------------------------------------------------------------- decode ahead


class _Ahead:
    """Runs ``produce(item)`` generators in background threads, a few items ahead.

    Each item's output goes through its own bounded queue, so memory stays bounded
    however long a file is. :meth:`chunks` yields item ``i``'s outputs in order and
    re-raises its exception in the caller.
    """

    def __init__(self, items: list[Any], produce: Any, workers: int, depth: int = 2) -> None:
        self.items = items
        self.produce = produce
        self.workers = max(1, workers)
        self.depth = max(1, depth)
        self.queues: dict[int, queue.Queue[Any]] = {}
        self.started = 0
        self.stop = threading.Event()

    def _start(self, upto: int) -> None:
        while self.started < min(upto, len(self.items)):
            i = self.started
            q: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
            self.queues[i] = q
            threading.Thread(target=self._run, args=(i, q), daemon=True).start()
            self.started += 1

    def _put(self, q: queue.Queue[Any], v: Any) -> bool:
        while not self.stop.is_set():
            try:
                q.put(v, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, i: int, q: queue.Queue[Any]) -> None:
        from birdstack.inference.predictor import set_torch_threads

        set_torch_threads(1)  # per thread: the decoders leave the model its threads
        try:
            for v in self.produce(self.items[i]):
                if not self._put(q, v):
                    return
            self._put(q, _END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(q, e)

    def chunks(self, i: int) -> Iterator[Any]:
        """Outputs of item ``i`` (starts the workers for the next items too)."""
        self._start(i + self.workers)
        q = self.queues[i]
        try:
            while True:
                v = q.get()
                if v is _END:
                    return
                if isinstance(v, BaseException):
                    raise v
                yield v
        finally:
            del self.queues[i]

    def close(self) -> None:
        self.stop.set()


# --------------------------------------------------------------------------- commands


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict species in files/folders and write the chosen formats into ``--out``."""
    from birdstack.cli.main import _skip_exit
    from birdstack.inference import shards
    from birdstack.inference.predictor import LengthHintError, Predictor
    from birdstack.inference.writers import OutputOptions, PredictionWriter
    from birdstack.utils import (
        BadInputError,
        SkipLog,
        file_sha1,
        get_logger,
        progress_bar,
        remove_stale_temp_files,
    )

    log = get_logger("predict")
    shard = shards.Shard.parse(args.shard) if args.shard is not None else None
    if args.top_k < 1:
        raise ConfigError("--top-k must be >= 1")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise ConfigError("--min-confidence must be in [0, 1]")
    for name in ("window_s", "hop_s", "block_s"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")

    ckpt = Path(args.checkpoint)
    if ckpt.suffix.lower() == ".onnx":
        predictor = Predictor.from_onnx(ckpt, threads=args.threads, batch_size=args.batch_size)
    else:
        predictor = Predictor.from_checkpoint(
            ckpt,
            device=args.device,
            runtime=args.runtime,
            onnx_path=args.onnx,
            threads=args.threads,
            batch_size=args.batch_size,
        )
    if predictor.thresholds is None:  # softmax: some species wins every window
        log.warning(
            "single-label model: every window is given one of its %d species, even where "
            "none of them sings (the README's BirdNET head named one on 100%% of NIPS4B "
            "clips of other species, and on 25%% at --min-confidence 0.9: "
            "docs/results/birdnet_field_top6); for field audio use a detector: what "
            "`birdstack train` makes without --task multiclass (add --negatives DIR with "
            "bird-free clips of your site)",
            len(predictor.classes),
        )
    location = _location(args)
    if location is not None:
        predictor.set_location(**location)
    pre = predictor.preprocessing
    species = (
        read_species_list(args.species_list, predictor.classes, predictor.scientific_names)
        if args.species_list
        else None
    )
    opts = OutputOptions(
        top_k=args.top_k,
        min_confidence=args.min_confidence,
        merge=args.merge,
        species=species,
        scientific_names=predictor.scientific_names,
        fmin=0.0 if pre.is_birdnet else pre.spectrogram.fmin,
        fmax=15000.0 if pre.is_birdnet else pre.spectrogram.fmax,
        formats=tuple(dict.fromkeys(args.format)),
        # a multi-label checkpoint reports every species above its stored threshold
        thresholds=tuple(float(t) for t in predictor.thresholds)
        if predictor.thresholds is not None
        else None,
    )
    table, length = predictor.table_rule(args.window_s, args.hop_s)
    spf = predictor.seconds_per_frame
    model_block = {
        "checkpoint": ckpt.name,
        "checkpoint_sha1": file_sha1(ckpt),
        "model": predictor.model_name,
        "classes": predictor.classes,
        "window_s": round(length * spf, 6),
        "hop_s": round(table.hop * spf, 6),
    }
    if location is not None:
        model_block["location"] = location
    remove_stale_temp_files(args.out, recursive=True)  # left by a predict killed mid-write
    writer = PredictionWriter(args.out, opts, model_block)

    skips = SkipLog()
    all_inputs, missing = collect_inputs(args.paths)
    for raw, reason in missing:
        skips.add(raw, reason)
    inputs = all_inputs
    if shard is not None:
        shards.start_shard(args.out, shard)
        inputs = [f for f in all_inputs if shard.owns(f.rel)]
        log.info(
            "shard %d/%d: %d of %d recording(s)",
            shard.index,
            shard.count,
            len(inputs),
            len(all_inputs),
        )
    todo = [f for f in inputs if not writer.done(f.key, f.path)]
    n_resumed = len(inputs) - len(todo)
    if n_resumed:
        log.info("%d recording(s) already predicted with these settings: skipped", n_resumed)

    def produce(f: InputFile) -> Iterator[Any]:
        counter = [0]
        try:
            yield from predictor.file_chunks(f.path, args.block_s, counter)
        except BadInputError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure is this file's problem
            raise BadInputError(f.path, f"could not be decoded ({type(e).__name__}: {e})") from e
        yield ("samples", counter[0])

    ahead = _Ahead(todo, produce, args.decode_workers)
    n_done = 0
    try:
        bar = progress_bar(todo, desc="predict", unit="file", disable=args.no_progress)
        for i, f in enumerate(bar):
            n_samples = [0]

            def frames(i: int = i, n_samples: list[int] = n_samples) -> Iterator[Any]:
                for v in ahead.chunks(i):
                    if isinstance(v, tuple):
                        n_samples[0] = v[1]
                    else:
                        yield v

            try:
                try:
                    pred = predictor.score_frames(
                        frames(),
                        f.display,
                        n_samples,
                        args.window_s,
                        args.hop_s,
                        predictor.expected_frames(f.path),
                    )
                except LengthHintError as e:  # the header's length was wrong: decode again
                    log.warning("%s: %s; scoring it again without the length hint", f.display, e)
                    pred = predictor.predict(
                        f.path, None, args.window_s, args.hop_s, args.block_s, length_hint=False
                    )
                    pred.file = f.display
            except BadInputError as e:
                skips.add(f.path, e.reason)
                continue
            writer.write(f.key, pred, f.path)
            n_done += 1
    finally:
        ahead.close()
    dest = shard.folder(args.out) if shard is not None else None
    records = writer.records([f.key for f in inputs])
    written = writer.write_combined(records, dest)
    if shard is not None:
        pos = {f.key: i for i, f in enumerate(all_inputs)}
        mine = [(pos[f.key], f.key, writer.done(f.key, None)) for f in inputs]
        keys = [f.key for f in all_inputs]
        shards.finish_shard(
            args.out, shard, keys, mine, writer.settings_hash, opts.formats, writer.model
        )
    where = f"shard {shard.index}/{shard.count}, " if shard is not None else ""
    print(
        f"predicted {n_done} recording(s), {n_resumed} already done, {len(skips)} skipped; "
        f"{where}outputs in {args.out}"
    )
    with_det = sum(bool(r["detections"]) for r in records)
    print(
        f"{sum(len(r['detections']) for r in records)} detection(s) in {with_det} of "
        f"{len(records)} recording(s)"
        + ("" if predictor.thresholds is None else " (species at or above their thresholds)")
    )
    for w in written:
        print(f"  {w}")
    if "raven" in opts.formats:
        print(f"  {Path(args.out) / 'raven'}/ (one selection table per recording)")
    if shard is not None:
        print(f"  when all {shard.count} shards are done: birdstack merge {args.out}")
    return _skip_exit(len(skips), args)


def cmd_merge(args: argparse.Namespace) -> int:
    """Join the outputs of ``predict --shard K/N`` runs into the files of one unsharded run."""
    from birdstack.inference.shards import merge

    if args.shards is not None and args.shards < 1:
        raise ConfigError("--shards must be at least 1")
    res = merge(args.out, args.shards)
    extra = (
        f", {res.without_result} without a result (skipped inputs)" if res.without_result else ""
    )
    print(f"merged {res.shards} shard(s): {res.recordings} recording(s){extra}")
    for w in res.written:
        print(f"  {w}")
    if res.raven:
        print(f"  {Path(args.out) / 'raven'}/ (one selection table per recording)")
    return 0


def _location(args: argparse.Namespace) -> dict[str, Any] | None:
    """The location filter's settings from ``--lat --lon --week/--date`` (None: off)."""
    if args.lat is None and args.lon is None:
        if args.week is not None or args.date:
            raise ConfigError("--week/--date need --lat and --lon (the location filter)")
        return None
    if args.lat is None or args.lon is None:
        raise ConfigError("the location filter needs both --lat and --lon")
    if not (-90 <= args.lat <= 90 and -180 <= args.lon <= 180):
        raise ConfigError(f"--lat {args.lat} / --lon {args.lon}: out of range")
    if not 0 < args.location_threshold < 1:
        raise ConfigError("--location-threshold must be in (0, 1)")
    week = -1
    if args.date:
        import datetime as dt

        from birdstack.features.birdnet import week_48

        try:
            dt.date.fromisoformat(args.date)
        except ValueError:
            raise ConfigError(f"--date {args.date!r}: use YYYY-MM-DD") from None
        week = week_48(args.date)
    elif args.week is not None:
        if not 1 <= args.week <= 48:
            raise ConfigError(f"--week {args.week}: BirdNET's weeks are 1-48")
        week = args.week
    return {
        "lat": args.lat,
        "lon": args.lon,
        "week": week,
        "mode": args.location_filter,
        "threshold": args.location_threshold,
    }


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX (self-describing: classes and preprocessing in metadata)."""
    from birdstack.inference.export import export_onnx, read_onnx_metadata

    out = export_onnx(args.checkpoint, args.onnx, opset=args.opset)
    print(f"ONNX model: {out}")
    meta = read_onnx_metadata(out)
    if meta["preprocessing"].is_birdnet:
        bb = meta["backbone"]
        print(
            "  the graph is the head only: its input is BirdNET V2.4 features [batch, 7546] "
            f"(embedding, then logits) from {bb.get('file')} (sha256 {bb.get('sha256', '?')[:16]}"
            "...), which still runs in LiteRT at inference (pip install 'birdstack[birdnet]'); "
            "birdstack predict does both"
        )
    return 0

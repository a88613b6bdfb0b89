"""Predict species in recordings and soundscapes from a checkpoint (or its ONNX export).

:class:`Predictor` rebuilds the whole preprocessing from the checkpoint alone, so
training and inference cannot drift::

    >>> pred = Predictor.from_checkpoint("runs/demo/checkpoints/best.ckpt")   # doctest: +SKIP
    >>> result = pred.predict("soundscape.ogg")                               # doctest: +SKIP
    >>> result.top(3)                                                         # doctest: +SKIP
    [('coereba_flaveola', 0.91), ...]

Two levels of output:

* **recording level** (:meth:`Predictor.recording_probs`), the documented rule:
  ``stacked`` models score each recording exactly as training encodes it: a longer
  one trimmed from both ends to ``target_frames`` (:class:`~.windows.CenterRule`), a
  shorter one padded at the end, scored once. (Pooling whole-target windows over
  the recording, the other rule one could use, scored lower on held-out birds-dev
  recordings for a model trained on centred inputs: 0.44 against 0.67 accuracy for
  mobilenet_compact; the window table below gives that coverage where it is wanted.)
  ``segments`` models average the softmax probabilities of
  the :func:`~birdstack.features.encoding.segment_starts` windows, exactly as
  validation pools them (:func:`birdstack.training.module.pool_by_recording`).
* **window level** (:meth:`Predictor.window_probs`): windows of ``window_s`` (default:
  the model's own input span) every ``hop_s`` (default: one window, no overlap, as
  BirdNET-Analyzer, OpenSoundscape and birdstack's BirdNET models do; the windows of a
  ``segments`` model's recording rule are then the same windows, scored once); a final
  partial window is kept (padded) when it holds at least ``encoding.min_last_window``
  of a window, else one more full window ends at the recording's end, so every second
  is in some window. A ``stacked`` model encodes each window with
  :func:`~birdstack.features.encoding.encode_stacked`.

Files are decoded in blocks (:func:`birdstack.features.audio.stream_audio`) and the
log-mel frames are stitched exactly across block joins (each block is computed with
``n_fft / 2`` samples of real context on both sides), so a 1-hour file runs in
bounded memory and gives the same windows as the in-memory path.
"""

from __future__ import annotations

import math
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdstack.config import Preprocessing
from birdstack.features.encoding import center_trim, encode_segment, encode_stacked
from birdstack.features.melbank import NumpyLogMel, fft_dtype_for
from birdstack.inference.windows import (
    CenterRule,
    SegmentRule,
    WindowRule,
    frames_for_samples,
    keep_from,
    seconds_to_frames,
    window_times,
)
from birdstack.inference.writers import Prediction
from birdstack.utils import BadInputError, BirdstackError, get_logger

log = get_logger("inference")

RUNTIMES = ("torch", "onnx")
# Windows per model call. torch: 16 runs as fast as 32 on CPU; raise it (--batch-size) on a
# GPU. ONNX Runtime (CPU): 4. With its memory arena every call reuses the same buffers, and
# small batches keep them small and in cache: on 30 min of Ogg, 2 threads, mobilenet_compact
# runs at the same speed with 1-4 windows per call and 2-4 % slower at 8; at 16 without the
# arena (the old setting) it paid 393k page faults for 5 s segments (799x against 1098x).
DEFAULT_BATCH = 16
DEFAULT_ONNX_BATCH = 4
DEFAULT_BLOCK_S = 60.0

__all__ = ["RUNTIMES", "FrameBuffer", "Prediction", "Predictor", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (``[N, K]``)."""
    z = logits.astype(np.float32, copy=False)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float32 (multi-label scores)."""
    z = np.clip(logits.astype(np.float32, copy=False), -80.0, 80.0)
    return 1.0 / (1.0 + np.exp(-z))


# --------------------------------------------------------------------------- runtimes


class TorchRunner:
    """Runs a network with ``torch.inference_mode`` on ``device``; returns float32 logits."""

    def __init__(self, net: Any, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        # channels-last (NHWC) weights and inputs, as in training: the same arithmetic,
        # 1.2-1.6x faster convolutions on CPU (eval mode, batch 16, one thread:
        # mobilenet_compact 1.57x, resnet18 1.44x, efficientnet_lite0 1.24x); a head on
        # embeddings has no 4-d tensors and is left as it is
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        t = torch.from_numpy(x).to(self.device)
        if t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.net(t)
        return out.float().cpu().numpy()


class OnnxRunner:
    """Runs an ONNX export with ONNX Runtime (CPU execution provider)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # The memory arena (on by default) keeps the largest batch's activations for the
        # whole run: with DEFAULT_ONNX_BATCH windows per call that is little, and without
        # it every call maps fresh pages (with 16 windows of 5 s segments, 393k page
        # faults per 30 min and 40 % more wall time).
        # ONNX Runtime's threads spin-wait for work between calls by default, on cores
        # the decoding and log-mel threads need: without it the same predict runs on
        # 4-11 % less CPU time and 5-8 % faster (30 min Ogg, 2 threads, both encodings)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)


# --------------------------------------------------------------------------- background work

_DONE = object()


def iter_ahead(
    items: Iterable[Any], depth: int = 2, torch_threads: int | None = 1
) -> Iterator[Any]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead.

    Decoding and the log-mel front end release the GIL, so they overlap with the model.
    The producer thread uses ``torch_threads`` intra-op threads (torch's setting is per
    thread with OpenMP), so the front end does not fight the model for the cores.
    An exception in the producer is raised in the consumer; closing the generator
    stops the producer.

    >>> list(iter_ahead(range(5)))
    [0, 1, 2, 3, 4]
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(v: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(v, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        if torch_threads:
            set_torch_threads(torch_threads)
        try:
            for v in items:
                if not put(v):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(_Raised(e))

    t = threading.Thread(target=run, daemon=True, name="birdstack-decode")
    t.start()
    try:
        while True:
            v = q.get()
            if v is _DONE:
                return
            if isinstance(v, _Raised):
                raise v.error
            yield v
    finally:
        stop.set()


@dataclass(frozen=True)
class _Raised:
    error: BaseException


# --------------------------------------------------------------------------- frame stitching


@dataclass(frozen=True)
class MelJob:
    """One log-mel computation: ``wave`` (with real context), the frames of it to keep."""

    wave: np.ndarray
    first: int
    count: int


class FrameStitcher:
    """Turns consecutive sample blocks into the exact frames of one centred STFT.

    ``logmel(wave) -> [n_mels, 1 + len(wave) // hop]`` must compute centred frames.
    Frame ``j`` is centred on sample ``j * hop`` and needs ``n_fft // 2`` samples each
    side, so every block is computed with that much real context and the frames that
    would see the block's padding are left for the next block. Only the file's own
    edges are padded, as in the one-shot computation.

    :meth:`plan` / :meth:`plan_finish` cut the signal into independent :class:`MelJob`
    (cheap, in order); :meth:`run` computes one, so jobs can run in parallel.
    :meth:`push` / :meth:`finish` do both.
    """

    def __init__(
        self, logmel: Callable[[np.ndarray], np.ndarray], n_fft: int, hop: int, min_frames: int = 1
    ) -> None:
        self.logmel = logmel
        self.hop = hop
        self.half = n_fft // 2
        self.context = math.ceil(self.half / hop) * hop  # left context, a multiple of hop
        self.min_frames = max(1, min_frames)
        self.buf = np.zeros(0, dtype=np.float32)
        self.buf0 = 0  # global index of buf[0]
        self.n_samples = 0
        self.next_frame = 0

    def plan(self, block: np.ndarray) -> MelJob | None:
        """Add samples; the job for the frames now complete, or ``None``."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self.buf = np.concatenate([self.buf, block]) if self.buf.size else block
        self.n_samples += block.size
        last = (self.n_samples - self.half) // self.hop  # last frame with real right context
        if last - self.next_frame + 1 < self.min_frames:
            return None
        return self._job(last, final=False)

    def plan_finish(self) -> MelJob | None:
        """The job for the remaining frames (padded at the end of the signal as usual)."""
        if self.n_samples == 0:
            return None
        last = frames_for_samples(self.n_samples, self.hop) - 1
        if last < self.next_frame:
            return None
        return self._job(last, final=True)

    def run(self, job: MelJob) -> np.ndarray:
        """Compute a job's frames ``[n_mels, count]``."""
        db = self.logmel(job.wave)
        out = db[:, job.first : job.first + job.count]
        if out.shape[1] != job.count:  # pragma: no cover - a logmel with other framing
            raise BirdstackError(
                f"log-mel front end gave {db.shape[1]} frames for {job.wave.size} samples; "
                f"expected centred frames (1 + n // {self.hop})"
            )
        return np.ascontiguousarray(out)

    def push(self, block: np.ndarray) -> np.ndarray | None:
        """Add samples; returns the frames now complete (``[n_mels, f]``) or ``None``."""
        job = self.plan(block)
        return None if job is None else self.run(job)

    def finish(self) -> np.ndarray | None:
        """The remaining frames up to the end of the signal."""
        job = self.plan_finish()
        return None if job is None else self.run(job)

    def _job(self, last: int, final: bool) -> MelJob:
        j0 = self.next_frame
        s0 = max(0, j0 * self.hop - self.context)
        s1 = self.n_samples if final else last * self.hop + self.half
        wave = self.buf[s0 - self.buf0 : s1 - self.buf0]  # a view: buf is never changed in place
        self.next_frame = last + 1
        keep = max(0, self.next_frame * self.hop - self.context)
        self.buf = self.buf[keep - self.buf0 :].copy()
        self.buf0 = keep
        return MelJob(wave, (j0 * self.hop - s0) // self.hop, last - j0 + 1)


def ordered_map(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int, ahead: int | None = None
) -> Iterator[Any]:
    """``map(fn, items)`` on ``workers`` threads (1 torch thread each), in order, bounded.

    At most ``ahead`` (default ``workers + 1``) items are in flight.

    >>> list(ordered_map(lambda x: x * x, range(5), workers=2))
    [0, 1, 4, 9, 16]
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    limit = ahead or workers + 1
    with ThreadPoolExecutor(
        workers, thread_name_prefix="birdstack-mel", initializer=set_torch_threads, initargs=(1,)
    ) as ex:
        pending: deque[Any] = deque()
        for it in items:
            pending.append(ex.submit(fn, it))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --------------------------------------------------------------------------- window scoring


class FrameBuffer:
    """The frames ``[n_mels, f]`` of one spectrogram that later windows may still need.

    Chunks are kept as they arrive (no growing array copied on every push: a
    ``stacked`` model's centred recording window keeps up to half of a long file's
    frames) and dropped from the front once no window can need them; a window that
    spans chunks is assembled on demand.

    >>> b = FrameBuffer()
    >>> b.append(np.arange(6.0).reshape(1, 6)); b.append(np.arange(6.0, 9.0).reshape(1, 3))
    >>> b.drop_before(4); b.frames(4, 3).tolist(), b.start
    ([[4.0, 5.0, 6.0]], 4)
    """

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.start = 0  # global frame index of chunks[0][:, 0]
        self.end = 0  # global frame index after the last frame

    def append(self, db: np.ndarray) -> None:
        """Add the next frames."""
        if db.shape[1]:
            self.chunks.append(db)
            self.end += db.shape[1]

    def drop_before(self, frame: int) -> None:
        """Forget the frames before ``frame`` (whole chunks freed, a partial one copied)."""
        while self.chunks and self.start + self.chunks[0].shape[1] <= frame:
            self.start += self.chunks.pop(0).shape[1]
        if self.chunks and frame > self.start:
            self.chunks[0] = self.chunks[0][:, frame - self.start :].copy()
            self.start = frame

    def frames(self, start: int, length: int) -> np.ndarray:
        """Frames ``start .. start + length`` (fewer at the end of what has arrived)."""
        assert start >= self.start, f"frame {start} was already dropped ({self.start})"
        stop = min(start + length, self.end)
        parts = []
        pos = self.start
        for c in self.chunks:
            c0, c1 = max(start, pos), min(stop, pos + c.shape[1])
            if c0 < c1:
                parts.append(c[:, c0 - pos : c1 - pos])
            pos += c.shape[1]
            if pos >= stop:
                break
        if len(parts) == 1:
            return parts[0]
        if not parts:
            n_mels = self.chunks[0].shape[0] if self.chunks else 0
            return np.zeros((n_mels, 0), dtype=np.float32)
        return np.concatenate(parts, axis=1)


@dataclass
class _RuleState:
    rule: WindowRule
    length: int
    next_k: int = 0


class LengthHintError(BirdstackError):
    """A recording's length differs from its header's by more than the hint's slack."""


@dataclass
class WindowScorer:
    """Scores the windows of several rules over a spectrogram that arrives in chunks.

    Regular windows are encoded as soon as their frames arrive, tail windows once the
    total length is known (:meth:`finish`); windows shared by rules (same start and
    length) are scored once. Only the frames later windows can still need are kept.

    A centred window (:class:`~.windows.CenterRule`) needs the total length, so it
    would keep half of the spectrogram. With ``expected_frames`` (from the file's
    header) and ``slack``, it keeps only the frames the centre can fall in for any
    length within ``expected_frames +- slack``, copied aside as soon as they have
    arrived; a length outside that range raises :class:`LengthHintError` at
    :meth:`finish` (score the recording again without the hint).
    """

    encode: Callable[[np.ndarray, int], np.ndarray]
    run: Callable[[np.ndarray], np.ndarray]
    rules: dict[str, tuple[WindowRule, int]]
    batch_size: int = DEFAULT_BATCH
    activation: Callable[[np.ndarray], np.ndarray] = softmax
    n_frames: int = 0
    expected_frames: int | None = None
    slack: int = 64
    _states: dict[str, _RuleState] = field(default_factory=dict)
    _buf: FrameBuffer = field(default_factory=FrameBuffer)
    _pending: list[tuple[tuple[int, int], np.ndarray]] = field(default_factory=list)
    _pending_keys: set[tuple[int, int]] = field(default_factory=set)
    _probs: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    # the centred window's possible frames [lo, hi) under the length hint, and their copy
    _centre: tuple[int, int] | None = None
    _stash: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._states = {
            name: _RuleState(rule, length) for name, (rule, length) in self.rules.items()
        }
        self._max_len = max(length for _, length in self.rules.values())
        centred = [r.window for r, _ in self.rules.values() if isinstance(r, CenterRule)]
        if self.expected_frames is not None and centred:
            w, n, d = max(centred), int(self.expected_frames), max(0, int(self.slack))
            lo = max(0, (n - d - w) // 2)
            self._centre = (lo, max(lo, (n + d - w) // 2) + w)

    def _keep_from(self, st: _RuleState) -> int:
        if isinstance(st.rule, CenterRule) and self._centre is not None:
            if self._stash is not None:  # its frames are set aside
                return self.n_frames
            return max(self._centre[0], keep_from(st.rule, st.next_k, self.n_frames))
        return keep_from(st.rule, st.next_k, self.n_frames)

    def push(self, db: np.ndarray) -> None:
        """Append frames ``[n_mels, f]`` and score every window they complete."""
        if db.shape[1] == 0:
            return
        self._buf.append(db)
        self.n_frames += db.shape[1]
        for st in self._states.values():
            regular = st.rule.regular_until(self.n_frames)
            for s in regular[st.next_k :]:
                self._schedule(s, st.length)
            st.next_k = max(st.next_k, len(regular))
        if self._centre is not None and self._stash is None and self.n_frames >= self._centre[1]:
            lo, hi = self._centre
            self._stash = np.ascontiguousarray(self._buf.frames(lo, hi - lo))
        keep = min(
            [self._keep_from(st) for st in self._states.values()] + [self.n_frames - self._max_len]
        )
        self._buf.drop_before(keep)

    def finish(self) -> dict[str, tuple[list[int], np.ndarray]]:
        """Score the tail windows; per rule: its start frames and probabilities ``[W, K]``."""
        if self.n_frames == 0:
            raise ValueError("no spectrogram frames to score")
        for st in self._states.values():
            for s in st.rule.tail(self.n_frames):
                self._schedule(s, st.length)
        self._flush()
        out = {}
        for name, st in self._states.items():
            starts = st.rule.starts(self.n_frames)
            out[name] = (starts, np.stack([self._probs[(s, st.length)] for s in starts]))
        return out

    def _frames(self, start: int, length: int) -> np.ndarray:
        """A window's frames, from the buffer or the centre's copy (fewer at the end)."""
        if start >= self._buf.start:
            return self._buf.frames(start, length)
        stop = min(start + length, self.n_frames)
        if self._stash is not None and self._centre is not None:
            lo, hi = self._centre
            if lo <= start and stop <= hi:
                return self._stash[:, start - lo : stop - lo]
        raise LengthHintError(
            f"the recording has {self.n_frames} spectrogram frames, its header "
            f"{self.expected_frames} (+- {self.slack})"
        )

    def _schedule(self, start: int, length: int) -> None:
        key = (start, length)
        if key in self._probs or key in self._pending_keys:
            return
        frames = self._frames(start, length)
        self._pending.append((key, self.encode(frames, length)))
        self._pending_keys.add(key)
        if len(self._pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        x = np.stack([x for _, x in self._pending]).astype(np.float32, copy=False)
        probs = self.activation(self.run(x))
        for (key, _), p in zip(self._pending, probs):
            self._probs[key] = p
        self._pending.clear()
        self._pending_keys.clear()


# --------------------------------------------------------------------------- predictor


class Predictor:
    """A trained network plus the preprocessing it was trained with.

    Attributes: ``classes`` (labels in output order), ``preprocessing`` (the resolved
    :class:`~birdstack.config.Preprocessing`), ``info`` (the checkpoint's
    :class:`~birdstack.training.checkpoint.CheckpointInfo`, or ``None`` for a bare
    ONNX file), ``scientific_names`` (label -> name, may be empty), ``runtime``.
    """

    def __init__(
        self,
        runner: Callable[[np.ndarray], np.ndarray],
        classes: list[str],
        preprocessing: Preprocessing,
        info: Any = None,
        scientific_names: dict[str, str] | None = None,
        runtime: str = "torch",
        batch_size: int | None = None,
        model_name: str | None = None,
        threads: int | None = None,
        thresholds: Sequence[float] | None = None,
    ) -> None:
        self.runner = runner
        self.classes = list(classes)
        # multi-label checkpoints: sigmoid scores and a threshold per class (else softmax)
        self.thresholds = None if thresholds is None else np.asarray(thresholds, np.float32)
        self.multilabel = self.thresholds is not None
        self.activation = sigmoid if self.multilabel else softmax
        self.preprocessing = preprocessing
        self.info = info
        self.scientific_names = dict(scientific_names or {})
        self.runtime = runtime
        self.model_name = model_name or (info.model_name if info is not None else "unknown")
        self.threads = int(threads or default_threads())  # intra-op threads of the model
        self.feature_workers = self.threads  # log-mel threads per file (1 torch thread each)
        if batch_size is None:  # the runtime's own default
            batch_size = DEFAULT_ONNX_BATCH if runtime == "onnx" else DEFAULT_BATCH
        self.batch_size = max(1, int(batch_size))
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        enc = preprocessing.encoding
        if enc.kind == "stacked" and enc.target_frames is None:
            raise BirdstackError("the checkpoint's encoding.target_frames is not resolved")
        self.sample_rate = preprocessing.audio.sample_rate
        self.spec = preprocessing.spectrogram
        self.seconds_per_frame = preprocessing.seconds_per_frame()
        self.norm = preprocessing.input_norm()  # every log-mel model input, as in training
        # the log-mel front end: torch's LogMel (the feature cache's own) with the torch
        # runtime; with ONNX Runtime its NumPy twin, so an ONNX predictor never imports
        # torch (about 670 MB of resident memory). Both run the FFT in the cache's
        # precision: float32 (1.8x faster) where the model's inputs cannot see the
        # difference (fft_dtype_for: default settings, normalised inputs within 3e-5 of
        # the float64 ones), else float64
        self._mel: Callable[[np.ndarray], np.ndarray]
        if runtime == "torch":
            from birdstack.features.mel import feature_logmel

            self._mel = feature_logmel(self.spec, self.sample_rate).compute
        else:
            self._mel = NumpyLogMel(self.spec, self.sample_rate, fft_dtype_for(self.spec))
        # per-class factors of the location filter (None: off), see set_location
        self.location_factors: np.ndarray | None = None
        self.class_map: list[int] | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        device: str = "cpu",
        runtime: str = "torch",
        onnx_path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
    ) -> Predictor:
        """Load a checkpoint (safely) and rebuild network and preprocessing from it.

        ``runtime="onnx"`` runs ``onnx_path`` with ONNX Runtime (exported on the fly into
        a temporary folder when not given). ``threads`` sets torch's intra-op threads
        (process-wide) and ONNX Runtime's. ``batch_size``: windows per model call
        (default :data:`DEFAULT_BATCH` with torch, :data:`DEFAULT_ONNX_BATCH` with ONNX
        Runtime).
        """
        from birdstack.inference.export import export_onnx, scientific_names_from_checkpoint
        from birdstack.training.checkpoint import build_model_from_checkpoint, load_checkpoint

        if runtime not in RUNTIMES:
            raise BirdstackError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        set_torch_threads(threads)
        ckpt = load_checkpoint(path)
        names = scientific_names_from_checkpoint(ckpt)
        net, info = build_model_from_checkpoint(ckpt)
        if info.preprocessing.is_birdnet:  # refuse a BirdNET model other than the trained one's
            from birdstack.features.birdnet import check_identity

            check_identity(info.preprocessing.birdnet, f"checkpoint {path}")
        tmp = None
        if runtime == "torch":
            runner: Callable[[np.ndarray], np.ndarray] = TorchRunner(net, device)
        else:
            if onnx_path is None:  # exported now, removed with the predictor
                tmp = tempfile.TemporaryDirectory(prefix="birdstack-onnx-")
                onnx_path = export_onnx(path, Path(tmp.name) / "model.onnx")
            runner = OnnxRunner(onnx_path, threads)
        pred = cls(
            runner,
            info.classes,
            info.preprocessing,
            info,
            names,
            runtime,
            batch_size,
            threads=threads,
            thresholds=ckpt["birdstack"].get("thresholds")
            if ckpt["birdstack"].get("task") == "multilabel"
            else None,
        )
        pred._tmp = tmp
        bmap = ckpt["birdstack"].get("birdnet_map")
        if bmap:
            pred.class_map = [int(i) for i in bmap["indices"]]
        return pred

    @classmethod
    def birdnet_reference(
        cls,
        classes: list[str],
        scientific_names: dict[str, str] | None = None,
        preprocessing: Preprocessing | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        thresholds: Sequence[float] | None = None,
    ) -> Predictor:
        """BirdNET V2.4's own scores for ``classes`` (those it knows), with nothing trained.

        The reference row of ``evaluate``: classes BirdNET does not know get a logit of
        -30 and so are never predicted (their names are logged). ``thresholds`` (one per
        class) makes it multi-label: BirdNET's own sigmoid confidences, as it reports them.
        """
        from birdstack.data.prepare import resolve_frontend
        from birdstack.features import birdnet
        from birdstack.features.taxonomy import map_classes
        from birdstack.models import create_model

        pre = resolve_frontend(preprocessing or Preprocessing(frontend="birdnet"))
        set_torch_threads(threads)
        mapping = map_classes(classes, birdnet.labels(pre.birdnet.model_file), scientific_names)
        if mapping.unmapped:
            log.warning(mapping.message())
        net = create_model(
            "birdnet_scores",
            num_classes=len(classes),
            in_chans=birdnet.FEATURE_DIM,
            class_map=mapping.indices,
        )
        pred = cls(
            TorchRunner(net),
            list(classes),
            pre,
            None,
            scientific_names,
            "torch",
            batch_size,
            model_name="birdnet_scores",
            threads=threads,
            thresholds=thresholds,
        )
        pred.class_map = list(mapping.indices)
        return pred

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        threads: int | None = None,
        batch_size: int | None = None,
    ) -> Predictor:
        """A predictor from a birdstack ONNX export alone (its metadata describes it).

        Needs ONNX Runtime and NumPy only: torch is not imported (unless the caller did).
        ``batch_size``: windows per model call (default :data:`DEFAULT_ONNX_BATCH`).
        """
        from birdstack.inference.export import parse_onnx_metadata

        p = Path(path)
        if not p.is_file():
            raise BadInputError(p, "ONNX file not found")
        try:
            runner = OnnxRunner(p, threads)
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's own error types
            raise BadInputError(p, f"not a readable ONNX file ({type(e).__name__})") from None
        meta = parse_onnx_metadata(runner.session.get_modelmeta().custom_metadata_map, p)
        set_torch_threads(threads)
        if meta["preprocessing"].is_birdnet:
            from birdstack.features.birdnet import check_identity

            check_identity(meta["preprocessing"].birdnet, f"ONNX export {path}")
        pred = cls(
            runner,
            meta["classes"],
            meta["preprocessing"],
            None,
            meta["scientific_names"],
            "onnx",
            batch_size,
            model_name=str(meta["model"].get("name", "unknown")),
            threads=threads,
            thresholds=meta.get("thresholds"),
        )
        if meta.get("birdnet_map"):
            pred.class_map = [int(i) for i in meta["birdnet_map"]["indices"]]
        return pred

    # ---------------------------------------------------------------- features
    def features(self, wave: np.ndarray) -> np.ndarray:
        """Log-mel dB ``[n_mels, frames]`` of a mono waveform at the model's sample rate.

        Computed as the training features are: with the torch runtime by the feature
        cache's own :class:`~birdstack.features.mel.LogMel`, with ONNX Runtime by its
        NumPy twin :class:`~birdstack.features.melbank.NumpyLogMel`, both with the
        cache's FFT precision (float32 where the model cannot see it,
        :func:`~birdstack.features.melbank.fft_dtype_for`), so training and inference
        cannot drift.
        With the BirdNET front end: BirdNET's features ``[7546, windows]`` of the 48 kHz
        waveform.
        """
        if self.preprocessing.is_birdnet:
            from birdstack.features.birdnet import birdnet_features

            pre = self.preprocessing
            return birdnet_features(wave, pre.birdnet, pre.encoding.min_last_window)
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        return np.ascontiguousarray(self._mel(wave), dtype=np.float32)

    def encode(self, frames: np.ndarray, length: int) -> np.ndarray:
        """One model input from a window's frames (``length`` = the window's nominal frames).

        ``stacked``: :func:`encode_stacked` (longer windows trimmed from both ends,
        shorter ones padded at the end). ``segments``: normalised, trimmed/padded to the
        model's window, ``[1, n_mels, window]`` (= :func:`encode_segment` for its window).
        """
        pre = self.preprocessing
        if pre.is_birdnet:  # BirdNET windows pooled (one window pools to itself)
            from birdstack.features.birdnet import pool_windows

            return pool_windows(frames)
        enc = pre.encoding
        if enc.kind == "stacked":
            assert enc.target_frames is not None
            return encode_stacked(frames, enc.target_frames, enc.channels, self.norm)
        w = pre.window_frames()
        return encode_segment(center_trim(frames, w), 0, w, self.norm)

    # ---------------------------------------------------------------- window rules
    def recording_rule(self) -> tuple[WindowRule, int]:
        """The recording-level rule and its window length in frames."""
        pre = self.preprocessing
        enc = pre.encoding
        if enc.kind == "stacked":
            t = pre.input_frames()
            return CenterRule(t), t
        w = pre.window_frames()
        return SegmentRule(w, pre.hop_frames(), enc.min_last_window), w

    def table_rule(
        self, window_s: float | None = None, hop_s: float | None = None, cover_end: bool = True
    ) -> tuple[WindowRule, int]:
        """The per-window table rule: ``window_s`` (model span) every ``hop_s`` (one window).

        BirdNET models score BirdNET's own 3 s windows every ``birdnet.hop_s`` (or every
        multiple of it that ``hop_s`` asks for).
        """
        if self.preprocessing.is_birdnet:
            bn = self.preprocessing.birdnet
            if window_s is not None and abs(window_s - 3.0) > 1e-6:
                raise BirdstackError(
                    f"a BirdNET model scores 3 s windows; window_s={window_s:g} is not possible"
                )
            step = 1 if hop_s is None else max(1, int(round(hop_s / bn.hop_s)))
            return SegmentRule(1, step, 1.0), 1
        sr, hop = self.sample_rate, self.spec.hop_length
        length = (
            seconds_to_frames(window_s, sr, hop)
            if window_s is not None
            else self.preprocessing.input_frames()
        )
        step = seconds_to_frames(hop_s, sr, hop) if hop_s is not None else max(1, length)
        rule = SegmentRule(
            length, step, self.preprocessing.encoding.min_last_window, cover_end=cover_end
        )
        return rule, length

    def _scorer(
        self, rules: dict[str, tuple[WindowRule, int]], expected_frames: int | None = None
    ) -> WindowScorer:
        return WindowScorer(
            self.encode,
            self.runner,
            rules,
            self.batch_size,
            self.activation,
            expected_frames=expected_frames,
        )

    def expected_frames(self, path: str | os.PathLike[str]) -> int | None:
        """Spectrogram frames ``path``'s header announces, for a model with a centred window.

        The hint that keeps a ``stacked`` model's streaming memory bounded (see
        :class:`WindowScorer`); ``None`` for other models or when the header has no length.
        """
        pre = self.preprocessing
        if pre.is_birdnet or pre.encoding.kind != "stacked":
            return None
        from birdstack.features.audio import audio_info

        try:
            info = audio_info(path)
        except Exception:  # noqa: BLE001 - decoding reports the file's problem
            return None
        if info.frames <= 0 or info.sample_rate <= 0:
            return None
        n = round(info.frames * self.sample_rate / info.sample_rate)
        return frames_for_samples(n, self.spec.hop_length)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[B, K]`` of a batch of model inputs."""
        return self.runner(np.ascontiguousarray(x, dtype=np.float32))

    # ---------------------------------------------------------------- scoring
    def recording_probs(self, db: np.ndarray) -> np.ndarray:
        """Recording-level probabilities ``[K]`` of a whole spectrogram (the documented rule)."""
        if self.preprocessing.is_birdnet:
            return self._score_birdnet([db]).probs
        scorer = self._scorer({"rec": self.recording_rule()})
        scorer.push(np.asarray(db, dtype=np.float32))
        return self.pool(scorer.finish()["rec"][1])

    def pool(self, window_probs: np.ndarray) -> np.ndarray:
        """A recording's probabilities from its windows' (``encoding.pool``: mean or max)."""
        if self.preprocessing.encoding.pool == "max":
            return window_probs.max(axis=0)
        return window_probs.mean(axis=0)

    # ---------------------------------------------------------------- location filter
    def set_location(
        self,
        lat: float | None,
        lon: float | None,
        week: int = -1,
        mode: str = "drop",
        threshold: float = 0.03,
    ) -> None:
        """Filter species by BirdNET's location and season model (``mode``: drop or weight).

        Classes BirdNET does not know are never filtered; ``mode="off"`` (or no
        coordinates) switches the filter off.
        """
        if mode == "off" or lat is None or lon is None:
            self.location_factors = None
            return
        from birdstack.features.birdnet import location_factors

        prior = location_factors(
            self.birdnet_class_map(), lat, lon, week, mode, threshold, self._bn_file()
        )
        self.location_factors = prior.factors
        # say which classes the place and week rule out: their scores will be 0 (drop)
        # or scaled down (weight) whatever the audio says
        out = [c for c, f in zip(self.classes, prior.factors, strict=True) if f < 1.0]
        if out:
            log.info(
                "location filter (%s, lat %.4g, lon %.4g, week %s): %d of %d species %s: %s",
                mode,
                lat,
                lon,
                week if week > 0 else "any",
                len(out),
                len(self.classes),
                "dropped" if mode == "drop" else "weighted down",
                ", ".join(out),
            )

    def _bn_file(self) -> str | None:
        return self.preprocessing.birdnet.model_file

    def birdnet_class_map(self) -> list[int]:
        """Each class's index among BirdNET's labels (-1: unknown to BirdNET)."""
        if self.class_map is None:
            from birdstack.features import birdnet
            from birdstack.features.taxonomy import map_classes

            mapping = map_classes(
                self.classes, birdnet.labels(self._bn_file()), self.scientific_names
            )
            if mapping.unmapped:
                log.warning(mapping.message())
            self.class_map = list(mapping.indices)
        return self.class_map

    def apply_location(self, probs: np.ndarray) -> np.ndarray:
        """``probs`` (``[..., K]``) times the location filter's factors (when it is on)."""
        if self.location_factors is None:
            return probs
        return probs * self.location_factors.astype(probs.dtype)

    def window_probs(
        self, db: np.ndarray, window_s: float | None = None, hop_s: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-window scores ``(starts_s [W], ends_s [W], probs [W, K])`` of a spectrogram."""
        rule, length = self.table_rule(window_s, hop_s)
        scorer = self._scorer({"win": (rule, length)})
        scorer.push(np.asarray(db, dtype=np.float32))
        starts, probs = scorer.finish()["win"]
        b, e = window_times(starts, length, scorer.n_frames, self.seconds_per_frame)
        return np.asarray(b), np.asarray(e), probs

    def score_frames(
        self,
        chunks: Iterable[np.ndarray],
        file: str = "",
        n_samples: int | list[int] | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
        expected_frames: int | None = None,
        cover_end: bool = True,
    ) -> Prediction:
        """A :class:`Prediction` from spectrogram chunks (consecutive frames of one recording).

        ``cover_end=False``: the table's windows are the training rule's alone (no extra
        window ending at the end; ``evaluate`` compares them with validation's windows).

        ``n_samples``: the recording's length in samples (for its duration), or a
        one-element list that holds it once ``chunks`` is spent. ``expected_frames``:
        the length hint of :meth:`expected_frames` (raises :class:`LengthHintError` when
        the recording turns out longer or shorter; score it again without).
        """
        set_torch_threads(self.threads)  # this thread runs the model (decoders use 1 thread)
        if self.preprocessing.is_birdnet:
            return self._score_birdnet(chunks, file, n_samples, window_s, hop_s)
        table, length = self.table_rule(window_s, hop_s, cover_end)
        scorer = self._scorer(
            {"rec": self.recording_rule(), "win": (table, length)}, expected_frames
        )
        for db in chunks:
            scorer.push(db)
        if scorer.n_frames == 0:
            raise BadInputError(file or "<input>", "no audio samples")
        res = scorer.finish()
        ns = n_samples[0] if isinstance(n_samples, list) else n_samples
        duration = (
            ns / self.sample_rate
            if ns is not None
            else (scorer.n_frames - 1) * self.seconds_per_frame
        )
        starts, wprobs = res["win"]
        b, e = window_times(starts, length, scorer.n_frames, self.seconds_per_frame, duration)
        return self._prediction(file, duration, self.pool(res["rec"][1]), b, e, wprobs)

    def _prediction(
        self,
        file: str,
        duration: float,
        probs: np.ndarray,
        starts_s: list[float],
        ends_s: list[float],
        window_probs: np.ndarray,
    ) -> Prediction:
        """A :class:`Prediction`, with the location filter applied when it is on."""
        return Prediction(
            file=file,
            duration_s=float(duration),
            classes=self.classes,
            probs=self.apply_location(probs),
            starts_s=np.asarray(starts_s, dtype=np.float64),
            ends_s=np.asarray(ends_s, dtype=np.float64),
            window_probs=self.apply_location(window_probs),
        )

    def _score_birdnet(
        self,
        chunks: Iterable[np.ndarray],
        file: str = "",
        n_samples: int | list[int] | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
    ) -> Prediction:
        """Score BirdNET windows: every window alone, and the recording (pooled or averaged).

        A recording's BirdNET features are small (30 kB per 3 s window, 36 MB an hour),
        so they are gathered whole before the recording-level score.
        """
        parts = [np.asarray(c, dtype=np.float32) for c in chunks if c.shape[1]]
        if not parts:
            raise BadInputError(file or "<input>", "no audio samples")
        feats = np.concatenate(parts, axis=1)
        rule, _ = self.table_rule(window_s, hop_s)
        starts = rule.starts(feats.shape[1])
        logits = np.concatenate(
            [
                self.runner(np.ascontiguousarray(feats[:, starts[i : i + self.batch_size]].T))
                for i in range(0, len(starts), self.batch_size)
            ]
        )
        act = self.activation
        wprobs = act(logits)
        if self.preprocessing.encoding.kind == "pooled":
            rec = act(self.runner(self.encode(feats, feats.shape[1])[None]))[0]
        else:  # the windows' probabilities, pooled as validation pools them
            every = wprobs if rule.hop == 1 else act(self.runner(np.ascontiguousarray(feats.T)))
            rec = self.pool(every)
        ns = n_samples[0] if isinstance(n_samples, list) else n_samples
        spf = self.seconds_per_frame
        duration = ns / self.sample_rate if ns else (feats.shape[1] - 1) * spf + 3.0
        b, e = window_times(
            starts, 1, feats.shape[1], spf, duration, self.preprocessing.input_seconds()
        )
        return self._prediction(file, duration, rec, b, e, wprobs)

    # ---------------------------------------------------------------- audio in
    def frame_chunks(
        self,
        blocks: Iterable[np.ndarray],
        counter: list[int] | None = None,
        workers: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Exact log-mel frame chunks of consecutive sample blocks (see :class:`FrameStitcher`).

        The log-mel of successive blocks is computed on ``workers`` threads (default
        :attr:`feature_workers`), in order. ``counter`` (a one-element list), when given,
        receives the number of samples seen.
        """
        if self.preprocessing.is_birdnet:
            from birdstack.features.birdnet import stream_features

            pre = self.preprocessing
            yield from stream_features(blocks, pre.birdnet, pre.encoding.min_last_window, counter)
            return
        min_frames = max(1, self.preprocessing.input_frames())
        st = FrameStitcher(self.features, self.spec.n_fft, self.spec.hop_length, min_frames)

        def jobs() -> Iterator[MelJob]:
            for block in blocks:
                job = st.plan(block)
                if counter is not None:
                    counter[0] = st.n_samples
                if job is not None:
                    yield job
            job = st.plan_finish()
            if job is not None:
                yield job

        n = self.feature_workers if workers is None else workers
        yield from ordered_map(st.run, jobs(), n)

    def file_chunks(
        self,
        path: str | os.PathLike[str],
        block_s: float = DEFAULT_BLOCK_S,
        counter: list[int] | None = None,
    ) -> Iterator[np.ndarray]:
        """Decode ``path`` block by block and yield its exact log-mel frames in chunks."""
        from birdstack.features.audio import stream_audio

        blocks = stream_audio(path, self.sample_rate, block_s=block_s, overlap_samples=0)
        yield from self.frame_chunks(blocks, counter)

    def predict(
        self,
        source: str | os.PathLike[str] | np.ndarray,
        sample_rate: int | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
        block_s: float = DEFAULT_BLOCK_S,
        length_hint: bool = True,
    ) -> Prediction:
        """Predict one recording: a file path (decoded in blocks) or a waveform.

        A file is decoded and turned into log-mel frames in a background thread, block
        by block, while the model scores the windows. A waveform may be ``[samples]`` or
        ``[channels, samples]`` (mixed to mono); it is resampled from ``sample_rate``
        (default: the model's) when needed.
        """
        if isinstance(source, np.ndarray):
            wave = self._prepare_wave(source, sample_rate)
            return self.score_frames(
                [self.features(wave)], "<waveform>", wave.size, window_s, hop_s
            )
        hint = self.expected_frames(source) if length_hint else None
        counter = [0]
        chunks = iter_ahead(self.file_chunks(source, block_s, counter))
        try:
            return self.score_frames(chunks, str(source), counter, window_s, hop_s, hint)
        except LengthHintError as e:  # a header that lies: decode again, keeping every frame
            log.warning("%s: %s; scoring it again without the length hint", source, e)
            return self.predict(source, None, window_s, hop_s, block_s, length_hint=False)

    def _prepare_wave(self, wave: np.ndarray, sample_rate: int | None) -> np.ndarray:
        x = np.asarray(wave, dtype=np.float32)
        if x.ndim == 2:
            ch_axis = 0 if x.shape[0] < x.shape[1] else 1
            x = x.mean(axis=ch_axis, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise BadInputError(
                "<waveform>", f"expected a non-empty 1-D or 2-D array, got {wave.shape}"
            )
        if sample_rate is not None and sample_rate != self.sample_rate:
            import soxr

            from birdstack.features.audio import RESAMPLE_QUALITY

            x = soxr.resample(x, sample_rate, self.sample_rate, quality=RESAMPLE_QUALITY)
        return np.ascontiguousarray(x, dtype=np.float32)


def set_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (of the calling thread with OpenMP), if torch is in use.

    A no-op while torch is not imported: an ONNX predictor never imports it.
    """
    if threads and "torch" in sys.modules:
        import torch

        torch.set_num_threads(int(threads))


def default_threads() -> int:
    """The model's threads when none are asked for: torch's default, else the usable CPUs."""
    if "torch" in sys.modules:
        import torch

        return int(torch.get_num_threads())
    from birdstack.features.cache import default_workers

    return default_workers()

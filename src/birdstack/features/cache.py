"""Content-addressed cache of features: log-mel spectrograms or BirdNET windows.

Each recording's features are stored once per audio content and feature settings:
its dB spectrogram (float32 ``[n_mels, frames]``, see
:func:`birdstack.features.mel.compute_logmel`), or with the BirdNET front end its
BirdNET embeddings and logits (float32 ``[1024 + 6522, windows]``, see
:mod:`birdstack.features.birdnet`; a window counts as a frame)::

    <root>/<settings_hash>/<sha1[:2]>/<sha1>.npy    the spectrogram
    <root>/<settings_hash>/<sha1[:2]>/<sha1>.json   samples, duration, frames (or the error)
    <root>/<settings_hash>/settings.json            what the settings hash stands for

``sha1`` is the SHA-1 of the audio file's bytes, so renamed or copied files hit the
cache and a file whose content changes misses it. ``settings_hash`` covers the
audio and spectrogram settings that change the stored values (``top_db`` does not:
it is applied per model input), the FFT's precision (float32 where a model cannot see
the difference, :func:`birdstack.features.melbank.fft_dtype_for`; that does depend on
``top_db``) and :data:`FEATURE_VERSION`; for BirdNET it covers
the backbone's identity (name, version, sha256 of the model file), the window hop
and the last-window rule instead, so two BirdNET models never share entries.

Both files are written atomically, the ``.json`` last: an entry exists once its
``.json`` does, so a run killed at any moment leaves finished entries intact and
the next run computes only the rest. A damaged ``.npy`` (e.g. truncated by a full
disk) is detected and recomputed. Files that cannot be decoded are remembered too
(their ``.json`` holds the reason), so they are not decoded again::

    >>> import tempfile, pathlib, numpy as np, soundfile as sf
    >>> from birdstack.config import AudioConfig, BirdnetConfig, SpectrogramConfig
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> sf.write(tmp / "a.wav", np.zeros(32000, "float32"), 32000)
    >>> cache = FeatureCache(tmp / "cache", AudioConfig(), SpectrogramConfig())
    >>> res = cache.compute_many([tmp / "a.wav"], workers=1, progress=False)
    >>> res[tmp / "a.wav"].frames, res.n_computed
    (63, 1)
    >>> cache.compute_many([tmp / "a.wav"], workers=1, progress=False).n_computed
    0
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from birdstack.config import AudioConfig, BirdnetConfig, SpectrogramConfig
from birdstack.utils import (
    BadInputError,
    atomic_write_json,
    commit_temp,
    file_sha1,
    get_logger,
    new_temp_path,
    remove_stale_temp_files,
    stable_hash,
)

# Bump when the way features are computed changes: old entries are then ignored.
FEATURE_VERSION = 1
# Spectrogram settings that do not change the cached dB values (they act per model input).
_NOT_IN_KEY = frozenset({"top_db", "band_norm", "pcen"})
# Files longer than this are decoded and transformed block by block (bounded memory).
STREAM_ABOVE_S = 600.0

log = get_logger("features.cache")


@dataclass(frozen=True)
class CacheEntry:
    """The cache's answer for one audio file: where its features are, or why there are none."""

    path: Path
    cache_file: Path | None = None
    frames: int = 0
    samples: int = 0
    duration_s: float = 0.0
    error: str | None = None
    computed: bool = False  # computed by this call (False: found in the cache)

    @property
    def ok(self) -> bool:
        """True when the features are available."""
        return self.error is None


@dataclass(frozen=True)
class CacheResult:
    """Per-path entries of :meth:`FeatureCache.compute_many`, in the order given.

    Index by position or by path: ``result[path].cache_file``.
    """

    entries: tuple[CacheEntry, ...]
    _index: dict[Path, int] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for i, e in enumerate(self.entries):
            self._index.setdefault(e.path, i)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[CacheEntry]:
        return iter(self.entries)

    def __getitem__(self, key: int | str | os.PathLike[str]) -> CacheEntry:
        if isinstance(key, int):
            return self.entries[key]
        try:
            return self.entries[self._index[Path(key)]]
        except KeyError:
            raise KeyError(str(key)) from None

    @property
    def n_computed(self) -> int:
        """Files decoded by this call (including those that failed)."""
        return sum(e.computed for e in self.entries)

    @property
    def n_reused(self) -> int:
        """Files answered from the cache."""
        return sum(not e.computed for e in self.entries)

    @property
    def failed(self) -> list[CacheEntry]:
        """Entries without features (``error`` says why)."""
        return [e for e in self.entries if e.error is not None]

    @property
    def ok(self) -> list[CacheEntry]:
        """Entries with features."""
        return [e for e in self.entries if e.error is None]


# --------------------------------------------------------------------------- computing


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _key_settings(
    audio: AudioConfig,
    spec: SpectrogramConfig,
    birdnet: BirdnetConfig | None = None,
    min_last: float = 0.5,
) -> dict[str, Any]:
    if birdnet is not None:
        from birdstack.features.birdnet import identity

        ident = identity(birdnet)
        return {
            "feature_version": FEATURE_VERSION,
            "frontend": "birdnet",
            "backbone": {k: ident[k] for k in ("name", "version", "sha256")},
            "sample_rate": audio.sample_rate,
            "hop_s": birdnet.hop_s,
            "min_last_window": min_last,
        }
    from birdstack.features.melbank import fft_dtype_for

    spec_d = {k: v for k, v in dataclasses.asdict(spec).items() if k not in _NOT_IN_KEY}
    return {
        "feature_version": FEATURE_VERSION,
        "audio": dataclasses.asdict(audio),
        "spectrogram": spec_d,
        # the FFT's precision follows the settings (top_db included, see fft_dtype_for);
        # entries computed before it was chosen per settings (float64 throughout) have
        # no such key, so they are not mixed with these
        "fft_dtype": np.dtype(fft_dtype_for(spec)).name,
    }


def _compute_birdnet(
    path: Path, audio: AudioConfig, birdnet: BirdnetConfig, min_last: float, threads: int | None
) -> tuple[np.ndarray, int]:
    """Decode ``path`` at 48 kHz and compute its BirdNET features; ``(features, samples)``."""
    from birdstack.features.audio import stream_audio
    from birdstack.features.birdnet import stream_features

    counter = [0]
    blocks = stream_audio(path, audio.sample_rate, block_s=60.0)
    chunks = list(stream_features(blocks, birdnet, min_last, counter, threads))
    if not chunks or counter[0] == 0:
        raise BadInputError(path, "no audio samples")
    return np.concatenate(chunks, axis=1), counter[0]


def _compute_features(
    path: Path,
    audio: AudioConfig,
    spec: SpectrogramConfig,
    birdnet: BirdnetConfig | None = None,
    min_last: float = 0.5,
    threads: int | None = None,
) -> tuple[np.ndarray, int]:
    """Decode ``path`` and compute its features; returns ``(features, samples)``."""
    if birdnet is not None:
        return _compute_birdnet(path, audio, birdnet, min_last, threads)
    import torch

    from birdstack.features.audio import audio_info, load_audio, stream_audio
    from birdstack.features.mel import feature_logmel

    sr = audio.sample_rate
    mel = feature_logmel(spec, sr)
    with torch.no_grad():
        if audio_info(path).duration_s > STREAM_ABOVE_S:
            n = [0]

            def counted() -> Iterator[np.ndarray]:
                for block in stream_audio(path, sr, block_s=60.0):
                    n[0] += block.size
                    yield block

            db = mel.stream(counted()).numpy()
            samples = n[0]
        else:
            wave = load_audio(path, sr)
            samples = wave.size
            db = mel(torch.from_numpy(wave)).numpy()
    return np.ascontiguousarray(db, dtype=np.float32), samples


def _commit_entry(
    npy: Path, meta_path: Path, meta: dict[str, Any], tmp: str | None
) -> dict[str, Any]:
    """Make a computed entry visible: its data file (``tmp``, if any), then its metadata.

    The metadata are written last, so an entry whose ``.json`` exists is complete.
    """
    if tmp is not None:
        commit_temp(tmp, npy)
    atomic_write_json(meta_path, meta)
    return meta


def _work(
    path: str,
    sha: str,
    npy: str,
    audio: AudioConfig,
    spec: SpectrogramConfig,
    birdnet: BirdnetConfig | None = None,
    min_last: float = 0.5,
    threads: int | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Compute one entry (runs in a worker process): its metadata and its data's temporary file.

    The data are written to a temporary file beside ``npy`` and left for the caller to
    :func:`_commit_entry`: the flush to disk then waits in the parent process, which is
    otherwise idle, instead of in a worker (0.4 s of 7 s for birds-dev on 2 workers).
    ``None`` instead of a file for an unreadable input (its metadata say why).
    """
    meta: dict[str, Any] = {"sha1": sha, "source": Path(path).name}
    try:
        db, samples = _compute_features(Path(path), audio, spec, birdnet, min_last, threads)
    except BadInputError as e:
        return {**meta, "error": e.reason}, None
    tmp = new_temp_path(npy)
    try:
        with open(tmp, "wb") as fh:  # straight from the array, no in-memory copy of the file
            np.lib.format.write_array(fh, np.ascontiguousarray(db, dtype=np.float32))
            size = fh.tell()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    meta.update(
        samples=int(samples),
        sample_rate=audio.sample_rate,
        duration_s=samples / audio.sample_rate,
        n_mels=int(db.shape[0]),
        frames=int(db.shape[1]),
        npy_bytes=size,
    )
    return meta, str(tmp)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Compute features with one intra-op thread (restored afterwards).

    The log-mel works on small chunks of frames; splitting each across threads
    costs more than it gains (7x slower with 2 threads on 2 busy cores), so
    parallelism comes from processes instead.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork is cheap (torch is already imported) and safe here: workers only use
    # torch with one intra-op thread, like torch's own DataLoader workers.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def default_workers() -> int:
    """CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- cache


class FeatureCache:
    """Features of audio files, computed once per content and settings.

    ``birdnet``: cache BirdNET V2.4 windows (embeddings + logits) instead of log-mels,
    with ``min_last`` the last-window rule (``encoding.min_last_window``).
    :meth:`for_preprocessing` picks the front end a :class:`Preprocessing` names.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        audio: AudioConfig,
        spec: SpectrogramConfig,
        birdnet: BirdnetConfig | None = None,
        min_last: float = 0.5,
    ):
        self.root = Path(root)
        self.audio = audio
        self.spec = spec
        self.birdnet = birdnet
        self.min_last = float(min_last)
        self.settings = _key_settings(audio, spec, birdnet, self.min_last)
        self.settings_hash = stable_hash(self.settings)
        self.dir = self.root / self.settings_hash

    @classmethod
    def for_preprocessing(cls, root: str | os.PathLike[str], pre: Any) -> FeatureCache:
        """The cache of a :class:`~birdstack.config.Preprocessing`'s front end."""
        if pre.is_birdnet:
            return cls(root, pre.audio, pre.spectrogram, pre.birdnet, pre.encoding.min_last_window)
        return cls(root, pre.audio, pre.spectrogram)

    def _extra(self, threads: int | None) -> tuple[Any, ...]:
        return (self.birdnet, self.min_last, threads) if self.birdnet is not None else ()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.dir)!r})"

    # ---- locations
    def _files(self, sha: str) -> tuple[Path, Path]:
        d = self.dir / sha[:2]
        return d / f"{sha}.npy", d / f"{sha}.json"

    @staticmethod
    def _sha(path: Path) -> str:
        try:
            return file_sha1(path)
        except FileNotFoundError:
            raise BadInputError(path, "file not found") from None
        except IsADirectoryError:
            raise BadInputError(path, "is a directory, not an audio file") from None
        except OSError as e:
            raise BadInputError(path, f"cannot be read ({e.strerror or e})") from None

    def path_for(self, path: str | os.PathLike[str]) -> Path:
        """Where the features of ``path`` are (or will be) stored."""
        return self._files(self._sha(Path(path)))[0]

    def _write_settings(self) -> None:
        f = self.dir / "settings.json"
        if not f.exists():
            atomic_write_json(f, self.settings)

    # ---- reading
    def _read_meta(self, sha: str) -> dict[str, Any] | None:
        """The entry's metadata when the entry looks complete, else ``None``."""
        npy, meta_path = self._files(sha)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("sha1") != sha:
            return None
        if "error" in meta:
            return meta
        try:
            if npy.stat().st_size != meta["npy_bytes"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
        return meta

    def _load_npy(self, sha: str, meta: dict[str, Any]) -> np.ndarray | None:
        npy, _ = self._files(sha)
        try:
            with open(npy, "rb") as fh:
                db = np.load(fh, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if (
            db.dtype != np.float32
            or db.shape != (meta.get("n_mels"), meta.get("frames"))
            or not np.isfinite(db).all()
        ):
            return None
        return db

    def _entry(self, path: Path, sha: str, meta: dict[str, Any], computed: bool) -> CacheEntry:
        if "error" in meta:
            error = str(BadInputError(path, meta["error"]))
            return CacheEntry(path, error=error, computed=computed)
        return CacheEntry(
            path,
            cache_file=self._files(sha)[0],
            frames=int(meta["frames"]),
            samples=int(meta["samples"]),
            duration_s=float(meta["duration_s"]),
            computed=computed,
        )

    def get(self, path: str | os.PathLike[str]) -> np.ndarray | None:
        """The cached dB spectrogram ``[n_mels, frames]`` of ``path``, or ``None`` if absent.

        A damaged cache file counts as absent.
        """
        sha = self._sha(Path(path))
        meta = self._read_meta(sha)
        if meta is None or "error" in meta:
            return None
        return self._load_npy(sha, meta)

    def entry(self, path: str | os.PathLike[str]) -> CacheEntry | None:
        """Samples, duration and frames of a cached file without loading it (``None``: absent)."""
        path = Path(path)
        sha = self._sha(path)
        meta = self._read_meta(sha)
        return None if meta is None else self._entry(path, sha, meta, computed=False)

    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The dB spectrogram of ``path``, computed and stored first when needed.

        Raises :class:`BadInputError` when the file cannot be decoded.
        """
        path = Path(path)
        sha = self._sha(path)
        meta = self._read_meta(sha)
        if meta is not None and "error" not in meta:
            db = self._load_npy(sha, meta)
            if db is not None:
                return db
            log.warning("damaged cache entry for %s; recomputing", path)
        if meta is None or "error" not in meta:
            self._write_settings()
            npy, meta_path = self._files(sha)
            with _one_torch_thread():
                meta, tmp = _work(
                    str(path), sha, str(npy), self.audio, self.spec, *self._extra(None)
                )
            meta = _commit_entry(npy, meta_path, meta, tmp)
        if "error" in meta:
            raise BadInputError(path, meta["error"])
        db = self._load_npy(sha, meta)
        if db is None:  # pragma: no cover - the file was just written
            raise OSError(f"{self._files(sha)[0]}: cache file unreadable right after writing")
        return db

    # ---- many files
    def compute_many(
        self,
        paths: Sequence[str | os.PathLike[str]],
        workers: int = 0,
        progress: bool = True,
    ) -> CacheResult:
        """Make sure every file has features; compute the missing ones in parallel.

        ``workers``: processes (0: all CPUs; 1: in this process). Files already in
        the cache are not decoded again (``result.n_computed`` counts the ones that
        were); identical contents are computed once. Unreadable files get an entry
        whose ``error`` is the :class:`BadInputError` message.
        """
        paths = [Path(p) for p in paths]
        found: dict[int, CacheEntry] = {}
        todo: dict[str, list[int]] = {}  # sha1 -> indices of the paths holding it
        for i, p in enumerate(paths):
            try:
                sha = self._sha(p)
            except BadInputError as e:
                found[i] = CacheEntry(p, error=str(e))
                continue
            if sha in todo:
                todo[sha].append(i)
                continue
            meta = self._read_meta(sha)
            if meta is None:
                todo[sha] = [i]
            else:
                found[i] = self._entry(p, sha, meta, computed=False)
        results = self._run(paths, todo, workers, progress)
        for sha, idx in todo.items():
            meta = results[sha]
            for k, i in enumerate(idx):
                found[i] = self._entry(paths[i], sha, meta, computed=k == 0)
        return CacheResult(tuple(found[i] for i in range(len(paths))))

    def _run(
        self, paths: list[Path], todo: dict[str, list[int]], workers: int, progress: bool
    ) -> dict[str, dict[str, Any]]:
        """Compute the entries in ``todo``; returns their metadata by sha1."""
        if not todo:
            return {}
        from birdstack.utils import progress_bar

        remove_stale_temp_files(self.dir, recursive=True)  # left by a killed run
        self._write_settings()
        n_proc = min(workers or default_workers(), len(todo))
        # BirdNET: one interpreter thread per worker process, all threads in-process
        threads = 1 if n_proc > 1 else None
        # largest files first, so the last jobs are short and no worker idles at the end
        order = sorted(todo, key=lambda sha: -_size(paths[todo[sha][0]]))
        jobs = {
            sha: (
                str(paths[todo[sha][0]]),
                sha,
                str(self._files(sha)[0]),
                self.audio,
                self.spec,
                *self._extra(threads),
            )
            for sha in order
        }
        out: dict[str, dict[str, Any]] = {}
        bar = progress_bar(total=len(jobs), desc="features", unit="file", disable=not progress)
        try:
            if n_proc <= 1:
                with _one_torch_thread():
                    for sha, args in jobs.items():
                        out[sha] = _commit_entry(*self._files(sha), *_work(*args))
                        bar.update()
            else:
                with ProcessPoolExecutor(
                    n_proc, mp_context=_mp_context(), initializer=_init_worker
                ) as pool:
                    futures = {pool.submit(_work, *args): sha for sha, args in jobs.items()}
                    try:
                        for fut in as_completed(futures):
                            sha = futures[fut]
                            out[sha] = _commit_entry(*self._files(sha), *fut.result())
                            bar.update()
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        finally:
            bar.close()
        n_bad = sum("error" in m for m in out.values())
        log.info("computed features of %d file(s), %d unreadable", len(out), n_bad)
        return out

"""Audio decoding: any libsndfile format, by content, to mono float32 at a target rate.

Files are recognised by their content, not their name (a WAV named ``.mp3`` loads
as WAV). Multi-channel audio is mixed to mono (mean of the channels) and resampled
with soxr (``HQ``) when the file's rate differs from the one asked for::

    >>> import tempfile, pathlib, numpy as np, soundfile as sf
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "tone.wav"
    >>> sf.write(p, np.zeros((8000, 2), "float32"), 8000)
    >>> load_audio(p, 16000).shape
    (16000,)

Files that cannot be used raise :class:`birdstack.utils.BadInputError` naming the
file and the reason (not found, empty, not audio, truncated or corrupt, no
samples, non-finite samples). Silent (all-zero) audio is valid.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from birdstack.utils import BadInputError

RESAMPLE_QUALITY = "HQ"
# file name endings read as audio when a folder is searched (libsndfile's containers)
AUDIO_EXTENSIONS = frozenset({".ogg", ".oga", ".opus", ".mp3", ".wav", ".flac", ".aif", ".aiff"})


def find_audio_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Audio files below ``folder`` (recursive, sorted), hidden files (``.name``) left out.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for n in ("b.WAV", "a/c.ogg", "._c.ogg", "notes.txt"):
    ...     (d / n).parent.mkdir(exist_ok=True); (d / n).touch()
    >>> [p.relative_to(d).as_posix() for p in find_audio_files(d)]
    ['a/c.ogg', 'b.WAV']
    """
    return sorted(
        p
        for p in Path(folder).rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


# libsndfile error codes (sndfile.h)
_SF_ERR_UNRECOGNISED_FORMAT = 1
_SF_ERR_SYSTEM = 2
_SF_ERR_MALFORMED_FILE = 3
_SF_ERR_UNSUPPORTED_ENCODING = 4
# "File does not exist or is not a regular file": also what libsndfile answers when its
# MPEG decoder finds no frame in a file that does exist (checked before opening)
_SF_ERR_NOT_A_FILE = 7

# Ogg page header: capture, version, flags, granule, serial, sequence, crc, segments
_OGG_HEADER = struct.Struct("<4sBBqIIIB")
_OGG_EOS = 0x04
# MP3 frame counts are estimates when a file carries no Xing/LAME header: allow one
# MPEG frame (1152 samples) of slack between the promised and the decoded length.
_MP3_SLACK_FRAMES = 1152


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says (before mixing and resampling)."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float


def _check_file(path: Path) -> None:
    """Raise :class:`BadInputError` for missing, non-regular or empty files."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    except OSError as e:
        raise BadInputError(path, f"cannot be read ({e.strerror or e})") from None
    if path.is_dir():
        raise BadInputError(path, "is a directory, not an audio file")
    if st.st_size == 0:
        raise BadInputError(path, "empty file (0 bytes)")


def _open_error(path: Path, e: Exception) -> BadInputError:
    code = getattr(e, "code", None)
    detail = getattr(e, "error_string", None) or str(e)
    if code in (_SF_ERR_UNRECOGNISED_FORMAT, _SF_ERR_NOT_A_FILE):
        return BadInputError(path, "not a recognised audio format")
    if code == _SF_ERR_SYSTEM:
        return BadInputError(path, f"cannot be read (libsndfile: {detail})")
    if code == _SF_ERR_MALFORMED_FILE:
        return BadInputError(path, f"corrupt or truncated audio file (libsndfile: {detail})")
    if code == _SF_ERR_UNSUPPORTED_ENCODING:
        return BadInputError(path, f"unsupported audio encoding (libsndfile: {detail})")
    return BadInputError(
        path, f"not a recognised audio format, or a corrupt file (libsndfile: {detail})"
    )


def _ogg_problem(path: Path) -> str | None:
    """Walk the Ogg pages of ``path``; say why the container is truncated, or ``None``.

    libsndfile silently decodes an Ogg file cut in the middle (the partial last page
    is dropped and the length is taken from the last complete page), so truncation
    is checked on the container: every page must be complete and the last one must
    carry the end-of-stream flag.
    """
    size = path.stat().st_size
    pos = 0
    last_flags = 0
    with open(path, "rb") as fh:
        while pos < size:
            fh.seek(pos)
            head = fh.read(_OGG_HEADER.size)
            if len(head) < _OGG_HEADER.size:
                return f"truncated Ogg stream (incomplete page header at byte {pos})"
            capture, _version, flags, _g, _s, _q, _c, nseg = _OGG_HEADER.unpack(head)
            if capture != b"OggS":
                return f"corrupt Ogg stream (no page at byte {pos})"
            table = fh.read(nseg)
            if len(table) < nseg:
                return f"truncated Ogg stream (incomplete page at byte {pos})"
            end = pos + _OGG_HEADER.size + nseg + sum(table)
            if end > size:
                return (
                    f"truncated Ogg stream (the last page needs {end - size} more bytes; "
                    "was the download or copy interrupted?)"
                )
            last_flags = flags
            pos = end
    if not last_flags & _OGG_EOS:
        return "truncated Ogg stream (the last page has no end-of-stream mark)"
    return None


def _open(path: Path) -> sf.SoundFile:
    """Open by content (no format hint), after the container checks."""
    _check_file(path)
    try:
        snd = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise _open_error(path, e) from None
    try:
        if snd.format == "OGG":
            problem = _ogg_problem(path)
            if problem:
                raise BadInputError(path, problem)
        if snd.frames <= 0:
            raise BadInputError(path, "no audio samples (the file holds 0 frames)")
    except BaseException:
        snd.close()
        raise
    return snd


def _check_length(path: Path, snd: sf.SoundFile, got: int) -> None:
    expected = snd.frames
    slack = _MP3_SLACK_FRAMES if snd.format == "MP3" else 0
    if got + slack < expected:
        raise BadInputError(
            path,
            f"corrupt or truncated audio stream (decoded {got} of the {expected} frames "
            "the header promises)",
        )


def _to_mono(data: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` or ``[frames]`` -> contiguous float32 ``[frames]``."""
    if data.ndim == 2:
        data = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(data, dtype=np.float32)


_FINITE_CHUNK = 1 << 18  # samples checked at a time: a small temporary, reused in cache


def _check_finite(path: Path, x: np.ndarray) -> None:
    # in chunks: one whole-file boolean temporary cost 2 % of a feature worker's time
    # (fresh pages for every file)
    for i in range(0, x.size, _FINITE_CHUNK):
        if not np.isfinite(x[i : i + _FINITE_CHUNK]).all():
            raise BadInputError(path, "contains non-finite samples (NaN or infinity)")


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Header information of an audio file (checked like :func:`load_audio` opens it).

    >>> import tempfile, pathlib, numpy as np, soundfile as sf
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.flac"
    >>> sf.write(p, np.zeros(4000, "float32"), 8000)
    >>> audio_info(p)
    AudioInfo(sample_rate=8000, channels=1, frames=4000, duration_s=0.5)
    """
    path = Path(path)
    with _open(path) as snd:
        return AudioInfo(
            sample_rate=int(snd.samplerate),
            channels=int(snd.channels),
            frames=int(snd.frames),
            duration_s=snd.frames / snd.samplerate,
        )


def load_audio(path: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """Decode a whole file to mono float32 ``[samples]`` at ``sample_rate``.

    Raises :class:`BadInputError` when the file is missing, empty, not audio,
    truncated or corrupt, holds no samples, or holds NaN/infinite samples.
    """
    path = Path(path)
    with _open(path) as snd:
        native = int(snd.samplerate)
        try:
            data = snd.read(dtype="float32", always_2d=False)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise BadInputError(path, f"corrupt audio stream (decoding failed: {e})") from None
        _check_length(path, snd, len(data))
    wave = _to_mono(data)
    del data
    if wave.size == 0:
        raise BadInputError(path, "no audio samples (nothing could be decoded)")
    _check_finite(path, wave)
    if native != sample_rate:
        wave = soxr.resample(wave, native, sample_rate, quality=RESAMPLE_QUALITY)
        wave = np.ascontiguousarray(wave, dtype=np.float32)
    return wave


def stream_audio(
    path: str | os.PathLike[str],
    sample_rate: int,
    block_s: float = 60.0,
    overlap_samples: int = 0,
) -> Iterator[np.ndarray]:
    """Decode a long file block by block, in bounded memory.

    Yields mono float32 blocks at ``sample_rate``: each holds ``round(block_s *
    sample_rate)`` new samples (the last one fewer), preceded by the last
    ``overlap_samples`` samples of the previous block (none before the first).
    Resampling uses one :class:`soxr.ResampleStream`, so block joins are seamless.

    With ``overlap_samples=0`` the concatenated blocks equal ``load_audio(path,
    sample_rate)``: exactly when the file is already at ``sample_rate``, and to
    within about 1e-5 (the streaming resampler's rounding) otherwise. With an
    overlap, drop the first ``overlap_samples`` of every block but the first to
    get the same signal back.
    """
    if block_s <= 0:
        raise ValueError(f"block_s={block_s} must be positive")
    if overlap_samples < 0:
        raise ValueError(f"overlap_samples={overlap_samples} must be >= 0")
    path = Path(path)
    block_len = max(1, int(round(block_s * sample_rate)))
    snd = _open(path)
    with snd:
        native = int(snd.samplerate)
        resampler = (
            soxr.ResampleStream(native, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
            if native != sample_rate
            else None
        )
        read_len = max(1, math.ceil(block_s * native))
        pending: list[np.ndarray] = []  # resampled samples not yet yielded
        n_pending = 0
        tail = np.zeros(0, dtype=np.float32)  # overlap carried into the next block
        decoded = 0
        yielded_any = False

        def emit(new: np.ndarray) -> np.ndarray:
            nonlocal tail
            block = np.concatenate([tail, new]) if tail.size else new
            if overlap_samples:
                tail = block[-overlap_samples:].copy()
            return block

        while True:
            try:
                data = snd.read(read_len, dtype="float32", always_2d=False)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise BadInputError(path, f"corrupt audio stream (decoding failed: {e})") from None
            last = len(data) < read_len or snd.tell() >= snd.frames
            decoded += len(data)
            chunk = _to_mono(data)
            _check_finite(path, chunk)
            if resampler is not None:
                chunk = resampler.resample_chunk(chunk, last=last)
            if chunk.size:
                pending.append(chunk)
                n_pending += chunk.size
            while n_pending >= block_len:
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                out, rest = joined[:block_len], joined[block_len:]
                pending = [rest] if rest.size else []
                n_pending = rest.size
                yielded_any = True
                yield emit(np.ascontiguousarray(out, dtype=np.float32))
            if last:
                break
        _check_length(path, snd, decoded)
    if n_pending:
        yielded_any = True
        yield emit(np.ascontiguousarray(np.concatenate(pending), dtype=np.float32))
    if not yielded_any:
        raise BadInputError(path, "no audio samples (nothing could be decoded)")

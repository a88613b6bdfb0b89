"""The torch-free half of the log-mel front end: mel filters, framing, a NumPy log-mel.

:class:`NumpyLogMel` computes the same log-mel dB as :class:`birdstack.features.mel.LogMel`
(float64 windowing and FFT, float32 mel product; they agree to within 1e-4 dB) with
NumPy and SciPy alone. A :class:`~birdstack.inference.predictor.Predictor` running an
ONNX export uses it, so ``birdstack predict model.onnx`` never imports torch (about 670
MB of resident memory, most of a predict run's peak)::

    >>> import numpy as np
    >>> from birdstack.config import SpectrogramConfig
    >>> db = NumpyLogMel(SpectrogramConfig(), 32000)(np.zeros(32000, "float32"))
    >>> db.shape, round(float(db.max()), 3)
    ((128, 63), -100.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from birdstack.config import BAND_NORMS, PcenConfig, SpectrogramConfig

# Frames transformed at a time: the frames, their FFT and power stay in cache.
CHUNK_FRAMES = 128


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as ``librosa.hz_to_mel``."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    above = freq >= min_log_hz
    return np.where(
        above, min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep, mels
    )


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def mel_filterbank(
    sr: int,
    n_fft: int,
    n_mels: int,
    fmin: float,
    fmax: float,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Triangular mel filters ``[n_mels, 1 + n_fft // 2]`` (Slaney scale, Slaney area norm).

    Same values as ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels,
    fmin=fmin, fmax=fmax)`` (computed in float64, returned as ``dtype``).

    >>> fb = mel_filterbank(32000, 2048, 128, 50.0, 14000.0)
    >>> fb.shape, fb.dtype
    ((128, 1025), dtype('float32'))
    """
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels])
    weights *= enorm[:, None]
    return weights.astype(dtype)


def n_frames(n_samples: int, spec: SpectrogramConfig) -> int:
    """Frames for ``n_samples`` samples (``1 + n_samples // hop_length`` for even ``n_fft``)."""
    pad = spec.n_fft // 2
    return 1 + (n_samples + 2 * pad - spec.n_fft) // spec.hop_length


def band_median(db: np.ndarray) -> np.ndarray:
    """Each band's median over the frames (last axis), keepdims; ``np.median`` by a
    partition at the middle only (dB values are never NaN, so ``np.median``'s NaN scan,
    which costs it 5x the time on a 128 x 313 window, is not needed).

    >>> x = np.array([[3.0, 1.0, 2.0], [4.0, 6.0, 5.0]])
    >>> band_median(x).ravel().tolist(), band_median(x[:, :2]).ravel().tolist()
    ([2.0, 5.0], [2.0, 5.0])
    """
    n = db.shape[-1]
    k = n // 2
    if n % 2:
        return np.partition(db, k, axis=-1)[..., k : k + 1]
    p = np.partition(db, k, axis=-1)  # the lower middle is the largest value before k
    lower = p[..., :k].max(axis=-1, keepdims=True)
    return (lower + p[..., k : k + 1]) * np.asarray(0.5, dtype=db.dtype)


# PCEN (Wang et al. 2017; Lostanlen et al. 2019): the settings are a PcenConfig
# (librosa.pcen's defaults); eps is librosa's, and the magnitudes are scaled by 2**31
# first, as librosa advises for audio in [-1, 1].
PCEN_EPS = 1e-6
PCEN_INPUT_SCALE = 2.0**31
LIBROSA_PCEN = PcenConfig()  # the default settings


def pcen_smoothing(frame_rate: float, time_constant: float = LIBROSA_PCEN.time_constant) -> float:
    """The one-pole smoother's coefficient ``b`` for a time constant in seconds
    (librosa.pcen's formula).

    >>> round(pcen_smoothing(32000 / 512), 4)
    0.0392
    """
    t = time_constant * frame_rate
    return float((np.sqrt(1 + 4 * t**2) - 1) / (2 * t**2))


def pcen_db(db: np.ndarray, frame_rate: float, pcen: PcenConfig = LIBROSA_PCEN) -> np.ndarray:
    """Per-channel energy normalisation of a dB mel spectrogram ``[..., n_mels, T]``.

    Each band's magnitude ``E`` (``10**(db/20)``, scaled by :data:`PCEN_INPUT_SCALE`) is
    divided by a slow moving average of itself ``M`` (``pcen.time_constant`` seconds) to
    the power ``pcen.gain``, then compressed: ``(E / (eps + M)**gain + bias)**power -
    bias**power`` (``librosa.pcen``; ``pcen``: a :class:`~birdstack.config.PcenConfig`,
    librosa's defaults unless given). A band's
    stationary level and the recorder's gain drop out and what rises above the band's
    recent past remains: an adaptive version of the band median. The smoother starts
    in its steady state at the band's median over the input, not at 0 or at the first
    frame, so a window's first frames are not a transient. Returns the input's dtype;
    values are ``>= 0``, 0 meaning "nothing above the background".

    >>> db = np.full((2, 50), -40.0, dtype=np.float32)
    >>> db[1, 20:25] = -10.0                       # a call in band 1
    >>> x = pcen_db(db, 62.5)
    >>> x.dtype, bool(np.ptp(x[0]) < 1e-6), bool(x[1, 20] > 5 * x[1, 5])
    (dtype('float32'), True, True)
    >>> louder = pcen_db(db + 20.0, 62.5)          # the same audio 20 dB louder
    >>> bool(np.abs(louder / x - 1).max() < 0.05)  # moves the output by under 5 %
    True
    """
    from scipy.signal import lfilter, lfilter_zi

    b = pcen_smoothing(frame_rate, pcen.time_constant)
    e = np.power(10.0, db.astype(np.float64) / 20.0) * PCEN_INPUT_SCALE
    start = np.power(10.0, band_median(db).astype(np.float64) / 20.0) * PCEN_INPUT_SCALE
    zi = lfilter_zi([b], [1.0, b - 1.0]) * start  # [..., n_mels, 1]
    m, _ = lfilter([b], [1.0, b - 1.0], e, axis=-1, zi=zi)
    smooth = np.exp(-pcen.gain * (np.log(PCEN_EPS) + np.log1p(m / PCEN_EPS)))
    out = pcen.bias**pcen.power * np.expm1(pcen.power * np.log1p(e * smooth / pcen.bias))
    return out.astype(db.dtype, copy=False)


def normalize_db_np(
    db: np.ndarray,
    top_db: float,
    batched: bool | None = None,
    band_norm: str = "none",
    frame_rate: float | None = None,
    pcen: PcenConfig = LIBROSA_PCEN,
) -> np.ndarray:
    """NumPy twin of :func:`normalize_db` (keeps float32 inputs float32).

    ``band_norm="median"`` subtracts each mel band's median over the frames (the last
    axis) first (:class:`~birdstack.config.SpectrogramConfig`); only this twin has it,
    as every model input is encoded in NumPy. ``band_norm="pcen"`` returns
    :func:`pcen_db` of the input with the ``pcen`` settings instead (``top_db`` plays
    no part; ``frame_rate``, spectrogram frames per second, is then needed).
    """
    if batched is None:
        batched = db.ndim == 4
    if band_norm == "pcen":
        if frame_rate is None:
            raise ValueError("band_norm 'pcen' needs the frame rate")
        return pcen_db(db, frame_rate, pcen)
    if band_norm == "median":
        db = db - band_median(db).astype(db.dtype, copy=False)
    elif band_norm != "none":
        raise ValueError(f"unknown band_norm {band_norm!r}")
    axes = tuple(range(1, db.ndim)) if batched else None
    peak = db.max(axis=axes, keepdims=True) if batched else db.max()
    out = np.maximum(db - peak, -top_db) / np.asarray(top_db, dtype=db.dtype) + 1
    return out.astype(db.dtype, copy=False)


@dataclass(frozen=True)
class InputNorm:
    """How every model input's dB values are normalised: one value object for the
    settings that travel together (``Preprocessing.input_norm()`` builds it from the
    checkpoint's preprocessing; training, augmentation, ``evaluate`` and ``predict`` all
    call it).

    ``top_db``: the range kept below the input's maximum; ``band_norm``: ``none``,
    ``median`` (each band's median subtracted first) or ``pcen`` (:func:`pcen_db`);
    ``frame_rate``: spectrogram frames per second, which PCEN's smoother needs;
    ``pcen``: PCEN's settings (:class:`~birdstack.config.PcenConfig`).

    >>> import numpy as np
    >>> norm = InputNorm(top_db=80.0, band_norm="median")
    >>> x = norm(np.random.default_rng(0).normal(-40, 10, (4, 50)).astype("float32"))
    >>> x.dtype, float(x.max())
    (dtype('float32'), 1.0)
    >>> InputNorm(band_norm="pcen")
    Traceback (most recent call last):
    ...
    ValueError: band_norm 'pcen' needs the frame rate
    """

    top_db: float = 80.0
    band_norm: str = "none"
    frame_rate: float | None = None
    pcen: PcenConfig = LIBROSA_PCEN

    def __post_init__(self) -> None:
        if self.band_norm not in BAND_NORMS:
            raise ValueError(f"unknown band_norm {self.band_norm!r}")
        if self.band_norm == "pcen" and self.frame_rate is None:
            raise ValueError("band_norm 'pcen' needs the frame rate")

    def __call__(self, db: np.ndarray, batched: bool | None = None) -> np.ndarray:
        """The normalised input (:func:`normalize_db_np` with these settings)."""
        return normalize_db_np(db, self.top_db, batched, self.band_norm, self.frame_rate, self.pcen)


# --------------------------------------------------------------------------- NumPy log-mel

# Power range (dB) a model sees below an input's maximum, up to which a float32 FFT is
# used: 80 dB, i.e. top_db=80 on power spectrograms (the default). Measured on the demo
# data and every 5th birds-dev recording (103 files): default settings, float32 within
# 0.0015 dB inside top_db, normalised inputs within 3e-5 (5 s windows); with power=1
# (160 dB of power range) up to 4.7 dB, so those settings keep float64.
FLOAT32_POWER_RANGE_DB = 80.0


def fft_dtype_for(spec: SpectrogramConfig) -> type:
    """float32 when a model's inputs cannot see float32's rounding, else float64.

    A model sees ``top_db`` dB below each input's maximum (:func:`normalize_db_np`), that
    is ``top_db * 2 / power`` dB of power; float32 is chosen when that is at most
    :data:`FLOAT32_POWER_RANGE_DB`.

    >>> fft_dtype_for(SpectrogramConfig()).__name__
    'float32'
    >>> fft_dtype_for(SpectrogramConfig(power=1.0)).__name__
    'float64'
    """
    power_range = spec.top_db * 2.0 / spec.power
    return np.float32 if power_range <= FLOAT32_POWER_RANGE_DB else np.float64


class NumpyLogMel:
    """Waveform ``[T]`` -> log-mel dB ``[n_mels, 1 + T // hop_length]`` float32, without torch.

    The same steps as :class:`birdstack.features.mel.LogMel`: centred frames (``n_fft //
    2`` zeros at both ends), a periodic Hann window and the real FFT in ``dtype``
    (``scipy.fft``, which releases the GIL, so worker threads overlap), ``|X| ** power``
    stored as float32, the Slaney mel filters as a sparse product over the bins they use,
    then ``10 * log10(max(amin, mel))``. Frames are transformed ``CHUNK_FRAMES`` at a time.

    ``dtype=float64`` (default, as the feature cache) equals ``LogMel`` within 1e-4 dB
    everywhere. ``float32`` is about 1.8x faster; its rounding shows in bins far below
    their frame's loudest (power more than ~100 dB down), which a model never sees when
    :func:`fft_dtype_for` picks it (see there).

    >>> NumpyLogMel(SpectrogramConfig(), 32000)(np.zeros(1000, "float32")).shape
    (128, 2)
    """

    def __init__(self, spec: SpectrogramConfig, sample_rate: int, dtype: type = np.float64) -> None:
        import scipy.sparse

        self.spec = spec
        self.sample_rate = int(sample_rate)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"NumpyLogMel dtype must be float32 or float64, not {self.dtype}")
        fb = mel_filterbank(sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax, np.float64)
        used = np.flatnonzero(fb.any(axis=0))
        lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
        self.bins = (lo, hi)
        self.fb = scipy.sparse.csr_array(np.ascontiguousarray(fb[:, lo:hi], dtype=np.float32))
        n = np.arange(spec.n_fft, dtype=np.float64)
        hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / spec.n_fft)  # periodic Hann
        self.window = hann.astype(self.dtype)

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"NumpyLogMel(sample_rate={self.sample_rate}, n_fft={s.n_fft}, "
            f"hop_length={s.hop_length}, n_mels={s.n_mels}, fmin={s.fmin}, fmax={s.fmax}, "
            f"dtype={self.dtype.name})"
        )

    def _frames_to_db(self, frames: np.ndarray) -> np.ndarray:
        """``[c, n_fft]`` frames -> ``[n_mels, c]`` dB."""
        import scipy.fft

        lo, hi = self.bins
        spec = scipy.fft.rfft(frames * self.window, axis=-1, overwrite_x=True)[:, lo:hi]
        power = np.square(spec.real)
        power += np.square(spec.imag)
        if self.spec.power != 2.0:
            power **= self.spec.power / 2.0
        mel = np.asarray(self.fb @ power.astype(np.float32).T, dtype=np.float32)
        np.maximum(mel, np.float32(self.spec.amin), out=mel)
        np.log10(mel, out=mel)
        mel *= np.float32(10.0)
        return mel

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        x = np.asarray(wave)
        if x.ndim != 1:
            raise ValueError(f"NumpyLogMel expects a wave [T], got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating) or self.dtype == np.float32:
            x = x.astype(self.dtype, copy=False)
        n_fft, hop, pad = self.spec.n_fft, self.spec.hop_length, self.spec.n_fft // 2
        total = max(x.size + 2 * pad, n_fft)  # at least one frame for any length
        padded = np.zeros(total, dtype=x.dtype)
        padded[pad : pad + x.size] = x
        frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
        out = np.empty((self.spec.n_mels, frames.shape[0]), dtype=np.float32)
        for i in range(0, frames.shape[0], CHUNK_FRAMES):
            out[:, i : i + CHUNK_FRAMES] = self._frames_to_db(frames[i : i + CHUNK_FRAMES])
        return out

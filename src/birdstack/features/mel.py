"""Log-mel spectrograms (librosa conventions) in torch, CPU or GPU.

The dB features are ``10*log10(max(amin, mel_power))`` with reference 1.0 and no
``top_db`` clipping; the clipping and scaling to ``[0, 1]`` is done per model input
by :func:`normalize_db`. The result matches ``librosa.power_to_db(
librosa.feature.melspectrogram(..., center=True, pad_mode="constant"), ref=1.0,
top_db=None)`` (Slaney mel scale and norm, periodic Hann window)::

    >>> import numpy as np
    >>> from birdstack.config import SpectrogramConfig
    >>> db = compute_logmel(np.zeros(32000, "float32"), SpectrogramConfig(), 32000)
    >>> db.shape, float(db.max())
    ((128, 63), -100.0)

A signal of ``T`` samples gives ``1 + T // hop_length`` frames (``center=True``:
frame ``f`` is centred on sample ``f * hop_length``, the signal being padded with
``n_fft // 2`` zeros at both ends), however short it is.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from birdstack.config import SpectrogramConfig
from birdstack.features.melbank import (  # noqa: F401 - re-exported, the torch-free half
    fft_dtype_for,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    n_frames,
    normalize_db_np,
)

# Frames transformed at a time on CPU: small enough for the frames, their FFT and
# power to stay in cache (about 3x faster than one transform of the whole file).
CPU_CHUNK_FRAMES = 128
# Precision of the windowing and FFT of a bare LogMel. float64 matches librosa (which
# windows and transforms in float64) to < 0.01 dB down to -100 dB; float32 is about 1.5x
# faster but is off by up to ~0.4 dB in bins > 120 dB below a frame's loudest. The
# feature pipeline (cache, predict) picks per settings with :func:`torch_fft_dtype_for`.
DEFAULT_FFT_DTYPE = torch.float64


def torch_fft_dtype_for(spec: SpectrogramConfig) -> torch.dtype:
    """:func:`~birdstack.features.melbank.fft_dtype_for` as a torch dtype.

    The FFT precision of every model input: training features (the cache) and
    ``predict`` (both runtimes) use it, so they compute the same values.

    >>> torch_fft_dtype_for(SpectrogramConfig())
    torch.float32
    >>> torch_fft_dtype_for(SpectrogramConfig(power=1.0))
    torch.float64
    """
    return torch.float32 if fft_dtype_for(spec) is np.float32 else torch.float64


@functools.lru_cache(maxsize=4)
def feature_logmel(spec: SpectrogramConfig, sample_rate: int) -> LogMel:
    """The log-mel of every model input: these settings, :func:`torch_fft_dtype_for`.

    The feature cache and ``predict``'s torch runtime both take it from here (built
    once per process; its filters and window took about 2 % of a feature worker's time
    when built per file). The module holds no state, so sharing it is safe.
    """
    return LogMel(spec, sample_rate, dtype=torch_fft_dtype_for(spec)).eval()


# --------------------------------------------------------------------------- log-mel module


class LogMel(torch.nn.Module):
    """Waveform ``[T]`` or ``[B, T]`` -> log-mel dB ``[n_mels, F]`` or ``[B, n_mels, F]``.

    Same result as ``torch.stft(center=True, pad_mode="constant", window=
    hann_window(n_fft))`` followed by ``|X|**power``, the mel filterbank and
    ``10*log10(clamp(., min=amin))``; the frames are transformed in chunks on CPU
    (cache friendly, ~3x faster) and all at once on other devices. The window and
    the filterbank are buffers, so ``.to(device)`` moves them.

    ``dtype`` is the precision of the windowing and the FFT (default float64, as
    librosa; see :data:`DEFAULT_FFT_DTYPE`); the mel product and the output are
    float32.

    On CPU it is fastest with one intra-op thread per process
    (``torch.set_num_threads(1)``, as :class:`~birdstack.features.cache.FeatureCache`
    workers run) and processes for parallelism: with several threads on busy cores
    each small op can wait a whole scheduler time slice for a descheduled thread.

    >>> from birdstack.config import SpectrogramConfig
    >>> m = LogMel(SpectrogramConfig(), 32000)
    >>> tuple(m(torch.zeros(2, 1000)).shape)
    (2, 128, 2)
    """

    window: Tensor
    fb: Tensor
    fb_crow: Tensor
    fb_col: Tensor
    fb_val: Tensor

    def __init__(
        self,
        spec: SpectrogramConfig,
        sample_rate: int,
        dtype: torch.dtype = DEFAULT_FFT_DTYPE,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.sample_rate = int(sample_rate)
        self.fft_dtype = dtype
        fb = mel_filterbank(sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax, np.float64)
        self.register_buffer(
            "window", torch.hann_window(spec.n_fft, periodic=True, dtype=dtype), persistent=False
        )
        # The filters are narrow bands (each FFT bin feeds at most two of them): the mel
        # product is a sparse (CSR) x dense product over the bins some filter uses.
        used = np.flatnonzero(fb.any(axis=0))
        lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
        self.bins = (lo, hi)
        dense = torch.from_numpy(np.ascontiguousarray(fb[:, lo:hi], dtype=np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            csr = dense.to_sparse_csr()
        # kept as plain tensors (deepcopy/pickle-safe); the CSR view is built per call.
        # Other devices use the dense filterbank.
        self.register_buffer("fb", dense, persistent=False)
        self.register_buffer("fb_crow", csr.crow_indices(), persistent=False)
        self.register_buffer("fb_col", csr.col_indices(), persistent=False)
        self.register_buffer("fb_val", csr.values(), persistent=False)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"sample_rate={self.sample_rate}, n_fft={s.n_fft}, hop_length={s.hop_length}, "
            f"n_mels={s.n_mels}, fmin={s.fmin}, fmax={s.fmax}, power={s.power}"
        )

    def _filterbank(self) -> Tensor:
        """``[n_mels, bins]`` filters: a sparse CSR tensor on CPU (~2x faster), else dense."""
        if self.fb.device.type != "cpu":
            return self.fb
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(
                self.fb_crow,
                self.fb_col,
                self.fb_val,
                (self.spec.n_mels, self.bins[1] - self.bins[0]),
            )

    def _frames_to_db(self, frames: Tensor, fb: Tensor) -> Tensor:
        """``[..., c, n_fft]`` frames -> ``[..., n_mels, c]`` dB."""
        lo, hi = self.bins
        spec = torch.fft.rfft(frames * self.window, dim=-1)[..., lo:hi]
        re, im = spec.real, spec.imag
        if self.spec.power == 2.0:  # computed in the FFT's precision, stored as float32
            power = torch.empty(re.shape, dtype=fb.dtype, device=re.device)
            torch.addcmul(re * re, im, im, out=power)
        else:
            power = torch.addcmul(re * re, im, im).pow_(self.spec.power / 2.0).to(fb.dtype)
        lead, c = power.shape[:-2], power.shape[-2]
        mel = fb @ power.reshape(-1, hi - lo).T  # [n_mels, prod(lead) * c]
        mel = mel.reshape((self.spec.n_mels, *lead, c)).movedim(0, -2)
        return mel.clamp_(min=self.spec.amin).log10_().mul_(10.0)

    def _framed_db(self, padded: Tensor, chunk: int | None) -> Tensor:
        """Already padded ``[..., L]`` (``L >= n_fft``) -> ``[..., n_mels, F]``."""
        frames = padded.unfold(-1, self.spec.n_fft, self.spec.hop_length)
        total = frames.shape[-2]
        fb = self._filterbank()
        if chunk is None or total <= chunk:
            return self._frames_to_db(frames, fb).contiguous()
        out = frames.new_empty((*frames.shape[:-2], self.spec.n_mels, total), dtype=fb.dtype)
        for i in range(0, total, chunk):  # written in place: no second copy to concatenate
            out[..., i : i + chunk] = self._frames_to_db(frames[..., i : i + chunk, :], fb)
        return out

    def _chunk(self, device: torch.device) -> int | None:
        if device.type != "cpu":
            return None
        # with several intra-op threads every op is a parallel region: fewer, larger ones
        return CPU_CHUNK_FRAMES if torch.get_num_threads() == 1 else 8 * CPU_CHUNK_FRAMES

    def forward(self, wave: Tensor) -> Tensor:
        if wave.ndim not in (1, 2):
            raise ValueError(f"LogMel expects a wave [T] or [B, T], got shape {tuple(wave.shape)}")
        x = wave.to(device=self.window.device)
        if not x.is_floating_point():
            x = x.to(self.window.dtype)
        pad = self.spec.n_fft // 2
        length = x.shape[-1]
        # zero padding at both ends (center=True); at least one frame for any length
        total = max(length + 2 * pad, self.spec.n_fft)
        padded = x.new_empty(x.shape[:-1] + (total,))
        padded[..., :pad] = 0
        padded[..., pad + length :] = 0
        padded[..., pad : pad + length] = x
        return self._framed_db(padded, self._chunk(x.device))

    @torch.no_grad()
    def compute(self, wave: np.ndarray) -> np.ndarray:
        """Log-mel dB ``[n_mels, F]`` float32 of a NumPy wave ``[T]`` (no autograd)."""
        db = self(torch.from_numpy(np.ascontiguousarray(wave)))
        return db.cpu().numpy().astype(np.float32, copy=False)

    @torch.no_grad()
    def stream(self, blocks: Iterable[np.ndarray | Tensor]) -> Tensor:
        """Log-mel of a signal given as consecutive blocks (e.g. :func:`stream_audio`).

        Equals ``self(torch.cat(blocks))`` frame for frame (the blocks are taken as
        float32) while holding only one block at a time plus ``n_fft`` samples, so
        hour-long files fit in memory. Returns ``[n_mels, F]``.
        """
        n_fft, hop, pad = self.spec.n_fft, self.spec.hop_length, self.spec.n_fft // 2
        dev, dt = self.window.device, torch.float32
        buf = torch.zeros(pad, dtype=dt, device=dev)
        outs: list[Tensor] = []
        n_total = 0

        def take(buf: Tensor) -> Tensor:
            n = (buf.shape[0] - n_fft) // hop + 1 if buf.shape[0] >= n_fft else 0
            if n > 0:
                outs.append(self._framed_db(buf[: (n - 1) * hop + n_fft], self._chunk(dev)))
                buf = buf[n * hop :]
            return buf

        for block in blocks:
            b = torch.as_tensor(block).to(dtype=dt, device=dev)
            if b.ndim != 1:
                raise ValueError(f"stream blocks must be 1-D, got shape {tuple(b.shape)}")
            n_total += b.shape[0]
            buf = take(torch.cat([buf, b]))
        buf = take(torch.cat([buf, torch.zeros(pad, dtype=dt, device=dev)]))
        expected = n_frames(n_total, self.spec)
        got = sum(o.shape[-1] for o in outs)
        if got < expected:  # odd n_fft and a very short signal
            tail = torch.nn.functional.pad(buf, (0, n_fft - buf.shape[0]))
            outs.append(self._framed_db(tail, None))
        return torch.cat(outs, dim=-1)


# --------------------------------------------------------------------------- normalisation


def normalize_db(db: Tensor, top_db: float, batched: bool | None = None) -> Tensor:
    """Per input: ``clamp(db - max, min=-top_db) / top_db + 1``, i.e. ``[0, 1]`` with max -> 1.

    The maximum is taken over the whole tensor, or over each item of the first
    dimension when ``batched`` (default: ``db.ndim == 4``, a ``[B, C, M, F]``
    batch; ``[C, M, F]`` and ``[M, F]`` are one input).

    >>> normalize_db(torch.tensor([[-90.0, -20.0, -10.0]]), 80.0)
    tensor([[0.0000, 0.8750, 1.0000]])
    """
    if batched is None:
        batched = db.ndim == 4
    if batched:
        peak = db.reshape(db.shape[0], -1).amax(dim=1).reshape((-1,) + (1,) * (db.ndim - 1))
    else:
        peak = db.amax()
    return (db - peak).clamp(min=-top_db) / top_db + 1.0


# --------------------------------------------------------------------------- convenience


@torch.no_grad()
def compute_logmel(
    wave: np.ndarray,
    spec: SpectrogramConfig,
    sample_rate: int,
    dtype: torch.dtype = DEFAULT_FFT_DTYPE,
) -> np.ndarray:
    """Log-mel dB ``[n_mels, F]`` float32 of a mono wave, on CPU (see :class:`LogMel`).

    The feature cache computes its entries with the same module and
    ``dtype=torch_fft_dtype_for(spec)``; pass that dtype to get the cached training
    features exactly.
    """
    return LogMel(spec, sample_rate, dtype=dtype).compute(wave)


def librosa_logmel(y: np.ndarray, sr: int, spec: SpectrogramConfig) -> np.ndarray:
    """The same log-mel computed by librosa: the reference of the parity tests and benchmark.

    ``librosa.feature.melspectrogram`` (centred frames, zero padding) then
    ``power_to_db`` with ``ref=1`` and no ``top_db`` clipping. Needs librosa (the
    ``dev`` extra); birdstack itself never calls it.

    >>> db = librosa_logmel(np.zeros(32000), 32000, SpectrogramConfig())  # doctest: +SKIP
    """
    import librosa

    mel = librosa.feature.melspectrogram(
        y=y,
        sr=sr,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.fmax,
        power=spec.power,
        center=True,
        pad_mode="constant",
    )
    return librosa.power_to_db(mel, ref=1.0, amin=spec.amin, top_db=None)

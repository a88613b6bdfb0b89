"""The two input encodings: ``stacked`` whole recordings and ``segments`` windows.

Both start from one log-mel spectrogram in dB, ``[n_mels, frames]``, as cached by
:class:`birdstack.features.cache.FeatureCache`, and normalise each model input on
its own (:class:`birdstack.features.melbank.InputNorm`: max -> 1, ``-top_db``
below it -> 0). Padding, where the rules allow it, uses 0 (the floor).

``stacked`` (the study's)::

    >>> import numpy as np
    >>> db = np.random.default_rng(0).normal(size=(128, 3007)).astype("float32")
    >>> x = encode_stacked(db, target_frames=3000, channels=10, norm=InputNorm(top_db=80.0))
    >>> x.shape
    (10, 128, 300)

``segments`` (the BirdCLEF baseline)::

    >>> segment_starts(n_frames=700, window=313, hop=313, min_last=0.5)
    [0, 313]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from birdstack.config import ConfigError
from birdstack.features.melbank import InputNorm


def target_frames_rule(
    frames: Sequence[int], labels: Sequence[str], trim_factor: float, channels: int
) -> int:
    """The study's common length: mean frame count per class, averaged over classes, scaled.

    The result is rounded down to a multiple of ``channels`` so it splits evenly.

    >>> target_frames_rule([100, 300, 1000], ["a", "a", "b"], trim_factor=0.8, channels=10)
    480
    """
    if len(frames) == 0:
        raise ConfigError("no recordings left to compute the stacked target length from")
    per_class: dict[str, list[int]] = defaultdict(list)
    for f, lab in zip(frames, labels, strict=True):
        per_class[lab].append(int(f))
    class_means = [float(np.mean(v)) for v in per_class.values()]
    target = int(np.mean(class_means) * trim_factor)
    target -= target % channels
    if target < channels:
        raise ConfigError(
            f"the stacked target length ({target} frames) is shorter than encoding.channels="
            f"{channels}: use fewer channels or longer recordings"
        )
    return target


def center_trim(db: np.ndarray, target: int) -> np.ndarray:
    """Trim ``[..., frames]`` equally from both ends to ``target`` frames (odd one off the end)."""
    n = db.shape[-1]
    if n <= target:
        return db
    start = (n - target) // 2
    return db[..., start : start + target]


def pad_frames(x: np.ndarray, target: int, value: float = 0.0) -> np.ndarray:
    """Pad ``[..., frames]`` at the end with ``value`` up to ``target`` frames."""
    n = x.shape[-1]
    if n >= target:
        return x
    widths = [(0, 0)] * (x.ndim - 1) + [(0, target - n)]
    return np.pad(x, widths, mode="constant", constant_values=value)


def stack_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """``[n_mels, T]`` -> ``[channels, n_mels, T // channels]``: channel i = i-th time segment."""
    n_mels, t = x.shape
    if t % channels:
        raise ValueError(f"{t} frames do not split into {channels} equal segments")
    return np.ascontiguousarray(x.reshape(n_mels, channels, t // channels).transpose(1, 0, 2))


def encode_stacked(
    db: np.ndarray, target_frames: int, channels: int, norm: InputNorm
) -> np.ndarray:
    """One whole-recording input ``[channels, n_mels, target_frames // channels]``.

    Longer spectrograms are trimmed from both ends, shorter ones padded at the end
    (whether a short recording may be used at all is the caller's rule); ``norm``
    (a band median or PCEN too) is taken over the whole trimmed recording.
    """
    x = norm(center_trim(db, target_frames))
    x = pad_frames(x, target_frames)
    return stack_channels(x, channels)


def segment_starts(n_frames: int, window: int, hop: int, min_last: float) -> list[int]:
    """Start frames of the ``segments`` windows over a spectrogram of ``n_frames``.

    Full windows every ``hop`` frames; then a last partial window when it holds at
    least ``min_last`` of a window (and the end is not covered yet); a recording
    shorter than one window gets one (padded) window at 0.
    """
    if n_frames <= window:
        return [0]
    starts = list(range(0, n_frames - window + 1, hop))
    nxt = starts[-1] + hop
    covered = starts[-1] + window >= n_frames
    if not covered and nxt < n_frames and (n_frames - nxt) >= min_last * window:
        starts.append(nxt)
    return starts


def encode_segment(db: np.ndarray, start: int, window: int, norm: InputNorm) -> np.ndarray:
    """One ``segments`` input ``[1, n_mels, window]`` starting at frame ``start``
    (``norm``, a band median or PCEN too, over the window's own frames, padding
    excluded)."""
    return pad_frames(norm(db[:, start : start + window]), window)[None]

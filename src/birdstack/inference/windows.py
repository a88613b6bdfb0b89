"""Window arithmetic for inference: which spectrogram frames each model input covers.

All rules work on frame indices of one log-mel spectrogram (``hop_length`` samples
per frame) and are split into *regular* windows, which can be emitted as soon as
their frames exist, and *tail* windows, which depend on the total frame count.
That split is what lets :mod:`birdstack.inference.predictor` stream a long file
in blocks and still produce exactly the windows of the in-memory path.

Two rules exist:

``segments`` (:class:`SegmentRule`, same as
:func:`birdstack.features.encoding.segment_starts`): full windows every ``hop``
frames, then one last partial (padded) window when it holds at least
``min_last`` of a window; a spectrogram shorter than one window gets one padded
window at 0::

    >>> SegmentRule(window=100, hop=50, min_last=0.5).starts(260)
    [0, 50, 100, 150, 200]

``centre`` (:class:`CenterRule`, the stacked models' recording rule): one window
in the middle, exactly as training trims a recording; a spectrogram not longer
than one window is scored once (padded)::

    >>> CenterRule(window=100).starts(260)
    [80]

Windows are merged into detections with :func:`merge_detections`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from birdstack.features.encoding import segment_starts

# share of a window that an uncovered tail must exceed to get a window of its own
END_TOLERANCE = 0.05


@dataclass(frozen=True)
class SegmentRule:
    """``segments`` windows: full windows every ``hop``, optional partial last window.

    ``cover_end`` (detection tables): when the end is left uncovered because the last
    partial window would be shorter than ``min_last`` of a window, one more full window
    ends at the last frame, so every part of the recording is in some window; an
    uncovered tail under :data:`END_TOLERANCE` of a window (0.25 s of 5 s: at most the
    centred STFT's extra frame and rounding) is left out.
    """

    window: int
    hop: int
    min_last: float = 0.5
    cover_end: bool = False

    def __post_init__(self) -> None:
        if self.window < 1 or self.hop < 1:
            raise ValueError(f"window={self.window} and hop={self.hop} must be >= 1 frame")

    def regular_until(self, available: int) -> list[int]:
        """Start frames of the full windows that fit in the first ``available`` frames."""
        if available < self.window:
            return []
        return list(range(0, available - self.window + 1, self.hop))

    def starts(self, n_frames: int) -> list[int]:
        """All start frames for a spectrogram of ``n_frames``."""
        starts = segment_starts(n_frames, self.window, self.hop, self.min_last)
        tail = n_frames - (starts[-1] + self.window)
        if self.cover_end and tail > max(1, int(END_TOLERANCE * self.window)):
            starts.append(n_frames - self.window)
        return starts

    def tail(self, n_frames: int) -> list[int]:
        """Start frames that are not regular windows (known only once ``n_frames`` is)."""
        regular = set(self.regular_until(n_frames))
        return [s for s in self.starts(n_frames) if s not in regular]


@dataclass(frozen=True)
class CenterRule:
    """One window of ``window`` frames in the middle (the ``stacked`` training encoding).

    Longer spectrograms lose the same number of frames at both ends (the extra one at
    the end), shorter ones get one window at 0 that the encoder pads, exactly as
    :func:`birdstack.features.encoding.center_trim` does in training. Streaming keeps
    only frames from ``(n - window) // 2`` on (the final middle cannot start earlier),
    so a long file holds about half of its spectrogram.
    """

    window: int

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window={self.window} must be >= 1 frame")

    def regular_until(self, available: int) -> list[int]:
        """No window can be placed before the total length is known."""
        return []

    def starts(self, n_frames: int) -> list[int]:
        """The single, centred start frame."""
        return [max(0, (n_frames - self.window) // 2)]

    def tail(self, n_frames: int) -> list[int]:
        """The centred window, scheduled once the length is known."""
        return self.starts(n_frames)

    def keep_from(self, next_k: int, available: int) -> int:
        """First frame the centred window may still need."""
        return max(0, (available - self.window) // 2)


WindowRule = SegmentRule | CenterRule


def keep_from(rule: WindowRule, next_k: int, available: int) -> int:
    """First frame that windows of ``rule`` not yet scheduled may still need."""
    if isinstance(rule, CenterRule):
        return rule.keep_from(next_k, available)
    return next_k * rule.hop


def seconds_to_frames(seconds: float, sample_rate: int, hop_length: int) -> int:
    """Nearest whole number of spectrogram frames in ``seconds`` (at least 1).

    >>> seconds_to_frames(5.0, 32000, 512)
    312
    """
    return max(1, int(round(seconds * sample_rate / hop_length)))


def frames_for_samples(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT over ``n_samples`` (``1 + n // hop``).

    >>> frames_for_samples(32000, 512)
    63
    """
    return 1 + n_samples // hop_length


def window_times(
    starts: Sequence[int],
    window: int,
    n_frames: int,
    seconds_per_frame: float,
    duration_s: float | None = None,
    span_s: float | None = None,
) -> tuple[list[float], list[float]]:
    """Start and end seconds of windows; ends are clipped to the spectrogram / audio end.

    ``span_s``: each window's length in seconds when it is not ``window`` frames
    (BirdNET windows: 3 s, one "frame" per hop), clipped to ``duration_s`` only.

    >>> window_times([0, 50], 100, 120, 0.01, duration_s=1.19)
    ([0.0, 0.5], [1.0, 1.19])
    >>> window_times([0, 1, 2], 1, 3, 1.5, duration_s=5.0, span_s=3.0)
    ([0.0, 1.5, 3.0], [3.0, 4.5, 5.0])
    """
    end_limit = n_frames * seconds_per_frame
    if span_s is not None:
        end_limit = float("inf")
    if duration_s is not None:
        end_limit = min(end_limit, duration_s)
    begins = [round(s * seconds_per_frame, 6) for s in starts]
    if span_s is not None:
        ends = [round(min(b + span_s, end_limit), 6) for b in begins]
        return begins, ends
    ends = [round(min((s + window) * seconds_per_frame, end_limit), 6) for s in starts]
    return begins, ends


@dataclass(frozen=True)
class Detection:
    """One species in one time span: window ``window`` (or windows ``window..last_window``)."""

    start_s: float
    end_s: float
    species: str
    confidence: float
    window: int = 0
    last_window: int | None = None


def window_detections(
    starts_s: Sequence[float],
    ends_s: Sequence[float],
    probs: Sequence[Sequence[float]],
    classes: Sequence[str],
    top_k: int = 1,
    min_confidence: float = 0.0,
    allowed: Iterable[int] | None = None,
    thresholds: Sequence[float] | None = None,
) -> list[Detection]:
    """Per window, its ``top_k`` species with confidence >= ``min_confidence``.

    ``thresholds`` (multi-label models, one per class): every species whose
    confidence reaches its own threshold (and ``min_confidence``) instead, however
    many. ``allowed`` restricts the species (class indices) considered. Rows are
    ordered by window, then by decreasing confidence (ties: class order).

    >>> window_detections([0.0], [5.0], [[0.9, 0.4, 0.2]], ["a", "b", "c"],
    ...                   thresholds=[0.5, 0.3, 0.3])[1].species
    'b'

    >>> window_detections([0.0, 1.0], [2.0, 3.0], [[0.9, 0.1], [0.4, 0.6]], ["a", "b"])[1]
    Detection(start_s=1.0, end_s=3.0, species='b', confidence=0.6, window=1, last_window=None)
    """
    idx = list(range(len(classes))) if allowed is None else sorted(set(allowed))
    out: list[Detection] = []
    for w, (b, e, row) in enumerate(zip(starts_s, ends_s, probs, strict=True)):
        ranked = sorted(idx, key=lambda k: (-float(row[k]), k))
        if thresholds is None:
            ranked = ranked[:top_k]
        else:
            ranked = [k for k in ranked if float(row[k]) >= float(thresholds[k])]
        for k in ranked:
            if float(row[k]) >= min_confidence:
                out.append(Detection(float(b), float(e), classes[k], float(row[k]), w))
    return out


def merge_detections(detections: Sequence[Detection]) -> list[Detection]:
    """Merge runs of consecutive windows that report the same species into one detection.

    A merged detection spans from its first window's start to its last window's end
    and keeps the highest confidence. Output is ordered by start time, then species.

    >>> d = [Detection(0, 5, "a", 0.6, 0), Detection(2.5, 7.5, "a", 0.9, 1),
    ...      Detection(5, 10, "b", 0.8, 2), Detection(7.5, 12.5, "a", 0.7, 3)]
    >>> [(m.start_s, m.end_s, m.species, m.confidence) for m in merge_detections(d)]
    [(0, 7.5, 'a', 0.9), (5, 10, 'b', 0.8), (7.5, 12.5, 'a', 0.7)]
    """
    by_species: dict[str, list[Detection]] = {}
    for d in detections:
        by_species.setdefault(d.species, []).append(d)
    merged: list[Detection] = []
    for species, items in by_species.items():
        items = sorted(items, key=lambda d: d.window)
        cur = items[0]
        last = cur.window if cur.last_window is None else cur.last_window
        for d in items[1:]:
            if d.window == last + 1:
                last = d.window if d.last_window is None else d.last_window
                cur = Detection(
                    cur.start_s,
                    max(cur.end_s, d.end_s),
                    species,
                    max(cur.confidence, d.confidence),
                    cur.window,
                    last,
                )
            else:
                merged.append(cur)
                cur = d
                last = cur.window if cur.last_window is None else cur.last_window
        merged.append(cur)
    return sorted(merged, key=lambda d: (d.start_s, d.window, d.species))


def n_windows_bound(n_frames: int, window: int, hop: int) -> int:
    """Upper bound on the number of windows over ``n_frames`` (for pre-allocation).

    >>> n_windows_bound(260, 100, 50)
    6
    """
    return max(1, math.ceil(max(0, n_frames - window) / hop) + 2)

"""Window arithmetic of inference: starts, tails, times, detections and merging (no model)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from birdstack.features.encoding import segment_starts
from birdstack.inference.windows import (
    CenterRule,
    Detection,
    SegmentRule,
    merge_detections,
    seconds_to_frames,
    window_detections,
    window_times,
)


def test_segment_rule_is_the_training_rule_with_overlap_and_partial_last_window():
    r = SegmentRule(window=100, hop=50, min_last=0.5)
    assert r.starts(260) == [0, 50, 100, 150, 200]  # 200..260: 60 frames >= 50 -> kept
    assert r.starts(240) == [0, 50, 100, 150]  # tail of 40 frames: already covered
    assert r.starts(40) == [0]  # shorter than a window: one padded window
    assert SegmentRule(100, 100, 0.5).starts(349) == [0, 100, 200]  # 49 < 50: dropped
    assert SegmentRule(100, 100, 0.5).starts(350) == [0, 100, 200, 300]
    for n in range(1, 700, 7):
        for w, h, m in ((100, 50, 0.5), (313, 313, 0.5), (64, 30, 0.25)):
            assert SegmentRule(w, h, m).starts(n) == segment_starts(n, w, h, m)


def test_table_rule_covers_the_end_with_one_more_full_window():
    table = SegmentRule(100, 100, 0.5, cover_end=True)
    assert table.starts(349) == [0, 100, 200, 249]  # 49 frames left: a full window ends there
    assert table.starts(350) == [0, 100, 200, 300]  # a partial window of 50 covers it
    assert table.starts(300) == [0, 100, 200] and table.starts(40) == [0]
    assert table.starts(305) == [0, 100, 200]  # 5 frames: rounding, not worth a window
    assert table.starts(306) == [0, 100, 200, 206]
    assert table.tail(349) == [249] and table.regular_until(349) == [0, 100, 200]
    for n in range(1, 700, 7):
        for w, h, m in ((100, 100, 0.5), (313, 313, 0.5), (64, 30, 0.25), (100, 50, 0.9)):
            starts = SegmentRule(w, h, m, cover_end=True).starts(n)
            covered = np.zeros(n, bool)
            for s in starts:
                covered[s : s + w] = True
            tolerance = max(1, int(0.05 * w))  # every frame is in a window, but a last few
            assert covered[: n - tolerance].all(), (n, w, h, m, starts)
            assert starts == sorted(set(starts))


def test_center_rule_matches_training_trim():
    from birdstack.features.encoding import center_trim

    r = CenterRule(window=100)
    assert r.starts(60) == [0]  # short: one window, padded by the encoder
    for n in range(100, 700, 9):
        x = np.arange(n)[None]
        (s,) = r.starts(n)
        np.testing.assert_array_equal(x[:, s : s + 100], center_trim(x, 100))
        # while streaming, frames before keep_from can never be needed by the final window
        for seen in range(1, n + 1, 37):
            assert r.keep_from(0, seen) <= s


@pytest.mark.parametrize(
    "rule",
    [SegmentRule(100, 50, 0.5), SegmentRule(90, 90, 0.3), CenterRule(100)],
)
def test_regular_and_tail_windows_partition_all_windows(rule):
    """Streaming emits regular windows as frames arrive and the tail at the end: same set."""
    for n in range(1, 600, 11):
        regular = rule.regular_until(n)
        assert all(s + rule.window <= n for s in regular)
        assert sorted(set(regular) | set(rule.tail(n))) == rule.starts(n)
        # regular windows found with fewer frames stay regular windows later
        assert set(rule.regular_until(n // 2)) <= set(regular)


def test_window_times_clip_the_last_window_to_the_audio():
    spf = 512 / 32000
    starts = SegmentRule(312, 156, 0.5).starts(1000)
    b, e = window_times(starts, 312, 1000, spf, duration_s=15.98)
    assert b[:3] == [0.0, 2.496, 4.992]
    assert e[0] == pytest.approx(312 * spf)
    assert e[-1] == 15.98 and b[-1] == pytest.approx(starts[-1] * spf)
    assert seconds_to_frames(5.0, 32000, 512) == 312
    assert seconds_to_frames(0.001, 32000, 512) == 1


def test_detections_top_k_threshold_and_species_subset():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    d = window_detections([0, 5], [5, 10], probs, ["a", "b", "c"], top_k=2, min_confidence=0.25)
    assert [(x.window, x.species) for x in d] == [(0, "a"), (1, "c"), (1, "b")]
    d = window_detections([0, 5], [5, 10], probs, ["a", "b", "c"], top_k=1, allowed=[1])
    assert [(x.window, x.species, x.confidence) for x in d] == [(0, "b", 0.2), (1, "b", 0.3)]


def test_merge_joins_only_consecutive_windows_of_one_species():
    d = [
        Detection(0.0, 5.0, "a", 0.6, 0),
        Detection(2.5, 7.5, "a", 0.9, 1),
        Detection(5.0, 10.0, "a", 0.5, 2),
        Detection(7.5, 12.5, "b", 0.8, 3),
        Detection(10.0, 15.0, "a", 0.7, 4),  # window 3 had no "a": a new detection
    ]
    m = merge_detections(d)
    assert [(x.start_s, x.end_s, x.species, x.confidence) for x in m] == [
        (0.0, 10.0, "a", 0.9),
        (7.5, 12.5, "b", 0.8),
        (10.0, 15.0, "a", 0.7),
    ]
    assert (m[0].window, m[0].last_window) == (0, 2)
    assert merge_detections(m) == m  # merging is idempotent
    assert merge_detections([]) == []


def _centre_scorer(expected: int | None, window: int = 200, table: int = 50) -> Any:
    """A WindowScorer over a centred window and a table rule, with a transparent 'model'."""
    from birdstack.inference.predictor import WindowScorer

    def encode(frames: np.ndarray, length: int) -> np.ndarray:  # what the window holds
        return np.array([frames.sum(), frames[0, 0], frames.shape[1]], np.float64)

    rules = {"rec": (CenterRule(window), window), "win": (SegmentRule(table, table), table)}
    return WindowScorer(
        encode, lambda x: x, rules, 4, lambda x: x, expected_frames=expected, slack=16
    )


def _push_all(scorer: Any, db: np.ndarray, chunk: int = 37) -> int:
    """Push ``db`` in chunks; the largest number of frames the scorer held at once."""
    most = 0
    for i in range(0, db.shape[1], chunk):
        scorer.push(db[:, i : i + chunk])
        most = max(most, scorer._buf.end - scorer._buf.start)
    return most


def test_length_hint_bounds_the_centre_window_memory_and_changes_no_score():
    """With the header's length, a centred window no longer keeps half the spectrogram."""
    from birdstack.inference.predictor import LengthHintError

    n = 5000
    db = np.random.default_rng(0).random((4, n))
    plain, hinted = _centre_scorer(None), _centre_scorer(n)
    held_plain, held_hinted = _push_all(plain, db), _push_all(hinted, db)
    a, b = plain.finish(), hinted.finish()
    for rule in ("rec", "win"):
        assert a[rule][0] == b[rule][0]
        np.testing.assert_array_equal(a[rule][1], b[rule][1])
    start = (n - 200) // 2
    assert a["rec"][1][0][1] == pytest.approx(db[0, start], rel=1e-6)  # the centred window
    assert held_plain > n // 2 - 200  # without the hint: about half of the spectrogram
    assert held_hinted <= 200 + 2 * 16 + 37  # with it: the centre's span (+ slack) and a chunk
    for header in (n - 10, n + 16):  # a header off by no more than the slack (16 frames)
        s = _centre_scorer(header)
        _push_all(s, db)
        np.testing.assert_array_equal(s.finish()["rec"][1], a["rec"][1])
    for header in (n - 400, n + 400):  # a header that lies: an error, not a wrong window
        s = _centre_scorer(header)
        _push_all(s, db)
        with pytest.raises(LengthHintError, match="header"):
            s.finish()

"""Session-grouped, species-stratified folds and the single-session rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from birdstack.data.metadata import load_metadata
from birdstack.data.split import (
    _greedy_group_folds,
    assign_folds,
    session_ids,
    sessions_straddling_folds,
    train_val,
)
from birdstack.utils import BirdstackError


def _random_table(seed: int, n_classes: int = 4, n: int = 120) -> pd.DataFrame:
    """Recordings of ``n_classes`` species from sessions of 1-6 recordings (some shared)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = f"sp{rng.integers(n_classes)}"
        author = f"author{rng.integers(12)}"
        date = f"2020-01-{rng.integers(1, 6):02d}"
        rows.append({"rec_id": f"r{i:03d}", "primary_label": label, "author": author, "date": date})
    return pd.DataFrame(rows)


def test_session_ids() -> None:
    df = pd.DataFrame(
        {
            "rec_id": ["a", "b", "c", "d", "e", "f"],
            "author": ["Ann  Lee", "Ann Lee ", "", "Bo", "Bo", None],
            "date": ["2020-01-01", "2020-01-01", "2020-01-01", "unknown", "0000-00-00", "2020"],
        }
    )
    assert session_ids(df).tolist() == [
        "Ann Lee | 2020-01-01",
        "Ann Lee | 2020-01-01",
        "c",
        "d",
        "e",
        "f",
    ]
    # no author/date columns at all (folder-per-species data): one session per file
    assert session_ids(df[["rec_id"]]).tolist() == list("abcdef")


@pytest.mark.parametrize("n_folds", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sessions_never_straddle_folds(n_folds: int, seed: int) -> None:
    df = _random_table(seed)
    folded, report = assign_folds(df, n_folds=n_folds, seed=seed)
    assert folded.index.equals(df.index)
    assert set(folded["fold"]) == set(range(n_folds))
    assert sessions_straddling_folds(folded) == {}
    assert not report.split_by_file and not report.dropped
    assert sum(report.fold_sizes.values()) == len(df)
    # stratified: every class with enough sessions is in every validation fold
    for label, n in report.sessions_per_class.items():
        if n >= 3 * n_folds:
            assert folded.loc[folded["primary_label"] == label, "fold"].nunique() == n_folds


def test_folds_deterministic_and_order_independent() -> None:
    df = _random_table(7)
    a, _ = assign_folds(df, n_folds=5, seed=3)
    b, _ = assign_folds(df.sample(frac=1, random_state=0), n_folds=5, seed=3)
    assert a["fold"].to_dict() == b.loc[a.index, "fold"].to_dict()
    c, _ = assign_folds(df, n_folds=5, seed=4)
    assert not a["fold"].equals(c["fold"])


def _with_single_session_class(n_single: int = 16) -> pd.DataFrame:
    """Like birds-dev's crotophaga_ani: one class, all recordings from one session."""
    df = _random_table(11, n_classes=3, n=90)
    ani = pd.DataFrame(
        {
            "rec_id": [f"ani{i:02d}" for i in range(n_single)],
            "primary_label": "crotophaga_ani",
            "author": "leanne grieves",
            "date": "2012-10-01",
        }
    )
    return pd.concat([df, ani], ignore_index=True)


def test_single_session_split() -> None:
    df = _with_single_session_class()
    folded, report = assign_folds(df, n_folds=5, seed=0, single_session="split")
    assert report.single_session == ["crotophaga_ani"]
    assert report.split_by_file == ["crotophaga_ani"]
    assert any("crotophaga_ani" in w and "split by file" in w for w in report.warnings)
    ani = folded[folded["primary_label"] == "crotophaga_ani"]
    assert sorted(ani["fold"].value_counts().tolist()) == [3, 3, 3, 3, 4]  # 16 over 5 folds
    # only the class split on purpose straddles folds
    assert list(sessions_straddling_folds(folded)) == ["leanne grieves | 2012-10-01"]
    assert sessions_straddling_folds(folded, exempt=report.split_by_file) == {}


def test_single_session_drop() -> None:
    df = _with_single_session_class()
    folded, report = assign_folds(df, n_folds=5, seed=0, single_session="drop")
    ani_idx = df.index[df["primary_label"] == "crotophaga_ani"]
    assert sorted(report.dropped) == ani_idx.tolist()
    assert all("single session" in r for r in report.dropped.values())
    assert "crotophaga_ani" not in set(folded["primary_label"])
    assert len(folded) == len(df) - len(ani_idx)
    assert sessions_straddling_folds(folded) == {}


def test_single_session_error() -> None:
    df = _with_single_session_class()
    with pytest.raises(BirdstackError) as e:
        assign_folds(df, n_folds=5, seed=0, single_session="error")
    msg = str(e.value)
    assert "crotophaga_ani" in msg and "single_session=split" in msg
    assert "single_session=drop" in msg
    with pytest.raises(BirdstackError, match="use one of split, drop, error"):
        assign_folds(df, single_session="ignore")


def test_few_sessions_warned_and_small_classes_work() -> None:
    # every class smaller than n_folds: scikit-learn refuses, the same greedy runs here
    df = pd.DataFrame(
        {
            "rec_id": [f"r{i}" for i in range(12)],
            "primary_label": ["a"] * 4 + ["b"] * 4 + ["c"] * 4,
            "author": ["x", "x", "y", "z", "u", "v", "w", "t", "s", "q", "p", "o"],
            "date": "2020-01-01",
        }
    )
    folded, report = assign_folds(df, n_folds=5, seed=0)
    assert report.few_sessions == {"a": 3, "b": 4, "c": 4}
    assert any("a: only 3 recording sessions" in w for w in report.warnings)
    assert sessions_straddling_folds(folded) == {}
    # species kept only as negatives (warn_classes leaves them out): split the same, unwarned
    quiet, q_report = assign_folds(df, n_folds=5, seed=0, warn_classes={"b", "c"})
    assert q_report.few_sessions == report.few_sessions
    assert not any(w.startswith("a:") for w in q_report.warnings)
    assert any(w.startswith("b: only 4") for w in q_report.warnings)
    pd.testing.assert_frame_equal(quiet, folded)
    assert set(folded["fold"]) <= set(range(5))
    with pytest.raises(BirdstackError, match="only 3 recording session"):
        assign_folds(df.iloc[:4], n_folds=5)


def test_fallback_matches_scikit_learn() -> None:
    for seed in range(10):
        df = _random_table(seed, n=60)
        y, g = df["primary_label"].to_numpy(), (df["author"] + df["date"]).to_numpy()
        ref = StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(np.zeros(60), y, g)
        ours = _greedy_group_folds(y, g, 5, seed)
        assert [t.tolist() for _, t in ref] == [t.tolist() for _, t in ours]


def test_train_val() -> None:
    folded, _ = assign_folds(_random_table(0), n_folds=4, seed=0)
    train, val = train_val(folded, val_fold=2)
    assert (val["fold"] == 2).all() and (train["fold"] != 2).all()
    assert len(train) + len(val) == len(folded)
    assert not set(train["session"]) & set(val["session"])
    with pytest.raises(BirdstackError, match="val_fold=7 has no recordings"):
        train_val(folded, val_fold=7)
    with pytest.raises(BirdstackError, match="run assign_folds first"):
        train_val(folded.drop(columns="fold"), val_fold=0)


def test_demo_folds(demo_dir: Path) -> None:
    df = load_metadata(demo_dir)
    folded, report = assign_folds(df, n_folds=5, seed=0)
    assert sessions_straddling_folds(folded) == {}
    assert not report.single_session
    # two recordings of one Daniel Lane session share a fold
    lane = folded[folded["session"] == "Daniel Lane | 2009-04-02"]
    assert len(lane) >= 2 and lane["fold"].nunique() == 1
    for label, group in folded.groupby("primary_label"):
        assert group["fold"].nunique() >= 4, label

"""The study's selection rules: top-k species, secondary labels, balancing, label order."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from birdstack.data.metadata import load_metadata
from birdstack.data.selection import (
    balance,
    drop_secondary,
    encode_labels,
    filter_species,
    select_species,
)
from birdstack.utils import BirdstackError


def _table(counts: dict[str, int]) -> pd.DataFrame:
    rows = [
        {"rec_id": f"{label}/r{i:02d}", "primary_label": label, "secondary_labels": []}
        for label, n in counts.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows)


def test_top_k_ties_broken_by_name() -> None:
    df = _table({"d": 5, "c": 3, "b": 3, "a": 1, "e": 3})
    assert select_species(df, top_k=3) == ["d", "b", "c"]
    assert select_species(df.sample(frac=1, random_state=1), top_k=3) == ["d", "b", "c"]
    assert select_species(df, top_k=None) == ["d", "b", "c", "e", "a"]
    assert select_species(df, top_k=10, min_recordings=3) == ["d", "b", "c", "e"]
    assert select_species(df, top_k=2, min_recordings=4) == ["d"]
    with pytest.raises(BirdstackError, match="no species has at least 6"):
        select_species(df, min_recordings=6)


def test_explicit_species_win() -> None:
    df = _table({"a": 5, "b": 1, "c": 2})
    assert select_species(df, top_k=1, species=("b", "c", "b")) == ["b", "c"]
    with pytest.raises(BirdstackError) as e:
        select_species(df, species=["a", "zz_unknown"])
    assert "'zz_unknown'" in str(e.value) and "available: a, b, c" in str(e.value)


def test_filter_species() -> None:
    df = _table({"a": 2, "b": 1})
    kept, dropped = filter_species(df, ["a"])
    assert kept["primary_label"].tolist() == ["a", "a"]
    assert dropped["drop_reason"].tolist() == ["species not selected"]


def test_drop_secondary() -> None:
    df = pd.DataFrame(
        {
            "rec_id": ["r0", "r1", "r2", "r3", "r4"],
            "primary_label": ["a", "a", "b", "b", "c"],
            "secondary_labels": [["a"], ["b", "x"], ["zz"], ["c", "a"], ["a"]],
        },
        index=[10, 11, 12, 13, 14],
    )
    kept, dropped = drop_secondary(df, ["a", "b", "c"])
    assert kept.index.tolist() == [10, 12]  # own label and unknown labels are fine
    assert dropped.index.tolist() == [11, 13, 14]
    assert dropped["drop_reason"].tolist() == [
        "secondary label names kept species b",
        "secondary label names kept species a, c",
        "secondary label names kept species a",
    ]
    kept, dropped = drop_secondary(df, ["b"])
    assert dropped.index.tolist() == [11]
    assert "drop_reason" not in df  # input untouched


def test_balance_caps_and_is_seeded() -> None:
    df = _table({"a": 10, "b": 4, "c": 7})
    kept, dropped = balance(df, seed=0)
    assert kept["primary_label"].value_counts().to_dict() == {"a": 4, "b": 4, "c": 4}
    assert len(dropped) == 9 and set(dropped["drop_reason"]) == {"balance: class capped at 4"}
    assert sorted(kept.index.tolist() + dropped.index.tolist()) == df.index.tolist()
    again, _ = balance(df, seed=0)
    assert kept["rec_id"].tolist() == again["rec_id"].tolist()
    # the row order does not matter, the seed does
    shuffled, _ = balance(df.sample(frac=1, random_state=3), seed=0)
    assert sorted(shuffled["rec_id"]) == sorted(kept["rec_id"])
    others = {tuple(sorted(balance(df, seed=s)[0]["rec_id"])) for s in range(1, 6)}
    assert len(others | {tuple(sorted(kept["rec_id"]))}) > 1
    # already balanced: nothing dropped
    _, none = balance(_table({"a": 3, "b": 3}), seed=0)
    assert none.empty


def test_encode_labels_sorted() -> None:
    assert encode_labels(["vireo", "acro", "coereba", "acro"]) == {
        "acro": 0,
        "coereba": 1,
        "vireo": 2,
    }


def test_study_rules_on_demo(demo_dir: Path) -> None:
    df = load_metadata(demo_dir)
    classes = select_species(df, top_k=6)
    assert classes == sorted(classes) and len(classes) == 6  # all 8 each: ties by name
    kept, dropped = drop_secondary(df, classes)
    assert sorted(dropped["rec_id"]) == [
        "gymnasio_nudipes/XC33690",
        "margarops_fuscatus/XC713827",
    ]
    assert set(dropped["drop_reason"]) == {"secondary label names kept species coereba_flaveola"}
    kept, capped = balance(kept, seed=0)
    assert kept["primary_label"].value_counts().eq(7).all() and len(capped) == 4
    assert list(encode_labels(classes).values()) == list(range(6))

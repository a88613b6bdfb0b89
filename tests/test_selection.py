"""The study's selection rules: top-k species, secondary labels, balancing, label order,
and the guard that stops a selection leaving a class with too few recordings."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from birdstack.config import Config, ConfigError, DataConfig, EncodingConfig
from birdstack.data.metadata import load_metadata
from birdstack.data.prepare import prepare
from birdstack.data.selection import (
    balance,
    check_class_sizes,
    drop_secondary,
    encode_labels,
    filter_species,
    select_species,
)
from birdstack.utils import BirdstackError
from test_reliability import run_cli


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


# ----------------------------------------------------------------------------- the guard


def _prepare(demo_dir: Path, cache_dir: Path, **over):
    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
            "task": {"kind": "multiclass"},  # the single-label task under test
            "preprocessing": {"encoding": {"kind": "stacked"}},  # whose short rule drops
        }
    ).override(over)
    return prepare(cfg.data, cfg.preprocessing, None, progress=False, console=Console(quiet=True))


def test_defaults_pad_and_guard():
    assert EncodingConfig().short == "pad"  # the study's drop is an explicit choice
    assert DataConfig().min_class_recordings == 5
    with pytest.raises(ConfigError, match=r"min_class_recordings=-1: use 0 \(no check\) or more"):
        DataConfig(min_class_recordings=-1)


def test_defaults_keep_every_demo_class(demo_dir, cache_dir):
    p = _prepare(demo_dir, cache_dir)
    assert len(p.classes) == 6 and p.kept["primary_label"].value_counts().eq(7).all()
    assert p.kept["padded"].sum() > 0  # short recordings are padded, not dropped


def test_short_drop_is_the_stacked_rule_and_says_so_elsewhere(demo_dir, cache_dir, caplog):
    """With 5 s segments (the default) a short recording is one padded window, never dropped."""
    over = {"preprocessing.encoding.kind": "auto", "preprocessing.encoding.short": "drop"}
    with caplog.at_level(logging.WARNING, logger="birdstack"):
        p = _prepare(demo_dir, cache_dir, **over)
    assert p.preprocessing.encoding.kind == "segments"
    assert "encoding.short=drop is the stacked encoding's rule" in caplog.text
    assert len(p.classes) == 6 and not p.kept["drop_reason"].str.contains("shorter").any()


def test_guard_names_the_class_its_count_and_the_rules(demo_dir, cache_dir):
    # the study's short=drop without balancing: margarops_fuscatus keeps 4 of its 8
    # recordings (3 shorter than the stacked target, 1 naming coereba_flaveola)
    over = {"preprocessing.encoding.short": "drop", "data.balance": False}
    with pytest.raises(ConfigError) as e:
        _prepare(demo_dir, cache_dir, **over)
    msg = str(e.value)
    assert msg.startswith(
        "too few recordings left: 1 of the 6 selected classes has fewer than 5 "
        "(data.min_class_recordings) after the selection rules:"
    ), msg
    target = _prepare(demo_dir, cache_dir, **over, **{"data.min_class_recordings": 0})
    frames = target.preprocessing.encoding.target_frames
    assert (
        "  margarops_fuscatus: 4 left of 8 (removed: 3 'shorter than the stacked target "
        f"({frames} frames)', 1 'secondary label names a kept species')"
    ) in msg.splitlines()
    for other in ("coereba_flaveola", "vireo_latimeri", "acrocephalus"):
        assert other not in msg  # the classes with enough left are not named
    # what to do: the rules that removed recordings, fewer species, or a lower threshold
    assert "--short pad" in msg and "--keep-secondary" in msg and "--no-balance" not in msg
    assert "--top-k" in msg and "--min-class-recordings N" in msg and "0: no check" in msg
    # 0 turns the guard off: the study's rule as it was (4 recordings of margarops_fuscatus)
    assert target.kept["primary_label"].value_counts()["margarops_fuscatus"] == 4


def test_guard_after_balancing_names_every_capped_class(demo_dir, cache_dir):
    # short=drop with balancing (the study's rules): every class capped at 4
    with pytest.raises(ConfigError) as e:
        _prepare(demo_dir, cache_dir, **{"preprocessing.encoding.short": "drop"})
    msg = str(e.value)
    assert "6 of the 6 selected classes have fewer than 5" in msg
    assert "  acrocephalus_palustris: 4 left of 8 (removed: 4 'balance: class capped at 4')" in msg
    assert "--short pad" in msg and "--no-balance" in msg
    # a higher threshold than the defaults leave (7 per class)
    with pytest.raises(ConfigError, match="vireo_latimeri: 7 left of 8"):
        _prepare(demo_dir, cache_dir, **{"data.min_class_recordings": 8})


def test_guard_through_the_command_line(demo_dir, cache_dir, tmp_path, monkeypatch, caplog):
    argv = ["prepare", "--data", str(demo_dir), "--cache-dir", str(cache_dir), "--workers", "1"]
    argv += ["--encoding", "stacked", "--short", "drop", "--out", str(tmp_path / "prep")]
    argv += ["--no-progress", "--task", "multiclass"]  # the study's single-label rules
    with caplog.at_level(logging.ERROR, logger="birdstack"):
        assert run_cli(argv, monkeypatch) == 2
    assert "too few recordings left" in caplog.text and "margarops_fuscatus: 4 left" in caplog.text
    assert not (tmp_path / "prep" / "manifest.csv").exists()
    assert run_cli([*argv, "--min-class-recordings", "4"], monkeypatch) == 0


def test_guard_on_a_table():
    df = pd.DataFrame(
        {
            "primary_label": ["a"] * 4 + ["b"] * 6 + ["c"] * 2,
            "dropped": [False, True, True, True] + [False] * 6 + [True, True],
            "drop_reason": ["", "unreadable audio: empty file", "file not found", "x"]
            + [""] * 6
            + ["single session: every recording of c ..."] * 2,
        }
    )
    with pytest.raises(ConfigError) as e:
        check_class_sizes(df, ["a", "b", "c"], 2)
    msg = str(e.value)
    assert "  a: 1 left of 4 (removed: 1 'file not found', 1 'unreadable audio', 1 'x')" in msg
    assert "replace the unreadable files" in msg and "add the missing files" in msg
    assert "b:" not in msg and "c:" not in msg  # c: left out on purpose (single_session=drop)
    check_class_sizes(df, ["a", "b", "c"], 1)  # a keeps 1
    check_class_sizes(df, ["a", "b", "c"], 0)  # off

"""Metadata ingest: BirdCLEF folder / CSV / folder-per-species tree, and every bad-input case."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from birdstack.data.metadata import load_metadata, parse_secondary_labels, split_missing
from birdstack.utils import BadInputError

HEADER = "primary_label,secondary_labels,author,date,filename,rating\n"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"OggS")  # content is irrelevant to ingest
    return path


def _birdclef(tmp_path: Path, rows: list[str], files: list[str] = ()) -> Path:
    """A BirdCLEF folder with ``train_metadata.csv`` (HEADER + rows) and empty audio files."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "train_metadata.csv").write_text(HEADER + "".join(r + "\n" for r in rows), "utf-8")
    for f in files:
        _touch(root / "train_audio" / f)
    return root


# --------------------------------------------------------------------------- demo data


def test_demo_folder(demo_dir: Path) -> None:
    df = load_metadata(demo_dir)
    assert len(df) == 48
    assert df["primary_label"].value_counts().to_dict() == {
        s: 8
        for s in (
            "acrocephalus_arundinaceus",
            "acrocephalus_palustris",
            "vireo_latimeri",
            "gymnasio_nudipes",
            "coereba_flaveola",
            "margarops_fuscatus",
        )
    }
    assert list(df.columns[:8]) == [
        "rec_id",
        "path",
        "filename",
        "primary_label",
        "secondary_labels",
        "author",
        "date",
        "exists",
    ]
    assert df["exists"].all() and df["rec_id"].is_unique
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert df.loc[0, "rec_id"] == "acrocephalus_arundinaceus/XC136005"
    assert all(isinstance(v, list) for v in df["secondary_labels"])
    assert "acrocephalus_scirpaceus" in df.loc[0, "secondary_labels"]
    # extra columns kept, numbers parsed; the cut is at most 30 s
    assert {"clip_start_s", "url", "license", "xc_id"} <= set(df.columns)
    assert pd.api.types.is_integer_dtype(df["rating"])
    assert df["duration_s"].max() <= 30.0 and (df["duration_s"] < 30).sum() >= 4
    assert (df["author"] != "").all() and (df["date"] != "").all()


def test_csv_path_equals_folder(demo_dir: Path) -> None:
    a = load_metadata(demo_dir)
    b = load_metadata(demo_dir / "train_metadata.csv")
    pd.testing.assert_frame_equal(a, b)


def test_demo_as_species_tree(demo_dir: Path) -> None:
    tree = load_metadata(demo_dir / "train_audio")
    full = load_metadata(demo_dir)
    assert sorted(tree["rec_id"]) == sorted(full["rec_id"])
    assert (tree["author"] == "").all() and (tree["date"] == "").all()
    assert tree["secondary_labels"].map(len).eq(0).all()


# --------------------------------------------------------------------------- resolution


def test_filename_resolution_variants(tmp_path: Path) -> None:
    root = _birdclef(
        tmp_path,
        [
            "sp_a,[],A,2020-01-01,sp_a/XC1.ogg,5",  # relative to train_audio/
            "sp_a,[],A,2020-01-01,XC2.ogg,5",  # BirdCLEF 2021: train_audio/<label>/XC2.ogg
            "sp_b,[],B,2020-01-02,other/XC3.ogg,4",  # relative to the folder itself
        ],
        files=["sp_a/XC1.ogg", "sp_a/XC2.ogg"],
    )
    _touch(root / "other" / "XC3.ogg")
    df = load_metadata(root)
    assert df["exists"].all()
    assert df["path"].tolist() == [
        str(root / "train_audio/sp_a/XC1.ogg"),
        str(root / "train_audio/sp_a/XC2.ogg"),
        str(root / "other/XC3.ogg"),
    ]
    assert df["rec_id"].tolist() == ["sp_a/XC1", "sp_a/XC2", "other/XC3"]
    assert df["filename"].tolist() == ["sp_a/XC1.ogg", "XC2.ogg", "other/XC3.ogg"]


def test_missing_files_listed_not_raised(tmp_path: Path) -> None:
    root = _birdclef(
        tmp_path,
        ["sp_a,[],A,2020-01-01,sp_a/XC1.ogg,5", "sp_a,[],A,2020-01-01,sp_a/gone.ogg,5"],
        files=["sp_a/XC1.ogg"],
    )
    df = load_metadata(root)
    assert df["exists"].tolist() == [True, False]
    present, missing = split_missing(df)
    assert present["rec_id"].tolist() == ["sp_a/XC1"]
    assert missing["rec_id"].tolist() == ["sp_a/gone"]
    assert missing["drop_reason"].tolist() == ["file not found"]
    assert missing.index.tolist() == [1]


def test_spaces_and_non_ascii_names(tmp_path: Path) -> None:
    name = "Grüner Laubsänger/Aufnahme 01 – Müller é.ogg"
    root = _birdclef(
        tmp_path,
        [f'Grüner Laubsänger,"[\'sp b\']",José Núñez,2021-05-01,"{name}",5'],
        files=[name],
    )
    df = load_metadata(root)
    assert df.loc[0, "exists"]
    assert df.loc[0, "primary_label"] == "Grüner Laubsänger"
    assert df.loc[0, "rec_id"] == "Grüner Laubsänger/Aufnahme 01 – Müller é"
    assert df.loc[0, "secondary_labels"] == ["sp b"]
    assert df.loc[0, "author"] == "José Núñez"
    tree = load_metadata(root / "train_audio")
    assert tree.loc[0, "primary_label"] == "Grüner Laubsänger"
    assert Path(tree.loc[0, "path"]).is_file()


def test_utf8_bom_and_header_case(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _touch(root / "train_audio" / "a" / "x.ogg")
    (root / "train_metadata.csv").write_bytes("\ufeffPrimary_Label,Filename\na,a/x.ogg\n".encode())
    df = load_metadata(root)
    assert df.loc[0, "primary_label"] == "a" and df.loc[0, "exists"]
    assert df.loc[0, "secondary_labels"] == [] and df.loc[0, "author"] == ""


def test_rec_id_keeps_extension_on_collision(tmp_path: Path) -> None:
    for f in ("a/x.ogg", "a/x.wav", "a/y.flac"):
        _touch(tmp_path / f)
    df = load_metadata(tmp_path)
    assert sorted(df["rec_id"]) == ["a/x.ogg", "a/x.wav", "a/y"]


# --------------------------------------------------------------------------- tree


def test_species_tree_nested_and_filters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for f in (
        "sp_a/one.ogg",
        "sp_a/2020/deep/two.MP3",
        "sp_b/three.wav",
        "sp_b/notes.txt",
        "sp_b/.hidden.ogg",
        ".git/x.ogg",
        "loose.flac",
    ):
        _touch(tmp_path / f)
    with caplog.at_level(logging.WARNING, logger="birdstack"):
        df = load_metadata(tmp_path)
    assert df["rec_id"].tolist() == ["sp_a/2020/deep/two", "sp_a/one", "sp_b/three"]
    assert df["primary_label"].tolist() == ["sp_a", "sp_a", "sp_b"]
    assert df["filename"].tolist() == ["sp_a/2020/deep/two.MP3", "sp_a/one.ogg", "sp_b/three.wav"]
    assert df["exists"].all() and (df["author"] == "").all()
    assert "loose.flac" in caplog.text and "no species folder" in caplog.text


def test_empty_tree_is_an_error(tmp_path: Path) -> None:
    _touch(tmp_path / "sp_a" / "readme.txt")
    with pytest.raises(BadInputError, match="no train_metadata.csv and no audio files"):
        load_metadata(tmp_path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such file or folder"):
        load_metadata(tmp_path / "nope")


# --------------------------------------------------------------------------- bad CSVs


def test_missing_required_column(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "train_metadata.csv").write_text("species,file_name\na,a/x.ogg\n", "utf-8")
    with pytest.raises(BadInputError) as e:
        load_metadata(root)
    msg = str(e.value)
    assert str(root / "train_metadata.csv") in msg
    assert "'primary_label'" in msg and "'filename'" in msg
    assert "columns found: 'species', 'file_name'" in msg


def test_non_utf8(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _touch(root / "train_audio" / "a" / "x.ogg")
    text = "primary_label,author,filename\na,Jos\xe9,a/x.ogg\n"
    (root / "train_metadata.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(BadInputError) as e:
        load_metadata(root)
    msg = str(e.value)
    offset = text.encode("latin-1").index(b"\xe9")
    assert "not valid utf-8" in msg and "0xe9" in msg
    assert f"byte offset {offset}" in msg and "line 2, column 6" in msg
    assert "train_metadata.csv" in msg and "UTF-8" in msg
    # reading it as latin-1 on purpose works
    df = load_metadata(root, encoding="latin-1")
    assert df.loc[0, "author"] == "José"


def test_duplicate_rows_keep_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _birdclef(
        tmp_path,
        [
            "sp_a,[],A,2020-01-01,sp_a/XC1.ogg,5",
            "sp_a,[],A,2020-01-01,sp_a/XC2.ogg,5",
            "sp_b,[],B,2020-01-01,sp_a/XC1.ogg,1",
        ],
        files=["sp_a/XC1.ogg", "sp_a/XC2.ogg"],
    )
    with caplog.at_level(logging.WARNING, logger="birdstack"):
        df = load_metadata(root)
    assert df["rec_id"].tolist() == ["sp_a/XC1", "sp_a/XC2"]
    assert df.loc[0, "primary_label"] == "sp_a" and df.loc[0, "rating"] == 5
    assert "'sp_a/XC1.ogg' is listed 2 times (lines 2, 4); keeping line 2" in caplog.text
    assert len(df.attrs["warnings"]) == 1


def test_malformed_secondary_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _birdclef(
        tmp_path,
        [
            "sp_a,\"['sp_b', 'sp_c'\",A,2020-01-01,sp_a/XC1.ogg,5",  # unterminated
            "sp_a,\"['sp_b', 'not_in_data']\",A,2020-01-01,sp_a/XC2.ogg,5",
            'sp_a,"[1, 2]",A,2020-01-01,sp_a/XC3.ogg,5',
            "sp_a,sp_b;sp_c,A,2020-01-01,sp_a/XC4.ogg,5",
            "sp_a,\"__import__('os').system('false')\",A,2020-01-01,sp_a/XC5.ogg,5",
        ],
        files=[f"sp_a/XC{i}.ogg" for i in range(1, 6)],
    )
    with caplog.at_level(logging.WARNING, logger="birdstack"):
        df = load_metadata(root)
    assert df["secondary_labels"].tolist() == [
        [],
        ["sp_b", "not_in_data"],
        [],
        ["sp_b", "sp_c"],
        [],
    ]
    assert "line 2: secondary_labels not a Python list literal" in caplog.text
    assert "line 4: secondary_labels labels must be strings" in caplog.text
    assert "line 6: secondary_labels not a list of labels" in caplog.text


def test_parse_secondary_labels() -> None:
    assert parse_secondary_labels("['a', 'b', 'a']") == ["a", "b"]
    assert parse_secondary_labels(float("nan")) == []
    assert parse_secondary_labels("a, b") == ["a", "b"]
    with pytest.raises(ValueError):
        parse_secondary_labels("{'a': 1}")


@pytest.mark.parametrize(
    "bad",
    ["../../etc/passwd", "sp_a/../../../outside.ogg", "/etc/passwd"],
)
def test_paths_outside_the_folder_are_refused(tmp_path: Path, bad: str) -> None:
    root = _birdclef(
        tmp_path,
        ["sp_a,[],A,2020-01-01,sp_a/XC1.ogg,5", f"sp_a,[],A,2020-01-01,{bad},5"],
        files=["sp_a/XC1.ogg"],
    )
    with pytest.raises(BadInputError) as e:
        load_metadata(root)
    msg = str(e.value)
    assert "line 3" in msg and "outside the data folder" in msg and bad in msg
    assert "train_metadata.csv" in msg


def test_absolute_path_inside_the_folder_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "data"
    inside = _touch(root / "train_audio" / "sp_a" / "XC1.ogg")
    (root / "train_metadata.csv").write_text(f"primary_label,filename\nsp_a,{inside}\n", "utf-8")
    df = load_metadata(root)
    assert df.loc[0, "exists"] and df.loc[0, "rec_id"] == "sp_a/XC1"


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        (["sp_a,[],A,d,sp_a/XC1.ogg,5,extra"], r"line 2: 7 field\(s\), but the header has 6"),
        (["sp_a,[],A,d,sp_a/XC1.ogg,5", ",[],A,d,sp_a/XC2.ogg,5"], r"line\(s\) 3: empty 'prim"),
        (["sp_a,[],A,2020-01-01,,5"], r"line\(s\) 2: empty 'filename'"),
        ([], "no recordings listed"),
    ],
)
def test_bad_rows(tmp_path: Path, rows: list[str], pattern: str) -> None:
    root = _birdclef(tmp_path, rows)
    with pytest.raises(BadInputError, match=pattern):
        load_metadata(root)


def test_empty_csv(tmp_path: Path) -> None:
    csv = tmp_path / "meta.csv"
    csv.write_text("", "utf-8")
    with pytest.raises(BadInputError, match="empty file"):
        load_metadata(csv)


def test_multiline_field_line_numbers(tmp_path: Path) -> None:
    root = _birdclef(
        tmp_path,
        ['sp_a,"[\n]",A,2020-01-01,sp_a/XC1.ogg,5', "sp_a,[],A,2020-01-01,../x.ogg,5"],
        files=["sp_a/XC1.ogg"],
    )
    with pytest.raises(BadInputError, match="line 4"):
        load_metadata(root)

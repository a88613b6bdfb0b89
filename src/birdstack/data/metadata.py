"""Read recording metadata into one normalised table.

Four layouts are accepted by :func:`load_metadata`:

1. a BirdCLEF-style folder: ``train_metadata.csv`` plus the audio under ``train_audio/``
   (or ``train_short_audio/``); ``filename`` is resolved against ``train_audio/``, then
   ``train_audio/<primary_label>/`` (BirdCLEF 2021 lists bare ``XC1234.ogg``), then the
   folder itself;
2. the path of such a CSV file itself (any name);
3. a plain folder-per-species tree ``<root>/<species>/**/<file>.ogg`` (also ``mp3``,
   ``wav``, ``flac``, ...): the label is the name of the top-level folder, files may sit
   at any depth below it; author and date are unknown. A folder holding only
   ``train_audio/<species>/...`` (no CSV) is read as a tree rooted at ``train_audio``;
4. annotated soundscapes: a folder with ``annotations.csv`` (``filename,start_s,end_s,
   label[,taxon]``) or Raven Pro selection tables beside the audio: one row per audio
   file, its events in an ``events`` column (:mod:`birdstack.data.annotations`).

The result has one row per recording with the columns ``rec_id`` (unique: the file's
path relative to the audio root, POSIX separators, without extension, e.g.
``vireo_latimeri/XC9423``; it may contain ``/``, so hash it before using it as a
file name), ``path`` (absolute), ``filename`` (as listed / relative to the tree root),
``primary_label``, ``secondary_labels`` (``list[str]``), ``author``, ``date`` (``""`` when
unknown), ``exists`` (whether the file is there), then every other CSV column unchanged
(numeric columns parsed as numbers)::

    >>> df = load_metadata("data/birds-demo")  # doctest: +SKIP
    >>> df.loc[0, ["rec_id", "primary_label", "exists"]].tolist()  # doctest: +SKIP
    ['acrocephalus_arundinaceus/XC136005', 'acrocephalus_arundinaceus', True]

Decisions on bad input (every message names the CSV file, and the line where it can):

* a required column (``primary_label``, ``filename``) missing, a row with an empty
  one, a row with the wrong number of fields, or a file that is not UTF-8 (the byte,
  its offset, line and column are named; there is no silent latin-1 fallback, since
  that can garble names without anyone noticing — pass ``encoding=`` to read another
  encoding on purpose) -> :class:`~birdstack.utils.BadInputError`;
* a ``filename`` that points outside the data folder (``../x.ogg``, an absolute path
  elsewhere) -> refused with :class:`~birdstack.utils.BadInputError`: a metadata file
  that reaches outside its folder is more likely wrong (or hostile) than meant, and
  skipping it quietly would hide that. Symbolic links *inside* the folder are followed;
* the same ``filename`` listed twice -> the first row is kept, a warning names the lines;
* a ``secondary_labels`` value that is not a list (``"['a', 'b'"``) -> a warning names
  the line and the value is read as ``[]``. Values are parsed with
  :func:`ast.literal_eval` (never ``eval``); plain text such as ``"a b"`` or ``"a;b"`` is
  split on commas, semicolons and spaces (text with brackets, braces or quotes that is
  not a list literal is malformed). Labels outside the data set are fine;
* files that do not exist -> kept, with ``exists == False``, so :func:`split_missing` /
  ``prepare`` can report them as dropped ("file not found").

Warnings are logged (logger ``birdstack.data``) and also kept in ``df.attrs["warnings"]``.
"""

from __future__ import annotations

import ast
import csv
import io
import os
import re
import unicodedata
from pathlib import Path, PurePosixPath

import pandas as pd

from birdstack.features.audio import AUDIO_EXTENSIONS
from birdstack.utils import BadInputError, get_logger

log = get_logger("data")

METADATA_CSV = "train_metadata.csv"
AUDIO_DIRS = ("train_audio", "train_short_audio")
REQUIRED_COLUMNS = ("primary_label", "filename")
OPTIONAL_STRING_COLUMNS = ("secondary_labels", "author", "date")
BASE_COLUMNS = [
    "rec_id",
    "path",
    "filename",
    "primary_label",
    "secondary_labels",
    "author",
    "date",
    "exists",
]


def load_metadata(path: str | os.PathLike[str], encoding: str = "utf-8") -> pd.DataFrame:
    """One normalised row per recording from a BirdCLEF folder, its CSV, or a species tree.

    ``encoding`` applies to the CSV (a UTF-8 byte-order mark is accepted). See the module
    docstring for the layouts, the columns and what happens with bad input.
    """
    root = Path(path).expanduser()
    if root.is_file():
        return _load_csv(root, encoding)
    if not root.is_dir():
        raise BadInputError(root, "no such file or folder (give a data folder or its CSV file)")
    if (root / METADATA_CSV).is_file():
        return _load_csv(root / METADATA_CSV, encoding)
    from birdstack.data.annotations import is_soundscape_folder, load_soundscapes

    if is_soundscape_folder(root):  # 4. annotated soundscapes (annotations.csv / Raven tables)
        return load_soundscapes(root)
    for name in AUDIO_DIRS:
        if (root / name).is_dir():
            return _load_tree(root / name)
    return _load_tree(root)


def split_missing(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(present, missing)``; missing rows get ``drop_reason = "file not found"``."""
    exists = df["exists"].astype(bool)
    missing = df[~exists].copy()
    missing["drop_reason"] = "file not found"
    return df[exists].copy(), missing


def parse_secondary_labels(value: object) -> list[str]:
    """A ``secondary_labels`` cell as a list of labels; raises ``ValueError`` if malformed.

    >>> parse_secondary_labels("['a_b', 'c_d']")
    ['a_b', 'c_d']
    >>> parse_secondary_labels("")
    []
    >>> parse_secondary_labels("a_b; c_d")
    ['a_b', 'c_d']
    """
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        text = str(value).strip()
        if text in ("", "[]", "nan", "None"):
            return []
        if text[0] in "[(\"'":
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                raise ValueError(f"not a Python list literal: {text!r}") from None
            if isinstance(parsed, str):
                parsed = [parsed]
            if not isinstance(parsed, (list, tuple)):
                raise ValueError(f"expected a list of labels, got {text!r}")
            items = list(parsed)
        elif re.search(r"[\[\](){}'\"]", text):
            raise ValueError(f"not a list of labels: {text!r}")
        else:
            items = re.split(r"[,;\s]+", text)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"labels must be strings, got {item!r}")
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return out


# --------------------------------------------------------------------------- CSV


def _decode(csv_path: Path, encoding: str) -> str:
    raw = csv_path.read_bytes()
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        bad = raw[e.start : e.end].hex(" ")
        raise BadInputError(
            csv_path,
            f"not valid {encoding}: byte(s) 0x{bad} at byte offset {e.start} (line {line}, "
            f"column {col}); save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 "
            f"{csv_path.name} > fixed.csv`)",
        ) from None
    except LookupError:
        raise BadInputError(csv_path, f"unknown text encoding {encoding!r}") from None


def _read_rows(csv_path: Path, text: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows and the line number where each row starts (csv module, exact lines)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    try:
        start = 1
        for row in reader:
            if header is None:
                header = [h.strip() for h in row]
            elif any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise BadInputError(csv_path, f"line {reader.line_num}: not valid CSV ({e})") from None
    if not header or not any(header):
        raise BadInputError(csv_path, "empty file: expected a header line with column names")
    return header, rows, lines


def _check_header(csv_path: Path, header: list[str]) -> list[str]:
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise BadInputError(csv_path, f"column {h!r} appears twice in the header")
        seen.add(h)
    header = list(header)
    lower = {h.lower(): i for i, h in enumerate(header)}
    for name in (*REQUIRED_COLUMNS, *OPTIONAL_STRING_COLUMNS):
        if name not in header and name in lower:
            header[lower[name]] = name  # e.g. "Primary_Label" -> "primary_label"
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        found = ", ".join(repr(h) for h in header)
        raise BadInputError(
            csv_path,
            f"missing required column(s) {', '.join(repr(m) for m in missing)} "
            f"(columns found: {found}); the metadata needs at least 'primary_label' "
            "(the species) and 'filename' (the audio file, relative to train_audio/)",
        )
    return header


def _contained(root: Path, candidate: str) -> bool:
    """Whether ``candidate`` (lexically normalised, absolute) lies inside ``root``."""
    try:
        return os.path.commonpath([str(root), candidate]) == str(root)
    except ValueError:
        return False


def _nfc_nfd(path: Path) -> Path:
    """``path``, or its other Unicode normal form if only that one exists (macOS names)."""
    if path.exists():
        return path
    for form in ("NFC", "NFD"):
        alt = Path(unicodedata.normalize(form, str(path)))
        if alt.exists():
            return alt
    return path


def _resolve(
    csv_path: Path, root: Path, audio_dirs: list[Path], filename: str, label: str, line: int
) -> tuple[Path, bool, PurePosixPath]:
    """Absolute path of a listed file, whether it exists, and its path relative to ``root``.

    Paths that leave ``root`` (after lexical normalisation) are refused.
    """
    by_label = [] if "/" in label or "\\" in label or label in (".", "..") else audio_dirs
    bases = [*audio_dirs, *(d / label for d in by_label), root]
    candidates = [Path(os.path.normpath(b / filename)) for b in bases]
    outside = [c for c in candidates if not _contained(root, str(c))]
    if outside:
        raise BadInputError(
            csv_path,
            f"line {line}: filename {filename!r} points outside the data folder {root}; "
            "list audio files relative to train_audio/ inside that folder "
            "(or move the files there)",
        )
    for c in candidates:
        found = _nfc_nfd(c)
        if found.is_file():
            return found, True, PurePosixPath(c.relative_to(root))
    return candidates[0], False, PurePosixPath(candidates[0].relative_to(root))


def _numeric(col: pd.Series) -> pd.Series:
    """The column as numbers when every non-empty cell is one, else unchanged."""
    blank = col.str.strip() == ""
    if blank.all():
        return col
    try:
        num = pd.to_numeric(col.where(~blank, None))
    except (ValueError, TypeError):
        return col
    return num


def _load_csv(csv_path: Path, encoding: str) -> pd.DataFrame:
    csv_path = Path(os.path.abspath(csv_path))
    root = csv_path.parent
    text = _decode(csv_path, encoding)
    header, rows, lines = _read_rows(csv_path, text)
    header = _check_header(csv_path, header)
    if not rows:
        raise BadInputError(csv_path, "no recordings listed (only a header line)")
    for row, line in zip(rows, lines):
        if len(row) != len(header):
            raise BadInputError(
                csv_path,
                f"line {line}: {len(row)} field(s), but the header has {len(header)}; "
                "quote values that contain commas",
            )
    clash = [c for c in header if c in ("rec_id", "path", "exists")]
    if clash:
        warnings_early = [
            f"{csv_path}: column(s) {', '.join(clash)} are computed by birdstack; "
            "the values in the file are ignored"
        ]
        keep = [i for i, c in enumerate(header) if c not in clash]
        header = [header[i] for i in keep]
        rows = [[r[i] for i in keep] for r in rows]
    else:
        warnings_early = []
    df = pd.DataFrame(rows, columns=header, dtype=object)
    for c in header:
        df[c] = df[c].astype(str)
    df["_line"] = lines

    warnings: list[str] = warnings_early
    for name in REQUIRED_COLUMNS:
        empty = df[name].str.strip() == ""
        if empty.any():
            where = ", ".join(str(n) for n in df.loc[empty, "_line"].head(5))
            raise BadInputError(csv_path, f"line(s) {where}: empty {name!r}; every row needs one")
    df["filename"] = df["filename"].str.strip()
    df["primary_label"] = df["primary_label"].str.strip()

    dup = df["filename"].duplicated(keep="first")
    if dup.any():
        for fname, grp in df[df["filename"].isin(df.loc[dup, "filename"])].groupby(
            "filename", sort=False
        ):
            ls = grp["_line"].tolist()
            warnings.append(
                f"{csv_path}: {fname!r} is listed {len(ls)} times (lines "
                f"{', '.join(map(str, ls))}); keeping line {ls[0]}"
            )
        df = df[~dup]

    audio_dirs = [root / d for d in AUDIO_DIRS if (root / d).is_dir()] or [root / AUDIO_DIRS[0]]
    resolved = [
        _resolve(csv_path, root, audio_dirs, f, lab, ln)
        for f, lab, ln in zip(df["filename"], df["primary_label"], df["_line"])
    ]
    df["path"] = [str(p) for p, _, _ in resolved]
    df["exists"] = [e for _, e, _ in resolved]

    if "secondary_labels" in df:
        parsed = []
        for value, line in zip(df["secondary_labels"], df["_line"]):
            try:
                parsed.append(parse_secondary_labels(value))
            except ValueError as e:
                warnings.append(f"{csv_path}: line {line}: secondary_labels {e}; read as []")
                parsed.append([])
        df["secondary_labels"] = parsed
    else:
        df["secondary_labels"] = [[] for _ in range(len(df))]
    for name in ("author", "date"):
        df[name] = df[name].str.strip() if name in df else ""

    df["rec_id"] = _rec_ids([r for _, _, r in resolved])
    # the audio-folder prefix is not part of the id: "train_audio/a/XC1.ogg" -> "a/XC1"
    df["rec_id"] = df["rec_id"].str.replace(r"^(?:" + "|".join(AUDIO_DIRS) + r")/", "", regex=True)
    extras = [c for c in header if c not in BASE_COLUMNS]
    for c in extras:
        if c not in ("primary_label", "filename", *OPTIONAL_STRING_COLUMNS):
            df[c] = _numeric(df[c])
    df = df[BASE_COLUMNS + extras].reset_index(drop=True)
    return _finish(df, warnings)


# --------------------------------------------------------------------------- tree


def _load_tree(root: Path) -> pd.DataFrame:
    root = Path(os.path.abspath(root))
    files: list[Path] = []
    stray: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symbolic-link loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            if p.parent == root:
                stray.append(name)
            else:
                files.append(p)
    if not files:
        exts = ", ".join(sorted(AUDIO_EXTENSIONS))
        raise BadInputError(
            root,
            f"no {METADATA_CSV} and no audio files in species folders "
            f"(<species>/<file> with extension {exts}); give a BirdCLEF folder, its CSV, "
            "or a folder with one sub-folder per species",
        )
    warnings = []
    if stray:
        warnings.append(
            f"{root}: {len(stray)} audio file(s) directly in the root have no species folder "
            f"and are ignored (e.g. {stray[0]!r})"
        )
    rel = sorted(PurePosixPath(p.relative_to(root)) for p in files)
    df = pd.DataFrame(
        {
            "rec_id": _rec_ids(rel),
            "path": [str(root / r) for r in rel],
            "filename": [str(r) for r in rel],
            "primary_label": [r.parts[0] for r in rel],
            "secondary_labels": [[] for _ in rel],
            "author": "",
            "date": "",
            "exists": True,
        }
    )
    return _finish(df, warnings)


# --------------------------------------------------------------------------- shared


def _rec_ids(rel: list[PurePosixPath]) -> list[str]:
    """Relative path without extension; the extension is kept where that would collide."""
    ids = [str(r.with_suffix("")) for r in rel]
    counts = pd.Series(ids).value_counts()
    return [str(r) if counts[i] > 1 else i for i, r in zip(ids, rel)]


def _finish(df: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    df["exists"] = df["exists"].astype(bool)
    for w in warnings:
        log.warning(w)
    missing = int((~df["exists"]).sum())
    if missing:
        log.warning("%d of %d listed audio files do not exist", missing, len(df))
    df.attrs["warnings"] = warnings
    return df

"""Time-stamped annotations: soundscapes whose events say who sings when.

Two formats are read into one events table (columns ``file``, ``start_s``, ``end_s``,
``label``, ``taxon``):

* a CSV with ``filename,start_s,end_s,label`` (other columns allowed; an optional
  ``taxon`` column, as in NIPS4Bplus: ``bird``, ``insect``, ``amphibian``, ``human``,
  ``unknown``), ``filename`` relative to the CSV's folder (:func:`read_events_csv`);
* Raven Pro selection tables (tab-separated; ``Begin Time (s)``, ``End Time (s)``, the
  label in ``Species``, ``Annotation``, ``Label``, ``Class`` or ``Sound Type``; the audio
  file from ``Begin File`` / ``Begin Path``, else from the table's own name,
  ``<audio stem>.<anything>.txt`` beside the audio) (:func:`read_raven`).

Only events of target taxa (``bird``; without a ``taxon`` column: every label but
:data:`NON_TARGET_LABELS`) become training targets. The others stay in the table,
so a rule can see them (a window with only a cicada is a negative, not unlabelled).

:func:`window_targets` is the documented rule from events to window labels: an event
labels a window when they overlap by at least ``min(min_overlap_s,
min_overlap_frac x event length)`` seconds, and by more than nothing (an event of no
length, start = end, labels the window it falls in)::

    >>> ev = pd.DataFrame({"start_s": [0.9, 4.95], "end_s": [1.1, 5.05],
    ...                    "label": ["a", "b"], "taxon": ["bird", "bird"]})
    >>> window_targets(ev, [0.0, 5.0], 5.0, ["a", "b"]).tolist()
    [[1.0, 1.0], [0.0, 1.0]]

The 0.1 s event of ``b`` that straddles the edge at 5 s lies half in each window, so it
labels both; ``a`` lies inside the first.

:func:`load_soundscapes` turns a folder of annotated audio into the metadata table
of :func:`birdstack.data.metadata.load_metadata`, one row per audio file, with its
events (JSON) in an ``events`` column; a file without events is an empty soundscape
(all negative).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from birdstack.utils import BadInputError

EVENT_COLUMNS = ["file", "start_s", "end_s", "label", "taxon"]
TARGET_TAXA = frozenset({"bird"})
# labels that are never a species target when the table has no taxon column
NON_TARGET_LABELS = frozenset(
    {"unknown", "noise", "nocall", "human", "insect", "amphibian", "mammal", "rain", "wind", ""}
)
ANNOTATIONS_CSV = "annotations.csv"
RAVEN_LABEL_COLUMNS = ("Species", "Annotation", "Label", "Class", "Sound Type", "species")
RAVEN_FILE_COLUMNS = ("Begin File", "Begin Path", "File", "Begin file")


def _taxon(label: str, taxon: str | None) -> str:
    if taxon is not None and str(taxon).strip() and str(taxon).lower() != "nan":
        return str(taxon).strip().lower()
    return str(label).lower() if str(label).lower() in NON_TARGET_LABELS else "bird"


def _check_times(path: Path, line: int, start: str, end: str) -> tuple[float, float]:
    try:
        a, b = float(start), float(end)
    except (TypeError, ValueError):
        raise BadInputError(
            path, f"line {line}: start/end {start!r}, {end!r} are not numbers of seconds"
        ) from None
    if not (np.isfinite(a) and np.isfinite(b)) or a < 0 or b < a:
        raise BadInputError(
            path, f"line {line}: an event must have 0 <= start <= end (got {a:g} .. {b:g} s)"
        )
    return a, b


def read_events_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Events from a ``filename,start_s,end_s,label[,taxon]`` CSV; ``file`` made absolute."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInputError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.DictReader(io.StringIO(text))
    need = ("filename", "start_s", "end_s", "label")
    missing = [c for c in need if c not in (reader.fieldnames or [])]
    if missing:
        raise BadInputError(
            path,
            f"missing column(s) {', '.join(missing)}; an annotation CSV needs "
            "filename,start_s,end_s,label (and optionally taxon)",
        )
    rows = []
    for n, r in enumerate(reader, start=2):
        if None in r:
            raise BadInputError(path, f"line {n}: more fields than the header has")
        fname = (r["filename"] or "").strip()
        if not fname:
            raise BadInputError(path, f"line {n}: empty filename")
        a, b = _check_times(path, n, r["start_s"], r["end_s"])
        target = Path(os.path.normpath(path.parent / fname))
        if path.parent not in target.parents:
            raise BadInputError(path, f"line {n}: filename {fname!r} points outside {path.parent}")
        label = (r["label"] or "").strip()
        rows.append((str(target), a, b, label, _taxon(label, r.get("taxon"))))
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def _raven_audio(table: Path, row: dict[str, str], audio_dir: Path | None) -> str:
    for col in RAVEN_FILE_COLUMNS:
        if row.get(col):
            name = row[col].strip().replace("\\", "/")
            p = Path(name)
            if p.is_absolute() and p.exists():
                return str(p)
            return str(Path(os.path.normpath((audio_dir or table.parent) / p.name)))
    stem = table.name.split(".")[0]
    folder = audio_dir or table.parent
    from birdstack.features.audio import AUDIO_EXTENSIONS

    for ext in sorted(AUDIO_EXTENSIONS):
        if (folder / f"{stem}{ext}").is_file():
            return str(folder / f"{stem}{ext}")
    raise BadInputError(
        table,
        f"no 'Begin File' column and no audio file named {stem}.<ext> beside the table: "
        "cannot tell which recording these selections belong to",
    )


def read_raven(path: str | os.PathLike[str], audio_dir: str | Path | None = None) -> pd.DataFrame:
    """Events from one Raven Pro selection table (see the module docstring)."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInputError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    fields = reader.fieldnames or []
    if "Begin Time (s)" not in fields or "End Time (s)" not in fields:
        raise BadInputError(
            path, "not a Raven selection table: no 'Begin Time (s)' / 'End Time (s)' columns"
        )
    label_col = next((c for c in RAVEN_LABEL_COLUMNS if c in fields), None)
    if label_col is None:
        raise BadInputError(
            path, f"no label column (one of {', '.join(RAVEN_LABEL_COLUMNS)}) in the table"
        )
    adir = Path(audio_dir).resolve() if audio_dir is not None else None
    rows = []
    for n, r in enumerate(reader, start=2):
        if r.get("View", "").startswith("Waveform"):  # Raven lists each selection per view
            continue
        a, b = _check_times(path, n, r["Begin Time (s)"], r["End Time (s)"])
        label = (r[label_col] or "").strip()
        rows.append((_raven_audio(path, r, adir), a, b, label, _taxon(label, r.get("Taxon"))))
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def is_raven_table(path: Path) -> bool:
    """A ``.txt`` file whose first line has Raven's time columns."""
    if path.suffix.lower() != ".txt" or not path.is_file():
        return False
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        head = fh.readline()
    return "Begin Time (s)" in head and "\t" in head


def read_annotations(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Events from an annotation CSV, a Raven table, or every Raven table in a folder."""
    p = Path(path)
    if p.is_dir():
        tables = sorted(t for t in p.rglob("*.txt") if is_raven_table(t))
        if not tables:
            return pd.DataFrame(columns=EVENT_COLUMNS)
        return pd.concat([read_raven(t) for t in tables], ignore_index=True)
    if not p.is_file():
        raise BadInputError(p, "no such annotation file")
    if p.suffix.lower() == ".csv":
        return read_events_csv(p)
    return read_raven(p)


def is_soundscape_folder(root: Path) -> bool:
    """A folder with ``annotations.csv`` or Raven selection tables (and no BirdCLEF CSV)."""
    if (root / ANNOTATIONS_CSV).is_file():
        return True
    return any(is_raven_table(t) for t in root.glob("*.txt")) or any(
        is_raven_table(t) for t in root.glob("*/*.txt")
    )


def window_targets(
    events: pd.DataFrame,
    starts: Sequence[float] | np.ndarray,
    window_s: float,
    classes: Sequence[str],
    min_overlap_s: float = 0.1,
    min_overlap_frac: float = 0.5,
) -> np.ndarray:
    """``[len(starts), len(classes)]`` 0/1 targets of windows ``[start, start + window_s)``.

    An event of a target taxon labels a window when their overlap is more than 0 and at
    least ``min(min_overlap_s, min_overlap_frac * (end - start))`` seconds; events of
    other taxa and labels outside ``classes`` are ignored.
    """
    starts = np.asarray(starts, dtype=np.float64)
    out = np.zeros((len(starts), len(classes)), dtype=np.float32)
    if events is None or len(events) == 0 or len(starts) == 0:
        return out
    index = {c: i for i, c in enumerate(classes)}
    ev = events[events["taxon"].isin(TARGET_TAXA) & events["label"].isin(index)]
    if ev.empty:
        return out
    a = ev["start_s"].to_numpy(np.float64)
    b = ev["end_s"].to_numpy(np.float64)
    col = ev["label"].map(index).to_numpy()
    ends = starts + window_s
    overlap = np.minimum(b[None, :], ends[:, None]) - np.maximum(a[None, :], starts[:, None])
    need = np.minimum(min_overlap_s, min_overlap_frac * (b - a))[None, :]
    hit = (overlap > 0) & (overlap >= need - 1e-9)
    point = (b == a)[None, :]  # an instant (start == end) labels the window it falls in
    hit |= point & (a[None, :] >= starts[:, None]) & (a[None, :] < ends[:, None])
    for j in range(len(col)):
        out[hit[:, j], col[j]] = 1.0
    return out


def events_json(events: pd.DataFrame) -> str:
    """One file's events as compact JSON ``[[start, end, label, taxon], ...]`` (by start)."""
    ev = events.sort_values(["start_s", "end_s"], kind="stable")
    rows = [
        [round(float(a), 4), round(float(b), 4), str(lab), str(tax)]
        for a, b, lab, tax in zip(ev["start_s"], ev["end_s"], ev["label"], ev["taxon"])
    ]
    return json.dumps(rows, separators=(",", ":"))


def parse_events(value: object) -> pd.DataFrame:
    """The ``events`` column of a manifest row back into an events table (no ``file``)."""
    cols = ["start_s", "end_s", "label", "taxon"]
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return pd.DataFrame(columns=cols)
    rows = json.loads(str(value))
    return pd.DataFrame(rows, columns=cols)


def has_events(value: object) -> bool:
    """Whether a manifest row is an annotated soundscape (its ``events`` cell is set)."""
    return isinstance(value, str) and value.startswith("[")


def target_labels(events: pd.DataFrame) -> list[str]:
    """A file's target species, most events first (ties: the earliest)."""
    ev = events[events["taxon"].isin(TARGET_TAXA)]
    if ev.empty:
        return []
    first = ev.groupby("label")["start_s"].min()
    counts = ev["label"].value_counts()
    return sorted(counts.index, key=lambda lab: (-counts[lab], first[lab], lab))


def load_soundscapes(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Metadata rows (``load_metadata``'s columns plus ``events``) for annotated audio.

    Every audio file under ``root`` is a row; its primary label is the species with
    most events, the others are its secondary labels; ``events`` holds all of its
    events, target taxa or not. A file named by the annotations but missing gets
    ``exists=False``.
    """
    from birdstack.data.metadata import BASE_COLUMNS
    from birdstack.features.audio import find_audio_files

    root = Path(root).resolve()
    if (root / ANNOTATIONS_CSV).is_file():
        events = read_events_csv(root / ANNOTATIONS_CSV)
    else:
        events = read_annotations(root)
    audio = sorted(p.resolve() for p in find_audio_files(root))
    by_file = {f: g for f, g in events.groupby("file", sort=False)}
    files = list(dict.fromkeys([str(p) for p in audio] + list(by_file)))
    empty = pd.DataFrame(columns=EVENT_COLUMNS)
    rows = []
    for f in files:
        ev = by_file.get(f, empty)
        labels = target_labels(ev)
        rel = Path(f).relative_to(root) if Path(f).is_relative_to(root) else Path(Path(f).name)
        rows.append(
            {
                "rec_id": rel.with_suffix("").as_posix(),
                "path": f,
                "filename": rel.as_posix(),
                "primary_label": labels[0] if labels else "",
                "secondary_labels": labels[1:],
                "author": "",
                "date": "",
                "exists": Path(f).is_file(),
                "events": events_json(ev),
            }
        )
    if not rows:
        raise BadInputError(root, "no audio files and no annotated events found")
    df = pd.DataFrame(rows)
    return df[[*BASE_COLUMNS, "events"]]


def _negatives_metadata(d: Path) -> dict[Path, tuple[list[str], str, str]]:
    """Species, author and date of each file a ``data.negatives`` folder's own metadata
    lists: a BirdCLEF folder (its ``train_metadata.csv``), or its audio folder
    (``train_audio/`` beside the CSV). Empty for a folder without one."""
    from birdstack.data.metadata import AUDIO_DIRS, METADATA_CSV, load_metadata
    from birdstack.data.prepare import row_labels  # primary + secondary labels

    if (d / METADATA_CSV).is_file():
        root = d
    elif d.name in AUDIO_DIRS and (d.parent / METADATA_CSV).is_file():
        root = d.parent
    else:
        return {}
    meta = load_metadata(root)
    return {
        Path(str(path)).resolve(): (species, str(author or ""), str(date or ""))
        for path, species, author, date in zip(
            meta["path"], row_labels(meta), meta["author"], meta["date"], strict=True
        )
    }


def load_negatives(folders: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Metadata rows for folders of audio with no target species (``data.negatives``).

    Each row's ``negative_species`` lists the species the folder says the file holds:
    from the folder's own metadata (a BirdCLEF folder or its ``train_audio/``; its author
    and date then group the file's session in the folds too), else the name of the
    subfolder it lies in (a folder per species). ``prepare`` leaves out the files of a
    selected species: they are no negatives. Files in the folder's top level name none.
    """
    from birdstack.data.metadata import BASE_COLUMNS
    from birdstack.features.audio import find_audio_files

    rows = []
    for folder in folders:
        d = Path(folder).expanduser().resolve()
        if not d.is_dir():
            raise BadInputError(d, "data.negatives: no such folder")
        found = find_audio_files(d)
        if not found:
            raise BadInputError(d, "data.negatives: no audio files in this folder")
        listed = _negatives_metadata(d)
        for p in found:
            rel = p.relative_to(d)
            species, author, date = listed.get(
                p.resolve(), ([rel.parts[0]] if len(rel.parts) > 1 else [], "", "")
            )
            rows.append(
                {
                    "rec_id": f"negatives/{d.name}/{rel.with_suffix('').as_posix()}",
                    "path": str(p),
                    "filename": rel.as_posix(),
                    "primary_label": "",
                    "secondary_labels": [],
                    "author": author,
                    "date": date,
                    "exists": True,
                    "events": "[]",
                    "negative": True,
                    "negative_species": species,
                }
            )
    return pd.DataFrame(rows, columns=[*BASE_COLUMNS, "events", "negative", "negative_species"])


def file_number(path: str) -> int | None:
    """The last number in a file's name (``nips4b_train006_insect.ogg`` -> 6), or None."""
    import re

    found = re.findall(r"\d+", Path(path).stem)
    return int(found[-1]) if found else None

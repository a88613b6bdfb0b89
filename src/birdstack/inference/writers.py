"""Prediction results and the files they are written to (CSV, Raven selection tables, JSON).

A :class:`Prediction` holds one recording's scores: recording-level probabilities and a
per-window table. :class:`OutputOptions` says what to report (top-k, minimum confidence,
merging, a species subset). The renderers return text; writing (atomically) and
resuming are :class:`PredictionWriter`'s job::

    >>> import numpy as np
    >>> p = Prediction("a.wav", 10.0, ["x_y", "z_w"], np.array([0.8, 0.2]),
    ...                np.array([0.0, 5.0]), np.array([5.0, 10.0]),
    ...                np.array([[0.9, 0.1], [0.3, 0.7]]))
    >>> print(detections_csv([record(p, OutputOptions())]), end="")
    file,start_s,end_s,species,scientific_name,confidence
    a.wav,0.000,5.000,x_y,X y,0.9000
    a.wav,5.000,10.000,z_w,Z w,0.7000

Files in an output folder::

    detections.csv                         file,start_s,end_s,species,scientific_name,confidence
    recordings.csv                         file,rank,species,confidence
    predictions.json                       every recording's top-k and detections (--format json)
    raven/<dir>/<stem>.BirdStack.selection.table.txt   one Raven Pro table per recording
    .parts/<dir>/<stem>.json               per-recording results (what makes a rerun resume)

A ``--shard K/N`` run writes its recordings' ``raven/`` tables and ``.parts/`` into the
same folder and its combined files into ``shards/K-of-N/``; ``birdstack merge``
writes the combined files of all shards (see :mod:`birdstack.inference.shards`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdstack.inference.windows import Detection, merge_detections, window_detections
from birdstack.utils import atomic_write_json, atomic_write_text, stable_hash

FORMATS = ("csv", "raven", "json")
RAVEN_SUFFIX = ".BirdStack.selection.table.txt"
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Species",
    "Confidence",
)
PART_VERSION = 1


def scientific_name(label: str, mapping: Mapping[str, str] | None = None) -> str:
    """Scientific name of a class label: from ``mapping`` when it has one, else from the label.

    >>> scientific_name("acrocephalus_arundinaceus")
    'Acrocephalus arundinaceus'
    >>> scientific_name("comkin1", {"comkin1": "Alcedo atthis"})
    'Alcedo atthis'
    """
    if mapping and label in mapping:
        return mapping[label]
    words = label.replace("_", " ").replace("-", " ").split()
    if not words:
        return label
    return " ".join([words[0].capitalize(), *(w.lower() for w in words[1:])])


@dataclass
class Prediction:
    """One recording's scores.

    ``probs`` ``[K]``: recording-level probabilities (the documented recording rule);
    ``starts_s``/``ends_s`` ``[W]`` and ``window_probs`` ``[W, K]``: the per-window table.
    """

    file: str
    duration_s: float
    classes: list[str]
    probs: np.ndarray
    starts_s: np.ndarray
    ends_s: np.ndarray
    window_probs: np.ndarray

    def top(self, k: int = 5, allowed: Iterable[int] | None = None) -> list[tuple[str, float]]:
        """The ``k`` most probable species ``(label, probability)``, highest first."""
        idx = range(len(self.classes)) if allowed is None else sorted(set(allowed))
        ranked = sorted(idx, key=lambda i: (-float(self.probs[i]), i))[:k]
        return [(self.classes[i], float(self.probs[i])) for i in ranked]

    def detections(self, opts: OutputOptions) -> list[Detection]:
        """Window detections under ``opts`` (top-k per window, threshold, merge)."""
        dets = window_detections(
            self.starts_s.tolist(),
            self.ends_s.tolist(),
            self.window_probs,
            self.classes,
            top_k=opts.top_k,
            min_confidence=opts.min_confidence,
            allowed=opts.allowed_indices(self.classes),
            thresholds=opts.thresholds,
        )
        return merge_detections(dets) if opts.merge else dets


@dataclass(frozen=True)
class OutputOptions:
    """What the output files report.

    ``thresholds`` (multi-label checkpoints, one per class): each window reports
    every species at or above its threshold instead of its ``top_k``.
    """

    top_k: int = 1
    min_confidence: float = 0.0
    merge: bool = False
    species: tuple[str, ...] | None = None
    scientific_names: Mapping[str, str] = field(default_factory=dict)
    fmin: float = 0.0
    fmax: float = 16000.0
    formats: tuple[str, ...] = ("csv",)
    thresholds: tuple[float, ...] | None = None

    def allowed_indices(self, classes: Sequence[str]) -> list[int] | None:
        """Class indices allowed by ``species`` (``None``: all)."""
        if self.species is None:
            return None
        keep = set(self.species)
        return [i for i, c in enumerate(classes) if c in keep]

    def settings(self) -> dict[str, Any]:
        """Plain values that decide the written results (for resume checks)."""
        return {
            "top_k": self.top_k,
            "min_confidence": self.min_confidence,
            "merge": self.merge,
            "species": list(self.species) if self.species is not None else None,
            "scientific_names": dict(sorted(self.scientific_names.items())),
            "fmin": self.fmin,
            "fmax": self.fmax,
            "formats": sorted(self.formats),
            "thresholds": list(self.thresholds) if self.thresholds is not None else None,
        }


def record(pred: Prediction, opts: OutputOptions) -> dict[str, Any]:
    """The JSON-ready result of one recording: its top-k species and its detections."""
    names = opts.scientific_names
    top = [
        {
            "rank": r,
            "species": s,
            "scientific_name": scientific_name(s, names),
            "confidence": round(c, 6),
        }
        for r, (s, c) in enumerate(pred.top(opts.top_k, opts.allowed_indices(pred.classes)), 1)
    ]
    dets = [
        {
            "start_s": round(d.start_s, 3),
            "end_s": round(d.end_s, 3),
            "species": d.species,
            "scientific_name": scientific_name(d.species, names),
            "confidence": round(d.confidence, 6),
        }
        for d in pred.detections(opts)
    ]
    return {
        "file": pred.file,
        "duration_s": round(float(pred.duration_s), 3),
        "n_windows": len(pred.starts_s),
        "top": top,
        "detections": dets,
    }


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def detections_csv(records: Iterable[Mapping[str, Any]]) -> str:
    """``file,start_s,end_s,species,scientific_name,confidence``, one row per detection."""
    rows = (
        (
            r["file"],
            f"{d['start_s']:.3f}",
            f"{d['end_s']:.3f}",
            d["species"],
            d["scientific_name"],
            f"{d['confidence']:.4f}",
        )
        for r in records
        for d in r["detections"]
    )
    return _csv_text(("file", "start_s", "end_s", "species", "scientific_name", "confidence"), rows)


def recordings_csv(records: Iterable[Mapping[str, Any]]) -> str:
    """``file,rank,species,confidence``: each recording's top-k species."""
    rows = (
        (r["file"], t["rank"], t["species"], f"{t['confidence']:.4f}")
        for r in records
        for t in r["top"]
    )
    return _csv_text(("file", "rank", "species", "confidence"), rows)


def raven_table(rec: Mapping[str, Any], fmin: float, fmax: float) -> str:
    """A Raven Pro selection table (tab-separated) for one recording's detections.

    ``Low Freq``/``High Freq`` are the model's mel range; ``View`` is ``Spectrogram 1``.
    """
    lines = ["\t".join(RAVEN_COLUMNS)]
    dets = sorted(rec["detections"], key=lambda d: (d["start_s"], d["end_s"], d["species"]))
    for i, d in enumerate(dets, 1):
        lines.append(
            "\t".join(
                (
                    str(i),
                    "Spectrogram 1",
                    "1",
                    f"{d['start_s']:.3f}",
                    f"{d['end_s']:.3f}",
                    f"{fmin:.1f}",
                    f"{fmax:.1f}",
                    d["species"],
                    f"{d['confidence']:.4f}",
                )
            )
        )
    return "\n".join(lines) + "\n"


def predictions_json(records: Sequence[Mapping[str, Any]], model: Mapping[str, Any]) -> str:
    """All recordings as one JSON document ``{"model": ..., "recordings": [...]}``."""
    return json.dumps({"model": dict(model), "recordings": list(records)}, indent=2) + "\n"


# --------------------------------------------------------------------------- folder writer


def source_stamp(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and modification time of an input file (a changed file is predicted again)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class PredictionWriter:
    """Writes per-recording results into ``out_dir`` and rebuilds the combined files.

    Each recording has a *key* (its path relative to the input root, without suffix).
    :meth:`done` says whether a complete, up-to-date result already exists (resume);
    :meth:`write` writes the recording's Raven table (if asked) and then its part file,
    last, so a part file means the recording is complete; :meth:`finish` rebuilds
    ``detections.csv``, ``recordings.csv`` and ``predictions.json`` from all part files
    of this run.
    """

    def __init__(
        self, out_dir: str | os.PathLike[str], opts: OutputOptions, model: Mapping[str, Any]
    ) -> None:
        self.out = Path(out_dir)
        self.opts = opts
        self.model = dict(model)
        self.settings_hash = stable_hash({"options": opts.settings(), "model": self.model})

    def part_path(self, key: str) -> Path:
        return self.out / ".parts" / f"{key}.json"

    def raven_path(self, key: str) -> Path:
        return self.out / "raven" / f"{key}{RAVEN_SUFFIX}"

    def done(self, key: str, source: str | os.PathLike[str] | None) -> bool:
        """Whether ``key`` already has a complete result for the same settings and input."""
        part = self.part_path(key)
        if not part.is_file():
            return False
        try:
            meta = json.loads(part.read_text(encoding="utf-8")).get("_resume", {})
        except (OSError, json.JSONDecodeError):
            return False
        if meta.get("version") != PART_VERSION or meta.get("settings") != self.settings_hash:
            return False
        if source is not None and meta.get("source") != source_stamp(source):
            return False
        return "raven" not in self.opts.formats or self.raven_path(key).is_file()

    def write(self, key: str, pred: Prediction, source: str | os.PathLike[str] | None) -> None:
        """Write one recording's outputs (Raven table, then its part file)."""
        rec = record(pred, self.opts)
        if "raven" in self.opts.formats:
            atomic_write_text(
                self.raven_path(key), raven_table(rec, self.opts.fmin, self.opts.fmax)
            )
        meta = {
            "version": PART_VERSION,
            "settings": self.settings_hash,
            "source": source_stamp(source) if source is not None else None,
        }
        atomic_write_json(self.part_path(key), {**rec, "_resume": meta})

    def load(self, key: str, settings: str | None = None) -> dict[str, Any]:
        """A recording's stored result (without the resume block).

        With ``settings`` (a settings hash), a result written with other settings raises
        :class:`ValueError`.
        """
        rec = json.loads(self.part_path(key).read_text(encoding="utf-8"))
        meta = rec.pop("_resume", None) or {}
        if settings is not None and meta.get("settings") != settings:
            raise ValueError(f"{self.part_path(key)} was written with other settings")
        return rec

    def finish(self, keys: Sequence[str], dest: str | os.PathLike[str] | None = None) -> list[Path]:
        """Rebuild the combined files from the part files of ``keys``; returns the files written.

        ``dest``: the folder of the combined files (default: the output folder; a
        ``--shard`` run puts its own into ``shards/K-of-N/``).
        """
        return self.write_combined(self.records(keys), dest)

    def records(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """The stored results of ``keys`` that have a part file, in order."""
        return [self.load(k) for k in keys if self.part_path(k).is_file()]

    def write_combined(
        self, records: Sequence[Mapping[str, Any]], dest: str | os.PathLike[str] | None = None
    ) -> list[Path]:
        """Write ``detections.csv``/``recordings.csv``/``predictions.json`` of ``records``."""
        folder = self.out if dest is None else Path(dest)
        written: list[Path] = []
        if "csv" in self.opts.formats:
            for name, text in (
                ("detections.csv", detections_csv(records)),
                ("recordings.csv", recordings_csv(records)),
            ):
                atomic_write_text(folder / name, text)
                written.append(folder / name)
        if "json" in self.opts.formats:
            atomic_write_text(folder / "predictions.json", predictions_json(records, self.model))
            written.append(folder / "predictions.json")
        return written

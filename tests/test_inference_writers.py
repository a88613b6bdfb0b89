"""Output formats against golden files (tests/golden/), and the resume bookkeeping.

Regenerate the golden files after a deliberate format change with
``BIRDSTACK_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_inference_writers.py`` and review
the diff.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from birdstack.inference.writers import (
    OutputOptions,
    Prediction,
    PredictionWriter,
    raven_table,
    record,
    scientific_name,
)

GOLDEN = Path(__file__).parent / "golden"
CLASSES = ["acrocephalus_arundinaceus", "coereba_flaveola", "vireo_latimeri"]


def _predictions() -> list[tuple[str, Prediction]]:
    a = Prediction(
        file="site1/XC100.ogg",
        duration_s=12.3456,
        classes=CLASSES,
        probs=np.array([0.55, 0.35, 0.10]),
        starts_s=np.array([0.0, 2.5, 5.0, 7.5, 10.0]),
        ends_s=np.array([5.0, 7.5, 10.0, 12.3456, 12.3456]),
        window_probs=np.array(
            [
                [0.80, 0.15, 0.05],
                [0.60, 0.30, 0.10],
                [0.20, 0.70, 0.10],
                [0.45, 0.45, 0.10],
                [0.05, 0.05, 0.90],
            ]
        ),
    )
    b = Prediction(
        file="site2/night one.wav",
        duration_s=3.0,
        classes=CLASSES,
        probs=np.array([0.1, 0.2, 0.7]),
        starts_s=np.array([0.0]),
        ends_s=np.array([3.0]),
        window_probs=np.array([[0.1, 0.2, 0.7]]),
    )
    return [("site1/XC100", a), ("site2/night_one", b)]


def _options(**kw) -> OutputOptions:
    base = dict(
        top_k=2,
        min_confidence=0.25,
        merge=True,
        scientific_names={"vireo_latimeri": "Vireo latimeri (Baird, 1866)"},
        fmin=50.0,
        fmax=14000.0,
        formats=("csv", "raven", "json"),
    )
    base.update(kw)
    return OutputOptions(**base)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BIRDSTACK_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"golden file {path} missing (set BIRDSTACK_UPDATE_GOLDEN=1)"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


def test_all_formats_match_golden_files(tmp_path):
    model = {"checkpoint": "best.ckpt", "model": "mobilenet_compact", "window_s": 5.0}
    w = PredictionWriter(tmp_path, _options(), model)
    for key, pred in _predictions():
        w.write(key, pred, None)
    written = w.finish([k for k, _ in _predictions()])
    assert {p.name for p in written} == {"detections.csv", "recordings.csv", "predictions.json"}
    _check_golden("detections.csv", (tmp_path / "detections.csv").read_text())
    _check_golden("recordings.csv", (tmp_path / "recordings.csv").read_text())
    _check_golden("predictions.json", (tmp_path / "predictions.json").read_text())
    raven = tmp_path / "raven/site1/XC100.BirdStack.selection.table.txt"
    _check_golden("XC100.BirdStack.selection.table.txt", raven.read_text())
    assert (tmp_path / "raven/site2/night_one.BirdStack.selection.table.txt").is_file()


def test_golden_files_are_well_formed():
    rows = list(csv.DictReader(io.StringIO((GOLDEN / "detections.csv").read_text())))
    assert list(rows[0]) == ["file", "start_s", "end_s", "species", "scientific_name", "confidence"]
    # merged: windows 0-1 report acrocephalus (0.80, 0.60), window 2-3 coereba (0.70, 0.45)
    first = rows[0]
    assert (first["start_s"], first["end_s"], first["confidence"]) == ("0.000", "7.500", "0.8000")
    assert first["scientific_name"] == "Acrocephalus arundinaceus"
    assert "Vireo latimeri (Baird, 1866)" in {r["scientific_name"] for r in rows}
    assert all(float(r["confidence"]) >= 0.25 for r in rows)
    rec = list(csv.DictReader(io.StringIO((GOLDEN / "recordings.csv").read_text())))
    assert list(rec[0]) == ["file", "rank", "species", "confidence"]
    assert [r["rank"] for r in rec] == ["1", "2", "1", "2"]
    table = (GOLDEN / "XC100.BirdStack.selection.table.txt").read_text().splitlines()
    head = table[0].split("\t")
    assert head == [
        "Selection",
        "View",
        "Channel",
        "Begin Time (s)",
        "End Time (s)",
        "Low Freq (Hz)",
        "High Freq (Hz)",
        "Species",
        "Confidence",
    ]
    for i, line in enumerate(table[1:], 1):
        cells = line.split("\t")
        assert cells[:3] == [str(i), "Spectrogram 1", "1"]
        assert (cells[5], cells[6]) == ("50.0", "14000.0")
        assert float(cells[3]) < float(cells[4])
    doc = json.loads((GOLDEN / "predictions.json").read_text())
    assert [r["file"] for r in doc["recordings"]] == ["site1/XC100.ogg", "site2/night one.wav"]


def test_without_merge_every_window_is_reported():
    _, pred = _predictions()[0]
    rec = record(pred, _options(merge=False, top_k=1, min_confidence=0.0))
    assert [(d["start_s"], d["species"]) for d in rec["detections"]] == [
        (0.0, "acrocephalus_arundinaceus"),
        (2.5, "acrocephalus_arundinaceus"),
        (5.0, "coereba_flaveola"),
        (7.5, "acrocephalus_arundinaceus"),  # a tie: the first class wins
        (10.0, "vireo_latimeri"),
    ]
    only = record(pred, _options(species=("coereba_flaveola",), min_confidence=0.0, merge=False))
    assert {d["species"] for d in only["detections"]} == {"coereba_flaveola"}
    assert [t["species"] for t in only["top"]] == ["coereba_flaveola"]
    empty = raven_table({"detections": []}, 50.0, 14000.0)
    assert empty.count("\n") == 1  # header only: still a valid table


def test_scientific_names_from_labels():
    assert scientific_name("acrocephalus_arundinaceus") == "Acrocephalus arundinaceus"
    assert scientific_name("Parus-major") == "Parus major"
    assert scientific_name("x", {"x": "Y z"}) == "Y z"


def test_resume_requires_same_settings_and_same_input(tmp_path):
    src = tmp_path / "in.wav"
    src.write_bytes(b"0" * 10)
    key, pred = _predictions()[1]
    w = PredictionWriter(tmp_path / "out", _options(), {"checkpoint": "a"})
    assert not w.done(key, src)
    w.write(key, pred, src)
    assert w.done(key, src)
    assert not PredictionWriter(tmp_path / "out", _options(top_k=3), {"checkpoint": "a"}).done(
        key, src
    )
    assert not PredictionWriter(tmp_path / "out", _options(), {"checkpoint": "b"}).done(key, src)
    w.raven_path(key).unlink()  # an incomplete result is predicted again
    assert not w.done(key, src)
    w.write(key, pred, src)
    src.write_bytes(b"1" * 11)  # the input changed
    assert not w.done(key, src)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_only_requested_formats_are_written(tmp_path, fmt):
    w = PredictionWriter(tmp_path, _options(formats=(fmt,)), {})
    for key, pred in _predictions():
        w.write(key, pred, None)
    names = {p.name for p in w.finish([k for k, _ in _predictions()])}
    assert names == ({"detections.csv", "recordings.csv"} if fmt == "csv" else {"predictions.json"})
    assert not (tmp_path / "raven").exists()

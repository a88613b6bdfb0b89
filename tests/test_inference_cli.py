"""``birdstack predict`` / ``birdstack export`` on folders with good and bad files."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from birdstack.cli.main import EXIT_CONFIG, EXIT_OK, EXIT_SKIPPED, build_parser
from test_inference_helpers import synthetic_song, write_wav

pytestmark = pytest.mark.xdist_group("inference")
# session fixtures (checkpoints trained once, the ONNX export): one instance for all modules
pytest_plugins = ["test_inference_helpers"]


def _run(argv: list[str]) -> int:
    """Run a command like ``main`` does, without replacing the test's log handlers."""
    from birdstack.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError:
        return EXIT_CONFIG


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_dir) -> Path:
    """Two real recordings, three odd-but-valid WAV/FLAC files and two unusable files."""
    d = tmp_path_factory.mktemp("soundscapes")
    files = sorted(demo_dir.glob("train_audio/*/*.ogg"))
    for sub, f in (("site_a", files[0]), ("site_b", files[20])):
        (d / sub).mkdir()
        shutil.copy(f, d / sub / f.name)
    song = synthetic_song(9.0, seed=4)
    import soxr

    write_wav(d / "odd" / "rate8k.wav", soxr.resample(song, 32000, 8000), 8000, "PCM_16")
    write_wav(d / "odd" / "rate96k.wav", soxr.resample(song, 32000, 96000), 96000, "PCM_24")
    write_wav(d / "odd" / "stereo.flac", np.stack([song, 0.5 * song], 1), 32000, "PCM_16")
    (d / "bad").mkdir()
    (d / "bad" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" * 10)
    (d / "bad" / "empty.ogg").write_bytes(b"")
    (d / "notes.txt").write_text("not audio, not an audio extension: ignored\n")
    return d


GOOD = {"rate8k", "rate96k", "stereo"}


def test_folder_with_bad_files_processes_the_rest_and_resumes(
    stacked_run,
    folder,
    tmp_path,
    caplog,
):
    out = tmp_path / "out"
    argv = ["predict", str(stacked_run.checkpoint), str(folder), "--out", str(out), "--no-progress"]
    argv += ["--format", "csv", "raven", "json", "--window-s", "5", "--hop-s", "2.5"]
    argv += ["--min-confidence", "0", "--top-k", "2"]
    with caplog.at_level(logging.WARNING, logger="birdstack"):
        assert _run(argv) == EXIT_SKIPPED
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 2
    assert any("broken.wav" in m and "not a recognised audio format" in m for m in skipped)
    assert any("empty.ogg" in m and "empty file" in m for m in skipped)

    det = _rows(out / "detections.csv")
    stems = {Path(r["file"]).stem for r in det}
    assert stems >= GOOD and len(stems) == 5
    assert not any("broken" in s or "empty" in s for s in stems)
    rec = _rows(out / "recordings.csv")
    assert len(rec) == 5 * 2
    doc = json.loads((out / "predictions.json").read_text())
    assert len(doc["recordings"]) == 5 and doc["model"]["window_s"] == pytest.approx(4.992)
    by_stem = {Path(r["file"]).stem: r for r in doc["recordings"]}
    assert by_stem["rate8k"]["duration_s"] == pytest.approx(9.0, abs=1e-3)
    assert by_stem["rate96k"]["duration_s"] == pytest.approx(9.0, abs=1e-3)
    ravens = sorted((out / "raven").rglob("*.BirdStack.selection.table.txt"))
    assert len(ravens) == 5
    assert (out / "raven/odd/stereo.BirdStack.selection.table.txt").is_file()

    # a rerun resumes: nothing is predicted again, the combined files are rebuilt the same
    parts = {p: p.stat().st_mtime_ns for p in (out / ".parts").rglob("*.json")}
    before = (out / "detections.csv").read_text()
    (out / "detections.csv").unlink()
    assert _run([*argv, "--on-error", "skip"]) == EXIT_OK
    assert {p: p.stat().st_mtime_ns for p in parts} == parts
    assert (out / "detections.csv").read_text() == before

    # a recording whose result is incomplete is predicted again, the others are not
    victim = out / "raven/odd/rate8k.BirdStack.selection.table.txt"
    victim.unlink()
    assert _run([*argv, "--on-error", "skip"]) == EXIT_OK
    assert victim.is_file()
    changed = [p for p, t in parts.items() if p.stat().st_mtime_ns != t]
    assert [p.name for p in changed] == ["rate8k.json"]


def test_species_list_and_merge(stacked_run, folder, tmp_path):
    from birdstack.training.checkpoint import load_checkpoint

    classes = load_checkpoint(stacked_run.checkpoint)["birdstack"]["classes"]
    wanted = [classes[1].replace("_", " ").capitalize(), classes[3]]  # scientific name or label
    lst = tmp_path / "species.txt"
    lst.write_text("# my site\n" + "\n".join(wanted) + "\n\n")
    out = tmp_path / "out"
    argv = ["predict", str(stacked_run.checkpoint), str(folder / "odd"), "--out", str(out)]
    argv += ["--no-progress", "--species-list", str(lst), "--min-confidence", "0", "--top-k", "1"]
    argv += ["--window-s", "3", "--hop-s", "1.5"]
    assert _run(argv) == EXIT_OK
    det = _rows(out / "detections.csv")
    assert {r["species"] for r in det} <= {classes[1], classes[3]}
    assert {r["species"] for r in _rows(out / "recordings.csv")} <= {classes[1], classes[3]}
    per_file = len([r for r in det if r["file"].endswith("stereo.flac")])
    # 9 s: full 3 s windows at 0, 1.5, 3, 4.5 and a partial one at 6 (more than half a window)
    assert per_file == 5

    merged_out = tmp_path / "merged"
    argv[argv.index(str(out))] = str(merged_out)
    assert _run([*argv, "--merge"]) == EXIT_OK
    merged = [r for r in _rows(merged_out / "detections.csv") if r["file"].endswith("stereo.flac")]
    assert 1 <= len(merged) < per_file
    spans = sorted((float(r["start_s"]), float(r["end_s"])) for r in merged)
    assert spans[0][0] == 0.0 and max(e for _, e in spans) == pytest.approx(9.0, abs=0.02)

    lst.write_text("passer_domesticus\n")
    assert _run(argv) == EXIT_CONFIG


def test_export_then_predict_with_the_onnx_file(stacked_run, onnx_model, folder, tmp_path, caplog):
    onnx_path = onnx_model  # written by `birdstack export`
    common = [str(folder / "site_a"), "--no-progress", "--min-confidence", "0", "--top-k", "3"]
    ckpt = str(stacked_run.checkpoint)
    with caplog.at_level(logging.INFO, logger="birdstack"):
        assert _run(["predict", ckpt, *common, "--out", str(tmp_path / "t")]) == EXIT_OK
    # a single-label model warns that it cannot report "none of my species"
    said = [r for r in caplog.records if "single-label model" in r.getMessage()]
    assert said and all(r.levelno == logging.WARNING for r in said)
    argv = ["predict", str(onnx_path), *common, "--out", str(tmp_path / "o"), "--threads", "1"]
    assert _run(argv) == EXIT_OK
    a, b = _rows(tmp_path / "t/recordings.csv"), _rows(tmp_path / "o/recordings.csv")
    assert [r["species"] for r in a] == [r["species"] for r in b]
    assert max(abs(float(x["confidence"]) - float(y["confidence"])) for x, y in zip(a, b)) <= 1e-4


def test_nothing_to_predict_is_reported(stacked_run, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    argv = ["predict", str(stacked_run.checkpoint), str(tmp_path / "empty_dir")]
    argv += [str(tmp_path / "missing.wav"), "--out", str(tmp_path / "o"), "--no-progress"]
    assert _run(argv) == EXIT_SKIPPED


def test_info_describes_a_checkpoint_and_its_onnx_export(trained_run, onnx_model, tmp_path, capsys):
    import pandas as pd

    from birdstack.inference.model_info import model_info
    from birdstack.training.checkpoint import build_model_from_checkpoint, load_checkpoint
    from birdstack.utils import BadInputError

    ckpt = load_checkpoint(trained_run.checkpoint)
    net, saved = build_model_from_checkpoint(ckpt)
    info = model_info(trained_run.checkpoint)
    assert info.kind == "checkpoint" and info.task == "multiclass"
    assert info.classes == saved.classes and info.model == "mobilenet_compact"
    assert info.parameters == sum(p.numel() for p in net.parameters())
    assert info.input_shape == saved.preprocessing.input_shape()
    # the figures its run logged at the checkpoint's epoch, and its validation fold's size
    logged = pd.read_csv(trained_run.run_dir / "metrics.csv").iloc[ckpt["epoch"]]
    assert info.epoch == ckpt["epoch"] + 1 and info.epochs == 1
    assert info.validation["val/rec_f1_macro"] == pytest.approx(logged["val/rec_f1_macro"])
    m = trained_run.manifest
    assert info.n_validation == int(((m["split"] == "val") & ~m["dropped"].astype(bool)).sum())
    assert info.chosen_by == "val/rec_f1_macro"  # best.ckpt: picked on that fold
    assert info.data["path"] == str(Path(ckpt["birdstack"]["config"]["data"]["path"]))

    assert _run(["info", str(trained_run.checkpoint)]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    assert f"{info.parameters:,} parameters" in text and "optimistic" in text
    assert f"{info.n_validation} validation recordings" in text
    assert all(c in text for c in info.classes)
    # --classes: a species list predict reads back
    assert _run(["info", str(onnx_model), "--classes"]) == EXIT_OK
    assert capsys.readouterr().out.split() == info.classes
    assert _run(["info", str(trained_run.checkpoint), "--json"]) == EXIT_OK
    dumped = json.loads(capsys.readouterr().out)
    assert dumped["classes"] == info.classes and dumped["input_shape"] == list(info.input_shape)

    exported = model_info(onnx_model)  # what an export carries: no config, no figures
    assert exported.kind == "onnx" and exported.classes == info.classes
    assert exported.input_shape == info.input_shape and exported.parameters is None
    assert exported.source == "calibrated.ckpt" and exported.validation == {}

    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(BadInputError, match=r"notes\.ckpt.*not a readable checkpoint"):
        model_info(bad)
    with pytest.raises(BadInputError, match=r"gone\.onnx.*not found"):
        model_info(tmp_path / "gone.onnx")

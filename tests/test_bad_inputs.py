"""A corpus of bad inputs, made here, through the CLI: each case's skip or error is asserted.

The corpus is a BirdCLEF-style folder: copies of a few demo recordings (one renamed with
spaces and non-ASCII characters) plus synthesised files that are odd but valid (8-bit,
24-bit and float WAV, stereo, 6 channels, 8 kHz, 96 kHz, silence, a 0.1 s clip, a WAV
named ``.mp3``, a real MP3) or unusable (empty, truncated OGG and MP3, random bytes named
``.ogg``/``.mp3``, NaN and infinite samples, a listed file that is missing), and a
metadata CSV with a duplicate row, a malformed ``secondary_labels`` cell and a secondary
label that names no species of the data.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr
import torch

from birdstack.cli.main import EXIT_CONFIG, EXIT_FAIL, EXIT_OK, EXIT_SKIPPED
from test_reliability import (
    child_env,
    chirps,
    leftover_temp_files,
    log_text,
    make_checkpoint,
    run_cli,
)

A, B = "acrocephalus_arundinaceus", "coereba_flaveola"
SR = 32000

# file -> expected outcome: ("kept", duration in seconds) or ("skipped", reason in the log)
EXPECTED: dict[str, tuple[str, float | str]] = {
    f"{A}/u8.wav": ("kept", 3.0),
    f"{A}/pcm24.wav": ("kept", 3.0),
    f"{A}/float.wav": ("kept", 3.0),
    f"{A}/stereo.wav": ("kept", 3.0),
    f"{B}/six_channels.wav": ("kept", 3.0),
    f"{B}/rate 8k.wav": ("kept", 3.0),
    f"{B}/rate_96k.flac": ("kept", 3.0),
    f"{B}/silence.wav": ("kept", 3.0),
    f"{B}/clip_0.1s.wav": ("kept", 0.1),
    f"{A}/wav_named.mp3": ("kept", 3.0),
    f"{B}/real.mp3": ("kept", 3.0),
    f"{A}/empty.ogg": ("skipped", "empty file (0 bytes)"),
    f"{A}/truncated.ogg": ("skipped", "truncated Ogg stream"),
    f"{B}/truncated.mp3": ("skipped", "corrupt or truncated audio stream (decoded"),
    f"{B}/random.ogg": ("skipped", "not a recognised audio format"),
    f"{A}/random.mp3": ("skipped", "not a recognised audio format"),
    f"{A}/nan.wav": ("skipped", "contains non-finite samples (NaN or infinity)"),
    f"{B}/inf.wav": ("skipped", "contains non-finite samples (NaN or infinity)"),
    f"{B}/listed_but_missing.ogg": ("skipped", "file not found"),
}


def _write_corpus(root: Path, demo_dir: Path) -> None:
    audio = root / "train_audio"
    rows: list[tuple[str, str, str]] = []  # primary_label, filename, secondary_labels
    for label in (A, B):
        (audio / label).mkdir(parents=True)
        for i, src in enumerate(sorted((demo_dir / "train_audio" / label).glob("*.ogg"))[:3]):
            name = f"{src.stem} café ü.ogg" if i == 0 else src.name  # spaces, non-ASCII
            shutil.copy(src, audio / label / name)
            rows.append((label, f"{label}/{name}", "[]"))
    song = chirps(3.0, SR, seed=1)

    def write(rel: str, x: np.ndarray, rate: int, subtype: str, fmt: str | None = None) -> None:
        sf.write(audio / rel, x, rate, subtype=subtype, format=fmt)

    write(f"{A}/u8.wav", song, SR, "PCM_U8")
    write(f"{A}/pcm24.wav", song, SR, "PCM_24")
    write(f"{A}/float.wav", song, SR, "FLOAT")
    write(f"{A}/stereo.wav", np.stack([song, -0.5 * song], 1), SR, "PCM_16")
    write(f"{B}/six_channels.wav", np.stack([song * (k + 1) / 6 for k in range(6)], 1), SR, "FLOAT")
    write(f"{B}/rate 8k.wav", soxr.resample(song, SR, 8000), 8000, "PCM_16")
    write(f"{B}/rate_96k.flac", soxr.resample(song, SR, 96000), 96000, "PCM_24")
    write(f"{B}/silence.wav", np.zeros_like(song), SR, "PCM_16")
    write(f"{B}/clip_0.1s.wav", song[: SR // 10], SR, "PCM_16")
    write(f"{A}/wav_named.mp3", song, SR, "PCM_16", "WAV")  # decoded by content
    write(f"{B}/real.mp3", song, SR, "MPEG_LAYER_III", "MP3")  # libsndfile >= 1.1 writes MP3
    (audio / A / "empty.ogg").write_bytes(b"")
    ogg = (audio / A / sorted(p.name for p in (audio / A).glob("XC*.ogg"))[-1]).read_bytes()
    (audio / A / "truncated.ogg").write_bytes(ogg[: len(ogg) // 2])
    mp3 = (audio / B / "real.mp3").read_bytes()
    (audio / B / "truncated.mp3").write_bytes(mp3[: len(mp3) // 2])
    rng = np.random.default_rng(0)
    (audio / B / "random.ogg").write_bytes(rng.bytes(20000))
    (audio / A / "random.mp3").write_bytes(rng.bytes(20000))
    for rel, bad in ((f"{A}/nan.wav", np.nan), (f"{B}/inf.wav", np.inf)):
        x = song.copy()
        x[1000] = bad
        write(rel, x, SR, "FLOAT")
    rows += [(rel.split("/")[0], rel, "[]") for rel in EXPECTED if not (audio / rel).exists()]
    rows += [(rel.split("/")[0], rel, "[]") for rel in EXPECTED if (audio / rel).exists()]
    # metadata problems: a duplicate row, a malformed and a foreign secondary label
    rows.append(rows[0])
    rows[1] = (rows[1][0], rows[1][1], "['coereba_flaveola', 'x'")  # unterminated list
    rows[2] = (rows[2][0], rows[2][1], "['passer_domesticus']")  # no such species here
    with open(root / "train_metadata.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["primary_label", "secondary_labels", "filename", "author", "date"])
        for i, (label, rel, sec) in enumerate(rows):
            w.writerow([label, sec, rel, f"author {i}", f"2021-05-{1 + i % 28:02d}"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_dir) -> Path:
    if "MP3" not in sf.available_formats():  # the pinned soundfile wheels bring libsndfile 1.2
        pytest.skip("this libsndfile cannot write MP3 (needs >= 1.1)")
    root = tmp_path_factory.mktemp("corpus") / "birds"
    _write_corpus(root, demo_dir)
    return root


def _prepare(corpus: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["prepare", "--data", str(corpus), "--top-k", "2", "--no-balance", "--folds", "2"]
    argv += ["--short", "pad", "--workers", "1", "--cache-dir", str(tmp / "cache")]
    argv += ["--out", str(tmp / "prep"), "--no-progress", *extra]
    return subprocess.run(
        [sys.executable, "-m", "birdstack.cli.main", *argv],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
        env=child_env(),
    )


def _skip_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("WARNING skipped ")]


@pytest.mark.slow
def test_prepare_skips_each_bad_file_with_one_line_and_exits_3(corpus, tmp_path):
    proc = _prepare(corpus, tmp_path)
    err = proc.stderr
    assert proc.returncode == EXIT_SKIPPED, err[-3000:]
    bad = {rel: reason for rel, (state, reason) in EXPECTED.items() if state == "skipped"}
    lines = _skip_lines(err)
    assert len(lines) == len(bad), "\n".join(lines)
    for rel, reason in bad.items():
        mine = [ln for ln in lines if str(corpus / "train_audio" / rel) + ": " in ln]
        assert len(mine) == 1, (rel, lines)
        assert str(reason) in mine[0], mine[0]
        assert "File does not exist" not in mine[0]  # libsndfile's misleading text is not shown
    # the summary count, and what to do about it
    assert f"{len(bad)} file(s) skipped (missing or unreadable" in err
    assert re.search(rf"ERROR {len(bad)} input file\(s\) were skipped.*--on-error skip", err)
    # metadata problems are warned about, naming the CSV line; the run goes on
    assert "is listed 2 times" in err
    assert "line 3: secondary_labels not a Python list literal" in err
    assert "manifest:" in proc.stdout

    m = pd.read_csv(tmp_path / "prep" / "manifest.csv")
    m["rel"] = m["path"].map(lambda p: Path(p).relative_to(corpus / "train_audio").as_posix())
    m = m.set_index("rel")
    assert len(m) == len(EXPECTED) + 6  # every distinct listed file, the duplicate once
    for rel, (state, value) in EXPECTED.items():
        row = m.loc[rel]
        if state == "kept":
            assert not row["dropped"], (rel, row["drop_reason"])
            assert row["duration_s"] == pytest.approx(value, abs=2e-3), rel
        else:
            assert row["dropped"] and str(value) in row["drop_reason"], (rel, row["drop_reason"])
    # the malformed secondary_labels cell (naming kept species B) is read as [], not dropped
    malformed = f"{A}/{sorted(p.name for p in corpus.glob(f'train_audio/{A}/XC*.ogg'))[1]}"
    assert not m.loc[malformed, "dropped"] and m.loc[malformed, "secondary_labels"] == "[]"
    names = [r for r in m.index if "café ü" in r]
    assert len(names) == 2 and not m.loc[names, "dropped"].any()
    assert m.loc[m["secondary_labels"].str.contains("passer_domesticus"), "dropped"].eq(False).all()
    assert leftover_temp_files(tmp_path / "cache", tmp_path / "prep") == []

    # accepting skips: the same lines (unreadable files are remembered by the cache), exit 0
    again = _prepare(corpus, tmp_path, "--on-error", "skip")
    assert again.returncode == EXIT_OK, again.stderr[-3000:]
    assert sorted(_skip_lines(again.stderr)) == sorted(lines)
    assert f"{len(bad)} file(s) skipped" in again.stderr and "ERROR" not in again.stderr


# ----------------------------------------------------------------------------- metadata errors


def _birdclef(root: Path, header: str, rows: list[str], encoding: str = "utf-8") -> Path:
    (root / "train_audio" / A).mkdir(parents=True)
    sf.write(root / "train_audio" / A / "x.wav", chirps(1.0, 16000), 16000)
    text = "\n".join([header, *rows]) + "\n"
    (root / "train_metadata.csv").write_bytes(text.encode(encoding))
    return root


@pytest.mark.parametrize(
    ("header", "rows", "encoding", "extra", "message"),
    [
        (
            "species,file_name",
            [f"{A},{A}/x.wav"],
            "utf-8",
            [],
            "missing required column(s) 'primary_label', 'filename'",
        ),
        (
            "primary_label,author,filename",
            [f"{A},Jos\xe9,{A}/x.wav"],
            "latin-1",
            [],
            "not valid utf-8: byte(s) 0xe9",
        ),
        (
            "primary_label,filename",
            [f"{A},{A}/x.wav", f"{A},../../outside.wav"],
            "utf-8",
            [],
            "line 3: filename '../../outside.wav' points outside the data folder",
        ),
        (
            "primary_label,filename",
            [f"{A},{A}/x.wav"],
            "utf-8",
            ["--species", f"{A},zz_unknown"],
            "unknown species 'zz_unknown' in data.species; available: " + A,
        ),
    ],
    ids=["missing-column", "non-utf8", "outside-folder", "unknown-species"],
)
def test_bad_metadata_is_a_clear_error_before_any_work(
    tmp_path, monkeypatch, caplog, header, rows, encoding, extra, message
):
    root = _birdclef(tmp_path / "data", header, rows, encoding)
    argv = ["prepare", "--data", str(root), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--out", str(tmp_path / "prep"), "--no-progress", *extra]
    with caplog.at_level(logging.ERROR, logger="birdstack"):
        assert run_cli(argv, monkeypatch) == EXIT_FAIL
    text = log_text(caplog)
    assert message in text, text
    if not extra:
        assert "train_metadata.csv" in text  # the message names the file
    assert not (tmp_path / "cache").exists() and not (tmp_path / "prep").exists()


# ----------------------------------------------------------------------------- configuration


def _predict_argv(tmp_path: Path) -> list[str]:
    ckpt = make_checkpoint(tmp_path / "m.ckpt", ["a_b", "c_d"])
    return ["predict", str(ckpt), str(tmp_path), "--out", str(tmp_path / "out")]


CONFIG_ERRORS = [
    (
        ["prepare", "--encoding", "stacks"],
        "encoding.kind='stacks' is not one of 'auto', 'stacked', 'segments'",
    ),
    (["prepare", "--short", "maybe"], "short='maybe' is not one of 'drop', 'pad'"),
    (["prepare", "--channels", "20", "--target-frames", "10"], "lower --channels"),
    (["prepare", "--sample-rate", "500"], "use >= 1000 Hz"),
    (["prepare", "--folds", "1"], "data.n_folds=1 must be >= 2"),
    (["prepare", "--folds", "3", "--val-fold", "3"], "data.val_fold=3 must be in [0, 2]"),
    (["prepare", "--top-k", "0"], "data.top_k=0 must be >= 1"),
    (
        ["prepare", "--single-session", "maybe"],
        "single_session='maybe' is not one of 'split', 'drop', 'error'",
    ),
    (["prepare", "--set", "spectrogram.n_mels=64"], "unknown option(s) spectrogram"),
    (["prepare", "--set", "preprocessing.spectrogram.fmin=15000"], "must be below"),
    (["prepare", "--set", "data.seed=abc"], "data.seed: expected an integer, got 'abc'"),
    (["train", "--model", "resnet9000"], "unknown model 'resnet9000'; choose one of"),
    (["train", "--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'; choose one of"),
    (["train", "--scheduler", "step"], "optim.scheduler='step' is not one of 'auto', 'none'"),
    (["train", "--epochs", "0"], "trainer.epochs=0 must be >= 1"),
    (["train", "--lr", "-1"], "optim.lr=-1.0 must be positive"),
    (["train", "--precision", "17"], "Allowed precision values"),
    (["train", "--strategy", "nonsense"], "invalid strategy name"),
    (["train", "--encoding", "segments", "--window-s", "0.05"], "window_s is too short"),
    (["predict", "--top-k", "0"], "--top-k must be >= 1"),
    (["predict", "--min-confidence", "2"], "--min-confidence must be in [0, 1]"),
    (["predict", "--hop-s", "0"], "--hop-s must be positive"),
]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        *CONFIG_ERRORS,
        pytest.param(
            ["train", "--accelerator", "gpu"],
            "No supported gpu backend found",
            marks=pytest.mark.skipif(
                torch.cuda.is_available() or torch.backends.mps.is_available(),
                reason="a GPU is present",
            ),
        ),
    ],
    ids=[" ".join(a) for a, _ in CONFIG_ERRORS] + ["train --accelerator gpu"],
)
def test_configuration_errors_exit_2_before_any_work(tmp_path, monkeypatch, caplog, argv, message):
    cmd, *opts = argv
    if cmd == "predict":
        full = [*_predict_argv(tmp_path), *opts]
    else:
        full = [cmd, "--data", str(tmp_path / "nodata"), "--cache-dir", str(tmp_path / "cache")]
        full += ["--out", str(tmp_path / "out"), "--no-progress", *opts]
    with caplog.at_level(logging.ERROR, logger="birdstack"):
        assert run_cli(full, monkeypatch) == EXIT_CONFIG
    text = log_text(caplog)
    assert text.startswith("configuration error: ") and message in text, text
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_unknown_choice_and_sweep_fold_are_configuration_errors(tmp_path, monkeypatch, capsys):
    argv = ["prepare", "--data", str(tmp_path), "--on-error", "ignore"]
    assert run_cli(argv, monkeypatch) == EXIT_CONFIG  # argparse
    assert "invalid choice: 'ignore'" in capsys.readouterr().err
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: x\nbase: {{data: {{path: {tmp_path}}}}}\nfolds: [0]\n")
    argv = ["sweep", str(exp), "--out", str(tmp_path / "s"), "--folds", "7", "--no-progress"]
    assert run_cli(argv, monkeypatch) == EXIT_CONFIG
    assert not (tmp_path / "s").exists()


def test_more_channels_than_frames_from_the_length_rule(tmp_path, monkeypatch, caplog):
    """The target length comes from the data: checked once the lengths are known."""
    root = tmp_path / "data"
    for label in (A, B):
        for i in range(2):
            (root / label).mkdir(parents=True, exist_ok=True)
            sf.write(root / label / f"r{i}.wav", chirps(1.0, 16000, seed=i), 16000)
    argv = ["prepare", "--data", str(root), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--out", str(tmp_path / "prep"), "--encoding", "stacked", "--channels", "500"]
    argv += ["--workers", "1"]
    argv += ["--no-progress", "--folds", "2"]
    with caplog.at_level(logging.ERROR, logger="birdstack"):
        assert run_cli(argv, monkeypatch) == EXIT_CONFIG
    assert "channels" in log_text(caplog) and "500" in log_text(caplog), log_text(caplog)
    assert not (tmp_path / "prep" / "manifest.csv").exists()


# ----------------------------------------------------------------------------- a 1-hour file

_RSS_SCRIPT = """
import resource, sys
from birdstack.cli.main import main
short, long = sys.argv[1:3]
for name, argv in (("SHORT", short), ("LONG", long)):
    rc = main(argv.split("|"))
    assert rc == 0, rc
    print(name, "MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


@pytest.mark.slow
def test_one_hour_file_is_predicted_in_bounded_memory(tmp_path):
    """Peak memory of one process: a 1-minute file first, then a 1-hour one."""
    sr, minutes = 8000, 60
    long = tmp_path / "long" / "one_hour.wav"
    short = tmp_path / "short" / "one_minute.wav"
    long.parent.mkdir()
    short.parent.mkdir()
    minute = (0.1 * np.random.default_rng(0).standard_normal(sr * 60)).astype(np.float32)
    with sf.SoundFile(long, "w", sr, 1, subtype="PCM_16") as fh:
        for _ in range(minutes):
            fh.write(minute)
    sf.write(short, minute, sr, subtype="PCM_16")
    ckpt = make_checkpoint(tmp_path / "m.ckpt", ["a_b", "c_d"])  # 16 kHz model: resampled
    common = "|--no-progress|--threads|1|--format|csv|json"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _RSS_SCRIPT,
            f"predict|{ckpt}|{short}|--out|{tmp_path / 's'}{common}",
            f"predict|{ckpt}|{long}|--out|{tmp_path / 'l'}{common}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = {k: int(v) / 1024 for k, v in re.findall(r"(SHORT|LONG) MAXRSS_KB (\d+)", proc.stdout)}
    rec = pd.read_csv(tmp_path / "l" / "recordings.csv")
    assert len(rec) == 2 and (rec["file"] == str(long)).all()
    det = pd.read_csv(tmp_path / "l" / "detections.csv")
    assert det["end_s"].max() == pytest.approx(3600.0, abs=0.5)
    # decoding the whole hour (float32 at 8 kHz) and resampling it (16 kHz) needs 330 MiB
    whole_file_mb = sr * 60 * minutes * 4 * (1 + 2) / 2**20
    assert whole_file_mb > 300
    assert peak["LONG"] - peak["SHORT"] < 100, peak


# ----------------------------------------------------------------------------- train and sweep


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    """Two species of three 2-second recordings each, and one unreadable file."""
    root = tmp_path_factory.mktemp("small") / "birds"
    for k, label in enumerate((A, B)):
        (root / label).mkdir(parents=True)
        for i in range(3):
            sf.write(root / label / f"r{i}.wav", chirps(2.0, 16000, seed=10 * k + i), 16000)
    (root / A / "broken.ogg").write_bytes(b"OggS" + bytes(100))
    return root


def _small_argv(root: Path) -> list[str]:
    # 3 recordings per class: below the default data.min_class_recordings (5)
    argv = ["--data", str(root), "--folds", "2", "--short", "pad", "--workers", "1"]
    return [*argv, "--min-class-recordings", "2"]


@pytest.mark.xdist_group("train")
def test_train_with_a_skipped_file_trains_then_exits_3(small_tree, tmp_path, monkeypatch, caplog):
    argv = ["train", *_small_argv(small_tree), "--epochs", "1", "--batch-size", "8"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")]
    argv += ["--accelerator", "cpu", "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="birdstack"):
        assert run_cli(argv, monkeypatch) == EXIT_SKIPPED
    assert (tmp_path / "run" / "result.json").is_file()  # finished what it could
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 1 and "broken.ogg" in skipped[0]
    assert "1 input file(s) were skipped" in log_text(caplog)


@pytest.mark.xdist_group("train")
def test_sweep_with_a_skipped_file_exits_3(small_tree, tmp_path, monkeypatch):
    """Fails until `birdstack sweep` counts the files its runs skipped (see docs/reliability.md)."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"name: small\nbase:\n  data: {{path: {small_tree}, n_folds: 2, workers: 1, "
        f"min_class_recordings: 2, cache_dir: {tmp_path / 'cache'}}}\n"
        "  preprocessing: {encoding: {kind: stacked, short: pad}}\n"
        "  trainer: {epochs: 1, batch_size: 8, accelerator: cpu}\nfolds: [0]\n"
    )
    argv = ["sweep", str(exp), "--out", str(tmp_path / "s"), "--no-progress", "--no-eval"]
    assert run_cli(argv, monkeypatch) == EXIT_SKIPPED


def test_sweep_configuration_errors_exit_2_before_any_run(small_tree, tmp_path, monkeypatch):
    """Fails until `birdstack sweep` validates every planned run before starting the first."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"name: bad\nbase:\n  data: {{path: {small_tree}, n_folds: 2, workers: 1}}\n"
        "  trainer: {epochs: 1, batch_size: 8, accelerator: cpu}\n"
        "grid: {model.name: [mobilenet_compact, resnet9000]}\nfolds: [0]\n"
    )
    argv = ["sweep", str(exp), "--out", str(tmp_path / "s"), "--no-progress", "--no-eval"]
    assert run_cli(argv, monkeypatch) == EXIT_CONFIG
    assert not (tmp_path / "s" / "runs").exists()

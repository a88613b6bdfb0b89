"""``kill -9`` in the middle of prepare, train, sweep and predict, then the same command again.

Each job is started as a child process and killed with SIGKILL as soon as its first
result is on disk (a cached feature file, ``last.ckpt``, the first prediction). At that
moment no final-named file may be partial. The rerun must finish, reuse what was done,
give the result of an uninterrupted run with the same seed, and leave no temporary
files. A genuine leftover of a write killed half-way is added before each rerun (a child
killed inside :func:`birdstack.utils.atomic_path`), so the clean-up is always exercised.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdstack.cli.main import build_parser, config_from_args
from birdstack.training.checkpoint import load_checkpoint
from test_reliability import (
    child_env,
    chirps,
    leftover_temp_files,
    make_checkpoint,
    run_cli,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train")]

# two species of the demo data (16 recordings), two folds, pad short recordings
DATA = ["--top-k", "2", "--folds", "2", "--encoding", "stacked", "--short", "pad", "--workers", "1"]
DATA += ["--no-progress", "--task", "multiclass"]
TRAIN = ["--epochs", "3", "--batch-size", "8", "--accelerator", "cpu"]
HISTORY = ["train/loss", "val/loss", "val/acc"]
N_RECORDINGS = 6  # predict


def _cli(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "birdstack.cli.main", *argv],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )


def _finish(argv: list[str], log: Path) -> str:
    proc = _cli(argv, log)
    rc = proc.wait(timeout=600)
    text = log.read_text(errors="replace")
    assert rc == 0, text[-4000:]
    return text


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; it must still have been running then."""
    deadline = time.monotonic() + 600
    try:
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the job ended before the kill:\n{log.read_text()[-4000:]}")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"


_HALF_WRITE = """
import os, sys
from birdstack.utils import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half of a file")
    os.kill(os.getpid(), 9)
"""


def _killed_mid_write(target: Path) -> None:
    """Leave what a job killed inside ``atomic_path(target)`` leaves: a temporary file."""
    proc = subprocess.run([sys.executable, "-c", _HALF_WRITE, str(target)], env=child_env())
    assert proc.returncode == -signal.SIGKILL
    assert leftover_temp_files(target.parent), "no temporary file was left"


# ----------------------------------------------------------------------------- prepare


def _entries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*.json") if p.name != "settings.json"]


def test_prepare_killed_after_the_first_cached_file(demo_dir, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "prep"
    argv = ["prepare", "--data", str(demo_dir), *DATA, "--cache-dir", str(cache), "--out", str(out)]
    log = tmp_path / "prepare.log"
    _kill_when(_cli(argv, log), lambda: bool(_entries(cache)), log)

    # nothing final-named is partial: every entry's metadata parses, every .npy loads whole
    done = _entries(cache)
    assert len(done) >= 1
    for meta_path in done:
        meta = json.loads(meta_path.read_text())
        db = np.load(meta_path.with_suffix(".npy"), allow_pickle=False)
        assert db.shape == (meta["n_mels"], meta["frames"]) and np.isfinite(db).all()
    for npy in cache.rglob("*.npy"):  # also those written just before their .json
        assert np.load(npy, allow_pickle=False).dtype == np.float32
    assert not (out / "manifest.csv").exists()

    _killed_mid_write(done[0].with_suffix(".npy"))
    text = _finish(argv, log)
    total = len(_entries(cache))
    assert len(done) < total
    assert f"computed features of {total - len(done)} file(s)" in text  # the rest only
    assert leftover_temp_files(cache, out) == []

    # the same as an uninterrupted run (in this process, with a cache of its own)
    from birdstack.data.prepare import prepare

    cfg = config_from_args(build_parser().parse_args(argv))
    ref = prepare(
        dataclasses.replace(cfg.data, cache_dir=str(tmp_path / "ref-cache")),
        cfg.preprocessing,
        tmp_path / "ref",
        progress=False,
    )
    got = pd.read_csv(out / "manifest.csv")
    want = pd.read_csv(tmp_path / "ref" / "manifest.csv")
    cols = [c for c in want.columns if c != "cache_file"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    assert (
        json.loads((out / "prepare.json").read_text())["preprocessing"]
        == json.loads((tmp_path / "ref" / "prepare.json").read_text())["preprocessing"]
    )
    assert ref.kept.shape[0] == (~got["dropped"]).sum()
    for a, b in zip(got["cache_file"].dropna(), want["cache_file"].dropna()):
        np.testing.assert_array_equal(np.load(a), np.load(b))


# ----------------------------------------------------------------------------- train / sweep


@pytest.fixture(scope="session")  # session: modules of one worker interleave
def reference_run(demo_dir, cache_dir, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run (same settings and thread count as the killed ones)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    argv = ["train", "--data", str(demo_dir), *DATA, *TRAIN, "--cache-dir", str(cache_dir)]
    _finish([*argv, "--out", str(out)], out.parent / "train.log")
    return out


def test_train_killed_after_the_first_epoch_resumes_to_the_same_metrics(
    demo_dir, cache_dir, reference_run, tmp_path
):
    out = tmp_path / "run"
    argv = ["train", "--data", str(demo_dir), *DATA, *TRAIN, "--cache-dir", str(cache_dir)]
    argv += ["--out", str(out)]
    log = tmp_path / "train.log"
    last = out / "checkpoints" / "last.ckpt"
    _kill_when(_cli(argv, log), last.exists, log)

    ckpt = load_checkpoint(last)  # whole: written to a temporary file, then renamed
    assert ckpt["epoch"] < 2 and ckpt["birdstack_history"]
    assert not (out / "result.json").exists()

    _killed_mid_write(last)
    text = _finish([*argv, "--resume"], log)
    assert "resuming from" in text
    got = pd.read_csv(out / "metrics.csv")
    want = pd.read_csv(reference_run / "metrics.csv")
    assert len(got) == 3
    pd.testing.assert_frame_equal(got[HISTORY], want[HISTORY])
    assert (
        json.loads((out / "result.json").read_text())["best"]
        == json.loads((reference_run / "result.json").read_text())["best"]
    )
    assert leftover_temp_files(out) == []


def test_sweep_killed_inside_a_run_resumes_to_the_same_metrics(
    demo_dir, cache_dir, reference_run, tmp_path
):
    """The single run of this sweep has the reference run's settings."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "name: killed\n"
        f"base:\n  data: {{path: {demo_dir}, top_k: 2, n_folds: 2, workers: 1}}\n"
        "  preprocessing: {encoding: {kind: stacked, short: pad}}\n"
        "  task: {kind: multiclass}\n"
        "  trainer: {epochs: 3, batch_size: 8, accelerator: cpu}\n"
        "folds: [0]\nseeds: [0]\n"
    )
    out = tmp_path / "sweep"
    argv = ["sweep", str(exp), "--out", str(out), "--no-progress", "--no-eval"]
    argv += ["--set", f"data.cache_dir={cache_dir}"]
    run = out / "runs" / "base__fold0__seed0"
    log = tmp_path / "sweep.log"
    _kill_when(_cli(argv, log), (run / "checkpoints" / "last.ckpt").exists, log)
    load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert not (run / "result.json").exists() and not (out / "results.csv").exists()

    _killed_mid_write(out / "sweep.json")
    _finish(argv, log)
    got = pd.read_csv(run / "metrics.csv")
    want = pd.read_csv(reference_run / "metrics.csv")
    pd.testing.assert_frame_equal(got, want)
    assert pd.read_csv(out / "runs.csv")["status"].tolist() == ["done"]
    assert leftover_temp_files(out) == []


# ----------------------------------------------------------------------------- predict


def test_predict_killed_after_the_first_output_resumes_to_the_same_files(tmp_path, monkeypatch):
    audio = tmp_path / "audio"
    for i in range(N_RECORDINGS):
        (audio / f"site{i % 2}").mkdir(parents=True, exist_ok=True)
        sf.write(audio / f"site{i % 2}" / f"rec {i}.wav", chirps(30.0, 16000, seed=i), 16000)
    ckpt = make_checkpoint(tmp_path / "model.ckpt", ["a_b", "c_d", "e_f"])
    common = ["predict", str(ckpt), str(audio), "--no-progress", "--threads", "1"]
    common += ["--format", "csv", "raven", "json", "--min-confidence", "0", "--decode-workers", "1"]
    out = tmp_path / "out"
    log = tmp_path / "predict.log"
    parts = out / ".parts"
    _kill_when(_cli([*common, "--out", str(out)], log), lambda: any(parts.rglob("*.json")), log)

    done = sorted(parts.rglob("*.json"))
    assert 1 <= len(done) < N_RECORDINGS
    for p in done:
        json.loads(p.read_text())  # whole
    assert not (out / "detections.csv").exists()  # the combined files are written last
    stamps = {p: p.stat().st_mtime_ns for p in done}

    _killed_mid_write(out / "detections.csv")
    _killed_mid_write(done[0])
    text = _finish([*common, "--out", str(out)], log)
    assert f"{len(done)} already done" in text
    assert {p: p.stat().st_mtime_ns for p in done} == stamps  # not predicted again

    # uninterrupted, in this process (one intra-op thread, like the child processes)
    import torch

    threads = torch.get_num_threads()
    try:
        assert run_cli([*common, "--out", str(tmp_path / "ref")], monkeypatch) == 0
    finally:
        torch.set_num_threads(threads)
    for name in ("detections.csv", "recordings.csv", "predictions.json"):
        assert (out / name).read_text() == (tmp_path / "ref" / name).read_text(), name
    ravens = sorted(p.relative_to(out) for p in (out / "raven").rglob("*.txt"))
    assert len(ravens) == N_RECORDINGS
    for r in ravens:
        assert (out / r).read_text() == (tmp_path / "ref" / r).read_text()
    assert leftover_temp_files(out) == []

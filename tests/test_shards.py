"""``birdstack predict --shard K/N`` and ``birdstack merge``: split, resume, join."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from birdstack.cli.main import EXIT_CONFIG, EXIT_FAIL, EXIT_OK, build_parser
from birdstack.cli.predict import collect_inputs
from birdstack.config import ConfigError
from birdstack.inference.shards import Shard, shard_of
from birdstack.utils import BirdstackError

pytestmark = pytest.mark.xdist_group("inference")
# the session's trained checkpoint (test_inference_helpers), shared with the inference tests
pytest_plugins = ["test_inference_helpers"]

# six short demo recordings, two per shard of 3 (checked below), in per-species folders
PICKS = (
    "vireo_latimeri/XC9423.ogg",
    "vireo_latimeri/XC308504.ogg",
    "coereba_flaveola/XC46631.ogg",
    "margarops_fuscatus/XC805339.ogg",
    "gymnasio_nudipes/XC33690.ogg",
    "acrocephalus_arundinaceus/XC136005.ogg",
)
COMBINED = ("detections.csv", "recordings.csv", "predictions.json")


def _run(argv: list[str]) -> int:
    """Run a command like ``main`` does, without replacing the test's log handlers."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError:
        return EXIT_CONFIG
    except BirdstackError:
        return EXIT_FAIL


def _call(argv: list[str]) -> int:
    """Run a command letting its errors through (to check their messages)."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- assignment


def _touch(root: Path, rels: list[str]) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


def test_adding_files_moves_no_other_file_to_another_shard(tmp_path, monkeypatch):
    archive = tmp_path / "archive"
    first = [f"site_{s:02d}/2024-05-{d:02d}_{h:02d}00.wav" for s in range(12) for d in (1, 2, 3)
             for h in range(0, 24, 3)]  # fmt: skip
    _touch(archive, first)

    def assignment(root: str, n: int) -> dict[str, int]:
        inputs, _ = collect_inputs([root])
        got = {f.rel: k for f in inputs for k in range(n) if Shard(k, n).owns(f.rel)}
        assert len(got) == len(inputs)  # each file in exactly one shard
        return got

    monkeypatch.chdir(tmp_path)
    before: dict[int, dict[str, int]] = {}
    for n in (2, 3, 7, 16):
        before[n] = assignment(str(archive), n)
        assert set(before[n]) == set(first)
        counts = Counter(before[n].values())
        assert len(counts) == n and min(counts.values()) >= 0.5 * len(first) / n  # balanced
        # the same archive reached by another path (mounted elsewhere on another node)
        assert assignment("archive", n) == before[n]
    # new recordings, sorting between and before the old ones, and new folders
    added = [f"site_{s:02d}/2024-05-01_{h:02d}30.wav" for s in range(12) for h in range(0, 24, 3)]
    added += ["site_00/0000.flac", "aaa_new_site/x.wav", "site_05/sub/deeper.ogg"]
    _touch(archive, added)
    for n in (2, 3, 7, 16):
        after = assignment(str(archive), n)
        assert set(after) == set(first) | set(added)
        assert {rel: after[rel] for rel in first} == before[n]


def test_shard_of_is_sha1_of_the_relative_path():
    import hashlib

    rel = "site_a/2024-05-01_0500.wav"
    assert shard_of(rel, 7) == int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 7
    assert [shard_of(rel, 1) for rel in ("a", "b", "c")] == [0, 0, 0]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("3/3", "from 0 to 2"),
        ("x", "expected K/N"),
        ("0/0", "at least 1"),
        ("-1/3", "expected K/N"),
        ("1", "expected K/N"),
        ("1/2/3", "expected K/N"),
    ],
)
def test_bad_shard_spec_is_a_configuration_error(tmp_path, spec, message):
    # checked before the checkpoint is read: no checkpoint needed
    argv = ["predict", str(tmp_path / "model.ckpt"), str(tmp_path), "--out", str(tmp_path / "o")]
    argv += [f"--shard={spec}", "--no-progress"]
    assert _run(argv) == EXIT_CONFIG
    with pytest.raises(ConfigError, match=message) as err:
        _call(argv)
    assert f"--shard {spec}" in str(err.value) or f"--shard {spec!r}" in str(err.value)


def test_merge_without_shard_outputs_names_the_folder(tmp_path):
    empty = tmp_path / "preds"
    empty.mkdir()
    (empty / "detections.csv").write_text("file\n")  # an unsharded run's output: not shards
    assert _run(["merge", str(empty)]) == EXIT_CONFIG
    with pytest.raises(ConfigError, match="no shard outputs") as err:
        _call(["merge", str(empty)])
    assert str(empty) in str(err.value)
    with pytest.raises(ConfigError, match="no such folder") as err:
        _call(["merge", str(tmp_path / "missing")])
    assert str(tmp_path / "missing") in str(err.value)
    (empty / "shards" / "0-of-2").mkdir(parents=True)
    (empty / "shards" / "0-of-3").mkdir(parents=True)
    with pytest.raises(ConfigError, match="several splits .*--shards N"):
        _call(["merge", str(empty)])
    with pytest.raises(ConfigError, match="no shards of N=4"):
        _call(["merge", str(empty), "--shards", "4"])
    with pytest.raises(BirdstackError, match=r"2 of 2 shard\(s\) have not finished \(0/2, 1/2"):
        _call(["merge", str(empty), "--shards", "2"])


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, demo_dir) -> Path:
    """Six real demo recordings in per-species folders, and one unreadable file."""
    d = tmp_path_factory.mktemp("archive")
    for rel in PICKS:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_dir / "train_audio" / rel, d / rel)
    (d / "bad").mkdir()
    (d / "bad" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" * 10)
    return d


def _argv(ckpt: Path, folder: Path, out: Path, *extra: str) -> list[str]:
    argv = ["predict", str(ckpt), str(folder), "--out", str(out), "--no-progress"]
    argv += ["--format", "csv", "raven", "json", "--window-s", "3", "--hop-s", "1.5"]
    return [*argv, "--min-confidence", "0.05", "--top-k", "2", "--on-error", "skip", *extra]


def test_three_shards_merge_into_the_unsharded_files_and_a_killed_shard_resumes(
    stacked_run, recordings, tmp_path, monkeypatch, capsys
):
    from birdstack.inference.writers import PredictionWriter

    n = 3
    assert sorted(shard_of(rel, n) for rel in PICKS) == [0, 0, 1, 1, 2, 2]
    ckpt = stacked_run.checkpoint
    full = tmp_path / "full"
    assert _run(_argv(ckpt, recordings, full)) == EXIT_OK
    assert len((full / "recordings.csv").read_text().splitlines()) == 1 + 6 * 2
    out = tmp_path / "sharded"

    # shard 0 is killed after its first recording
    real_write = PredictionWriter.write
    calls: list[str] = []

    def write_then_die(self, key, pred, source):
        if calls:
            raise KeyboardInterrupt
        calls.append(key)
        real_write(self, key, pred, source)

    monkeypatch.setattr(PredictionWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(_argv(ckpt, recordings, out, "--shard", f"0/{n}"))
    monkeypatch.setattr(PredictionWriter, "write", real_write)
    first = out / ".parts" / f"{calls[0]}.json"
    assert first.is_file() and len(list((out / ".parts").rglob("*.json"))) == 1
    assert not (out / "shards" / f"0-of-{n}" / "shard.json").exists()

    for k in (1, 2):
        assert _run(_argv(ckpt, recordings, out, "--shard", f"{k}/{n}")) == EXIT_OK
    # merge refuses while shard 0 is unfinished, and says which
    with pytest.raises(BirdstackError, match=r"1 of 3 shard\(s\) have not finished \(0/3:"):
        _call(["merge", str(out)])
    assert not (out / "detections.csv").exists()

    # the rerun of shard 0 predicts only its missing recording
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert _run(_argv(ckpt, recordings, out, "--shard", f"0/{n}")) == EXIT_OK
    assert "predicted 1 recording(s), 1 already done" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp

    # each shard's own combined files hold its recordings only
    for k in range(n):
        rows = (out / "shards" / f"{k}-of-{n}" / "recordings.csv").read_text().splitlines()[1:]
        files = {r.split(",")[0] for r in rows}
        assert len(files) == 2 and all(shard_of(Path(f).relative_to(recordings).as_posix(), n)
                                       == k for f in files)  # fmt: skip

    assert _run(["merge", str(out)]) == EXIT_OK
    assert "merged 3 shard(s): 6 recording(s), 1 without a result" in capsys.readouterr().out
    for name in COMBINED:
        assert (out / name).read_bytes() == (full / name).read_bytes(), name
    ravens = _tree(full / "raven")
    assert len(ravens) == 6 and _tree(out / "raven") == ravens
    doc = json.loads((out / "predictions.json").read_text())
    assert [
        Path(r["file"]).relative_to(recordings).as_posix() for r in doc["recordings"]
    ] == sorted(PICKS)

    # a shard rerun with other settings no longer belongs to the others: merge says so
    assert _run([*_argv(ckpt, recordings, out, "--shard", f"1/{n}"), "--merge"]) == EXIT_OK
    with pytest.raises(BirdstackError, match=r"different settings.*shards 1/3"):
        _call(["merge", str(out)])


def test_added_files_make_the_shards_disagree_until_rerun(
    stacked_run, recordings, tmp_path, capsys
):
    """Shards run before and after files were added are not merged together."""
    archive = tmp_path / "archive"
    shutil.copytree(recordings, archive)
    (archive / "bad" / "broken.wav").unlink()
    out = tmp_path / "out"
    ckpt = stacked_run.checkpoint
    for k in range(2):
        assert _run(_argv(ckpt, archive, out, "--shard", f"{k}/2")) == EXIT_OK
    assert _run(["merge", str(out)]) == EXIT_OK
    shutil.copy(archive / PICKS[0], archive / "vireo_latimeri" / "copy.ogg")
    owner = shard_of("vireo_latimeri/copy.ogg", 2)
    assert _run(_argv(ckpt, archive, out, "--shard", f"{owner}/2")) == EXIT_OK
    with pytest.raises(BirdstackError, match="different lists of input files"):
        _call(["merge", str(out)])
    capsys.readouterr()
    assert _run(_argv(ckpt, archive, out, "--shard", f"{1 - owner}/2")) == EXIT_OK
    assert "predicted 0 recording(s)" in capsys.readouterr().out
    assert _run(["merge", str(out)]) == EXIT_OK
    rows = (out / "recordings.csv").read_text().splitlines()[1:]
    assert len(rows) == 7 * 2 and any("copy.ogg" in r for r in rows)

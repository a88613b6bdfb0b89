"""Untrusted files: checkpoints and YAML files crafted to run code on load are refused.

Also the helpers shared by ``test_bad_inputs.py`` and ``test_kill_resume.py``: running the
CLI in this process (exit code plus log records), the environment of child processes,
and a small birdstack checkpoint made without training.
"""

from __future__ import annotations

import logging
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

import birdstack.cli.main as cli_main
from birdstack.config import Config, ConfigError, Preprocessing, from_dict, to_dict
from birdstack.models import create_model
from birdstack.training.checkpoint import load_checkpoint
from birdstack.training.module import CHECKPOINT_FORMAT
from birdstack.utils import BadInputError

# torch warns about the protocol of the hand-made pickles
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


def child_env() -> dict[str, str]:
    """The environment of child processes: this test's (its isolated caches), one thread.

    One intra-op thread makes results comparable across processes, and avoids
    oversubscription when two test workers share two cores.
    """
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# small features so that model calls are cheap (16 kHz, 16 mel bands, 2048-sample hop)
TINY_PREPROCESSING: dict[str, Any] = {
    "audio": {"sample_rate": 16000},
    "spectrogram": {"n_fft": 2048, "hop_length": 2048, "n_mels": 16, "fmax": 8000.0},
    "encoding": {"kind": "stacked", "channels": 2, "target_frames": 40, "short": "pad"},
}


# ----------------------------------------------------------------------------- helpers


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``birdstack ARGV`` in this process through ``main`` (exit-code mapping included).

    ``main``'s own logging setup is skipped, so pytest's ``caplog`` sees the records;
    argparse errors (``SystemExit``) are returned as their exit code.
    """
    monkeypatch.setattr(cli_main, "setup_logging", lambda verbose: None)
    try:
        return cli_main.main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured log message, one per line."""
    return "\n".join(r.getMessage() for r in caplog.records)


def make_checkpoint(
    path: Path, classes: list[str], preprocessing: dict[str, Any] | None = None, seed: int = 0
) -> Path:
    """A birdstack checkpoint of a freshly initialised ``mobilenet_compact`` (no training)."""
    pre = from_dict(Preprocessing, preprocessing or TINY_PREPROCESSING)
    torch.manual_seed(seed)
    net = create_model("mobilenet_compact", num_classes=len(classes), in_chans=pre.input_shape()[0])
    ckpt = {
        "epoch": 0,
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "birdstack": {
            "format": CHECKPOINT_FORMAT,
            "classes": list(classes),
            "model": {"name": "mobilenet_compact", "args": dict(net.model_args)},
            "preprocessing": to_dict(pre),
            "config": {},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def chirps(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Quiet noise with a few chirps: a cheap stand-in for a bird recording."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f = rng.uniform(1500, 4000) + rng.uniform(200, 800) * np.sin(2 * np.pi * rng.uniform(1, 4) * t)
    x = 0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    return (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def leftover_temp_files(*folders: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.<random>.tmp``) left in ``folders``."""
    return [p for d in folders if d.exists() for p in d.rglob("*") if ".tmp" in p.name]


# ----------------------------------------------------------------------------- crafted files


class _RunsCode:
    """Unpickling this object runs ``touch MARKER`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _hostile_checkpoints(d: Path, marker: Path) -> list[Path]:
    """A torch checkpoint with a code-running object inside, and a bare pickle named .ckpt."""
    good = load_checkpoint(make_checkpoint(d / "good.ckpt", ["a_b", "c_d"]))
    inside = d / "inside.ckpt"
    torch.save({**good, "birdstack": {**good["birdstack"], "extra": _RunsCode(marker)}}, inside)
    bare = d / "bare.ckpt"
    bare.write_bytes(pickle.dumps(_RunsCode(marker)))
    # the payload is real: unpickling it without the safe loader would create the marker
    assert b"system" in bare.read_bytes() and not marker.exists()
    return [inside, bare]


def test_hostile_checkpoint_is_refused_by_the_loader(tmp_path):
    marker = tmp_path / "PWNED"
    for ckpt in _hostile_checkpoints(tmp_path, marker):
        with pytest.raises(BadInputError) as err:
            load_checkpoint(ckpt)
        assert err.value.path == str(ckpt)
        assert "refused to load" in str(err.value) and ckpt.name in str(err.value)
        assert not marker.exists()
    # what an unsafe loader would have done with it
    torch.load(tmp_path / "inside.ckpt", weights_only=False)
    assert marker.exists()


def test_hostile_checkpoint_is_refused_by_every_command(tmp_path, monkeypatch, caplog):
    marker = tmp_path / "PWNED"
    inside, bare = _hostile_checkpoints(tmp_path, marker)
    wav = tmp_path / "rec.wav"
    sf.write(wav, chirps(3.0, 16000), 16000)
    commands = [
        ["predict", str(inside), str(wav), "--out", str(tmp_path / "pred"), "--no-progress"],
        ["export", str(bare), "--onnx", str(tmp_path / "m.onnx")],
        ["evaluate", str(inside), "--data", str(tmp_path), "--no-progress"],
    ]
    for argv in commands:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="birdstack"):
            assert run_cli(argv, monkeypatch) == cli_main.EXIT_FAIL, argv
        assert "refused to load" in log_text(caplog), argv
        assert Path(argv[1]).name in log_text(caplog), argv
    assert not marker.exists()
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "pred").exists()

    # `train --resume` checks the run's last checkpoint before any other work
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(bare.read_bytes())
    caplog.clear()
    argv = ["train", "--data", str(tmp_path), "--out", str(run), "--resume", "--no-progress"]
    with caplog.at_level(logging.ERROR, logger="birdstack"):
        assert run_cli(argv, monkeypatch) == cli_main.EXIT_FAIL
    assert "last.ckpt" in log_text(caplog) and "refused to load" in log_text(caplog)
    assert not (run / "data").exists() and not (run / "config.yaml").exists()
    assert not marker.exists()


def test_hostile_weights_file_is_refused(tmp_path):
    from birdstack.models.registry import load_state_dict_file

    marker = tmp_path / "PWNED"
    evil = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1), "x": _RunsCode(marker)}, evil)
    with pytest.raises(BadInputError, match="weights.pth.*weights_only=True"):
        load_state_dict_file(evil)
    assert not marker.exists()


YAML_PAYLOAD = "!!python/object/apply:os.system [{cmd}]"


def test_yaml_with_python_tags_is_refused(tmp_path, monkeypatch, caplog):
    marker = tmp_path / "PWNED"
    payload = YAML_PAYLOAD.format(cmd=f'"touch {marker}"')
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"trainer:\n  epochs: {payload}\n")
    base = tmp_path / "child.yaml"
    base.write_text("base: evil.yaml\ntrainer: {batch_size: 8}\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: evil\nbase: {{trainer: {{epochs: 1}}}}\nseeds: {payload}\n")

    with pytest.raises(ConfigError, match="evil.yaml: not valid YAML.*python/object/apply"):
        Config.from_yaml(cfg)
    with pytest.raises(ConfigError, match="evil.yaml: not valid YAML"):
        Config.from_yaml(base)  # through a `base:` include
    commands = [
        (["train", "--config", str(cfg), "--out", str(tmp_path / "r")], "evil.yaml"),
        (["prepare", "--config", str(base), "--out", str(tmp_path / "p")], "evil.yaml"),
        (["sweep", str(exp), "--out", str(tmp_path / "s"), "--dry-run"], "exp.yaml"),
        # a --set value is parsed with the safe loader too: the tag is not run
        (["prepare", "--data", str(tmp_path), "--set", f"data.top_k={payload}"], "data.top_k"),
    ]
    for argv, needle in commands:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="birdstack"):
            assert run_cli(argv, monkeypatch) == cli_main.EXIT_CONFIG, argv
        assert needle in log_text(caplog), (argv, log_text(caplog))
    assert not marker.exists()
    assert not any((tmp_path / d).exists() for d in ("r", "p", "s"))


def test_leftovers_of_killed_writes_are_removed_and_live_ones_kept(tmp_path):
    from birdstack.utils import atomic_path, remove_stale_temp_files

    target = tmp_path / "sub" / "result.json"
    code = (
        "import os, sys\nfrom birdstack.utils import atomic_path\n"
        "with atomic_path(sys.argv[1]) as t:\n    t.write_text('half')\n    os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=child_env())
    assert proc.returncode == -9 and not target.exists()
    dead = leftover_temp_files(tmp_path)
    assert len(dead) == 1 and dead[0].parent == target.parent
    other_host = target.parent / ".result.json.otherhost-1.abcdefgh.tmp"
    other_host.write_text("a job on another machine sharing this folder")
    unrelated = target.parent / ".notes.tmp"
    unrelated.write_text("not ours")
    with atomic_path(target) as live:  # this process is writing right now: kept
        live.write_text("whole")
        assert remove_stale_temp_files(tmp_path) == 0  # not recursive
        assert remove_stale_temp_files(tmp_path, recursive=True) == 1
        assert live.exists() and other_host.exists() and unrelated.exists()
    assert not dead[0].exists() and target.read_text() == "whole"


def test_a_file_that_is_not_a_checkpoint_is_named_as_such_not_as_hostile(tmp_path):
    good = make_checkpoint(tmp_path / "good.ckpt", ["a_b", "c_d"])
    data = good.read_bytes()
    files = {
        "empty.ckpt": b"",
        "notes.ckpt": b"epoch 3, lr 0.001\n",
        "half.ckpt": data[: len(data) // 2],  # an interrupted copy or download
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BadInputError) as err:
            load_checkpoint(tmp_path / name)
        assert err.value.path == str(tmp_path / name)
        assert "not a readable checkpoint" in str(err.value), name
        assert "refused" not in str(err.value), name
    # a run folder where its checkpoint was meant: the message names the checkpoint to use
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(data)
    with pytest.raises(BadInputError, match=r"a folder, not a checkpoint file.*best\.ckpt"):
        load_checkpoint(run)

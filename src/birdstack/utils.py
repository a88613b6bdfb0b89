"""Small shared helpers: atomic writes, hashing, errors, logging.

Everything birdstack writes that a later run reads (feature cache, manifests,
checkpoints, results, prediction files) goes through :func:`atomic_path`, so a
job killed at any moment leaves either the old file or the new one, never half
of one::

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write_text(p, "hello")
    >>> p.read_text()
    'hello'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOGGER_NAME = "birdstack"
_UMASK = os.umask(0)
os.umask(_UMASK)


def get_logger(name: str = "") -> logging.Logger:
    """The package logger (``birdstack`` or ``birdstack.<name>``)."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


class BirdstackError(Exception):
    """Base class of errors meant for the user (the CLI prints them without a traceback)."""


class BadInputError(BirdstackError):
    """An input file cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class SkipLog:
    """Collects the files a job skipped, with their reasons, for the closing summary."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str | os.PathLike[str], reason: str) -> None:
        """Record a skipped file and log one line naming it and the reason."""
        self.skipped.append((str(path), reason))
        get_logger().warning("skipped %s: %s", path, reason)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        """One line: how many files were skipped."""
        if not self.skipped:
            return "no files skipped"
        return f"{len(self.skipped)} file(s) skipped (see the log lines above)"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same folder (same file system), so the final
    ``os.replace`` is atomic. On error the temporary file is removed and ``path``
    is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{_writer_tag()}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# ``.<name>.<host>-<pid>.<random>.tmp[suffix]``: the names atomic_path gives its temporary files
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[^.]+\.tmp")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _writer_tag() -> str:
    """``<host>-<pid>`` of the writing process (put into temporary file names)."""
    return f"{_host()}-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # os.kill(pid, 0) is no probe on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike[str], recursive: bool = False) -> int:
    """Delete temporary files that atomic writes of killed processes left in ``folder``.

    A job killed while writing leaves its ``.<name>.<host>-<pid>.<random>.tmp`` file
    behind (the final file is untouched). Such files written on this host by a process
    that no longer runs are removed; those of running processes, or of other hosts
    sharing the folder, are kept. Returns the number of files removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    host, n = _host(), 0
    for p in root.rglob(".*.tmp*") if recursive else root.glob(".*.tmp*"):
        m = _TEMP_NAME.match(p.name)
        if m is None or m["host"] != host or _process_alive(int(m["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    if n:
        get_logger().info("removed %d temporary file(s) of interrupted writes in %s", n, root)
    return n


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def file_sha1(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's content, read in chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    """Short SHA-1 of the canonical JSON of ``obj`` (for cache keys of settings)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha1(blob).hexdigest()[:16]

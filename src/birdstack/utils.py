"""Small shared helpers: atomic writes, hashing, errors, logging, progress.

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
import sys
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


def new_temp_path(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """Create an empty temporary file beside ``path`` and return its path.

    Its name (``.<name>.<host>-<pid>.<random>.tmp[suffix]``) says which process wrote
    it, so :func:`remove_stale_temp_files` can clean up after a killed writer.
    :func:`commit_temp` makes it ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{_writer_tag()}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    return Path(tmp)


def commit_temp(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Make a finished temporary file ``path``: flushed to disk first, then renamed.

    The data reach the disk before the name does, so a power cut cannot leave a
    complete-looking ``path`` with missing data. Any process may commit a file that
    another one wrote (the feature cache's workers write, its parent commits).
    """
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same folder (same file system), so the final
    ``os.replace`` is atomic. On error the temporary file is removed and ``path``
    is left untouched.
    """
    tmp_path = new_temp_path(path, suffix)
    try:
        yield tmp_path
        commit_temp(tmp_path, path)
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


# --------------------------------------------------------------------------- progress


def is_interactive(stream: Any = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is a terminal or a Jupyter kernel's output.

    Progress bars redraw themselves with carriage returns; anywhere else (a log file,
    a SLURM job, CI, ``nohup``, ``make demo > log``) that leaves a line of fragments.
    """
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    ipython = sys.modules.get("IPython")  # tqdm.auto draws a widget in a notebook
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # noqa: BLE001 - any failure means: not a notebook
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class LineProgress:
    """A progress report for logs: one plain line per interval, no carriage returns.

    The part of tqdm's interface birdstack uses (iterate, :meth:`update`, :meth:`close`,
    a context manager). A line is written when ``interval_s`` seconds passed since the
    last one or, with a known ``total``, each time another ``percent_step`` percent is
    done; :meth:`close` writes the closing line::

        >>> import io
        >>> buf = io.StringIO()
        >>> for _ in LineProgress(range(4), desc="files", unit="file", stream=buf,
        ...                       percent_step=50, clock=lambda: 0.0):
        ...     pass
        >>> print(buf.getvalue(), end="")
        files: 2/4 files (50%), 0 s elapsed, about 0 s left
        files: 4/4 files (100%), 0 s elapsed, about 0 s left
        files: done, 4 files in 0 s
    """

    def __init__(
        self,
        iterable: Any = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        stream: Any = None,
        interval_s: float = 30.0,
        percent_step: float = 10.0,
        clock: Any = None,
    ) -> None:
        import time

        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.disable = disable
        self.stream = stream
        self.interval_s = interval_s
        self.percent_step = percent_step
        self.clock = clock or time.monotonic
        self.n = 0
        self.start = self.last = self.clock()
        self.last_step = 0
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _write(self, line: str) -> None:
        stream = sys.stderr if self.stream is None else self.stream
        if stream is None:  # pythonw: no stderr at all
            return
        stream.write(line + "\n")
        stream.flush()

    def _count(self, n: int) -> str:
        plural = n != 1 and self.unit != "it" and not self.unit.endswith("s")
        return f"{n} {self.unit}{'s' if plural else ''}"

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        head = f"{self.desc}: " if self.desc else ""
        if not self.total:
            return f"{head}{self._count(self.n)}, {format_duration(elapsed)} elapsed"
        pct = 100.0 * self.n / self.total
        left = elapsed / self.n * (self.total - self.n) if self.n else float("nan")
        eta = f", about {format_duration(left)} left" if self.n else ""
        return (
            f"{head}{self.n}/{self._count(self.total)} ({pct:.0f}%), "
            f"{format_duration(elapsed)} elapsed{eta}"
        )

    def update(self, n: int = 1) -> None:
        """``n`` more items done; writes a line when an interval or a step is passed."""
        self.n += n
        if self.disable or self.closed:
            return
        now = self.clock()
        step = (
            int(100.0 * self.n / self.total // self.percent_step)
            if self.total and self.percent_step > 0
            else 0
        )
        if step > self.last_step or now - self.last >= self.interval_s:
            self._write(self._line(now))
            self.last, self.last_step = now, step

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for tqdm compatibility (not shown)."""

    def close(self) -> None:
        """Write the closing line (once); nothing when nothing was to be done."""
        if self.closed:
            return
        self.closed = True
        if self.disable or (self.n == 0 and not self.total):
            return
        elapsed = format_duration(self.clock() - self.start)
        head = f"{self.desc}: " if self.desc else ""
        if self.total and self.n < self.total:
            self._write(f"{head}stopped at {self.n}/{self._count(self.total)} after {elapsed}")
        else:
            self._write(f"{head}done, {self._count(self.n)} in {elapsed}")


def progress_bar(
    iterable: Any = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    stream: Any = None,
    interval_s: float = 30.0,
    percent_step: float = 10.0,
) -> Any:
    """A tqdm bar on a terminal (or in a notebook), else a :class:`LineProgress`.

    Both take ``iterable``/``total``/``desc``/``unit``/``disable`` and offer iteration,
    ``update(n)`` and ``close()``. ``stream``: where the progress goes (``sys.stderr``).
    Off a terminal (job logs, CI, redirected output) a plain line is written every
    ``interval_s`` seconds or ``percent_step`` percent instead of redrawing a bar.
    """
    if not disable and is_interactive(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream)
    return LineProgress(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        stream=stream,
        interval_s=interval_s,
        percent_step=percent_step,
    )

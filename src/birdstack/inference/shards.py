"""Archives larger than one machine: ``birdstack predict --shard K/N`` and ``birdstack merge``.

Each input recording belongs to one of ``N`` shards by a hash of its path relative to
the folder it was found in (for a file named on the command line: its name), so the
split is the same on every machine and adding files to the archive moves no other
file to another shard::

    >>> shard_of("site_a/2024-05-01_0500.wav", 4)
    2
    >>> Shard.parse("2/4").owns("site_a/2024-05-01_0500.wav")
    True

Shard ``K`` of ``N`` writes into the shared ``--out`` folder::

    OUT/.parts/<dir>/<stem>.json        per-recording results of its recordings (resume)
    OUT/raven/<dir>/<stem>.BirdStack.selection.table.txt        (--format raven)
    OUT/shards/K-of-N/detections.csv    its own combined files: its recordings only
    OUT/shards/K-of-N/recordings.csv
    OUT/shards/K-of-N/predictions.json                          (--format json)
    OUT/shards/K-of-N/shard.json        written last, when the shard is complete

Per-recording files have distinct names, so the shards never write the same file; a
rerun of a shard skips its finished recordings (as ``predict`` always does), and since
results are found by recording, not by shard, a rerun with another ``N`` or without
``--shard`` reuses them too. ``shard.json`` lists the shard's recordings with their
positions in the whole (sorted) input list, a fingerprint of that list and of the
settings; :func:`merge` checks that all ``N`` shards finished on the same inputs and
settings and writes ``OUT/detections.csv``, ``OUT/recordings.csv`` and
``OUT/predictions.json`` exactly as one unsharded run would (same rows, same order).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birdstack.config import ConfigError
from birdstack.utils import BirdstackError, atomic_write_json

SHARD_VERSION = 1
MANIFEST = "shard.json"
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_DIR = re.compile(r"(\d+)-of-(\d+)")


def shard_of(rel: str, n: int) -> int:
    """The shard (``0..n-1``) of an input: SHA-1 of its relative path (``/``-separated) mod n."""
    return int(hashlib.sha1(rel.encode("utf-8")).hexdigest(), 16) % n


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``--shard index/count``, index from 0)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` (``0 <= K < N``), e.g. ``$SLURM_ARRAY_TASK_ID/$N``; ConfigError otherwise."""
        m = _SPEC.fullmatch(text)
        if m is None:
            raise ConfigError(
                f"--shard {text!r}: expected K/N, shard K (counted from 0) of N, e.g. 0/4"
            )
        k, n = int(m[1]), int(m[2])
        if n < 1:
            raise ConfigError(f"--shard {text}: the number of shards N must be at least 1")
        if not 0 <= k < n:
            raise ConfigError(
                f"--shard {text}: shard K must be from 0 to {n - 1} (shards are counted from 0, "
                f"as SLURM's --array=0-{n - 1} does)"
            )
        return cls(k, n)

    @property
    def name(self) -> str:
        """``K-of-N``: the shard's folder under ``OUT/shards/``."""
        return f"{self.index}-of-{self.count}"

    def owns(self, rel: str) -> bool:
        """Whether the input with relative path ``rel`` belongs to this shard."""
        return shard_of(rel, self.count) == self.index

    def folder(self, out: str | os.PathLike[str]) -> Path:
        """Where this shard's combined files and ``shard.json`` go."""
        return Path(out) / "shards" / self.name


def inputs_fingerprint(keys: Sequence[str]) -> str:
    """SHA-1 of the ordered list of all inputs' keys (equal on every shard of one job)."""
    return hashlib.sha1("\n".join(keys).encode("utf-8")).hexdigest()


def start_shard(out: str | os.PathLike[str], shard: Shard) -> None:
    """Mark ``shard`` unfinished (remove its ``shard.json``) before it runs."""
    (shard.folder(out) / MANIFEST).unlink(missing_ok=True)


def finish_shard(
    out: str | os.PathLike[str],
    shard: Shard,
    all_keys: Sequence[str],
    mine: Sequence[tuple[int, str, bool]],
    settings: str,
    formats: Sequence[str],
    model: Mapping[str, Any],
) -> Path:
    """Write ``shard.json``: the shard is complete.

    ``all_keys``: the keys of every input in order (all shards); ``mine``: this shard's
    ``(position, key, has_result)``; ``settings``: the writer's settings hash.
    """
    path = shard.folder(out) / MANIFEST
    atomic_write_json(
        path,
        {
            "version": SHARD_VERSION,
            "shard": shard.index,
            "shards": shard.count,
            "n_inputs": len(all_keys),
            "inputs_sha1": inputs_fingerprint(all_keys),
            "settings": settings,
            "formats": list(formats),
            "model": dict(model),
            "recordings": [[i, key, bool(ok)] for i, key, ok in mine],
        },
    )
    return path


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge` did."""

    shards: int
    recordings: int
    without_result: int
    written: list[Path]
    raven: bool


def _shard_counts(out: Path) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    root = out / "shards"
    if root.is_dir():
        for d in sorted(root.iterdir()):
            m = _DIR.fullmatch(d.name)
            if m and d.is_dir():
                found.setdefault(int(m[2]), []).append(int(m[1]))
    return found


def _load_manifests(out: Path, n: int) -> dict[int, dict[str, Any]]:
    manifests: dict[int, dict[str, Any]] = {}
    unfinished: list[int] = []
    for k in range(n):
        path = Shard(k, n).folder(out) / MANIFEST
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            unfinished.append(k)
            continue
        except (OSError, json.JSONDecodeError) as e:
            raise BirdstackError(f"{path}: unreadable ({e}); rerun shard {k}/{n}") from e
        if doc.get("version") != SHARD_VERSION or (doc.get("shard"), doc.get("shards")) != (k, n):
            raise BirdstackError(f"{path}: not a shard {k}/{n} record of this birdstack version")
        manifests[k] = doc
    if unfinished:
        which = ", ".join(f"{k}/{n}" for k in unfinished)
        raise BirdstackError(
            f"{out}: {len(unfinished)} of {n} shard(s) have not finished ({which}: no "
            f"shards/K-of-N/{MANIFEST}); run or rerun `birdstack predict ... --out {out} "
            f"--shard K/{n}` for them (finished recordings are not predicted again), then merge"
        )
    return manifests


def _check_same(manifests: Mapping[int, Mapping[str, Any]], n: int, out: Path) -> None:
    for field, what in (
        ("inputs_sha1", "lists of input files (files added or removed between the runs?)"),
        ("settings", "settings (model, options)"),
    ):
        groups: dict[str, list[int]] = {}
        for k, doc in manifests.items():
            groups.setdefault(str(doc.get(field)), []).append(k)
        if len(groups) > 1:
            parts = "; ".join(
                "shards " + ", ".join(f"{k}/{n}" for k in ks) for ks in groups.values()
            )
            raise BirdstackError(
                f"{out}: the shards were run on different {what}: {parts}. Rerun the shards "
                f"with the same paths and options (finished recordings are reused), then merge"
            )


def merge(out: str | os.PathLike[str], shards: int | None = None) -> MergeResult:
    """Join the outputs of ``--shard K/N`` runs in ``out`` into the unsharded combined files.

    ``shards``: which ``N`` (needed only when shards of several ``N`` are in ``out``).
    Raises :class:`~birdstack.config.ConfigError` when ``out`` holds no shard outputs
    (or not of ``shards``), :class:`~birdstack.utils.BirdstackError` when a shard has not
    finished or the shards do not belong together.
    """
    from birdstack.inference.writers import OutputOptions, PredictionWriter

    root = Path(out)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder (merge wants the --out folder of the shards)")
    counts = _shard_counts(root)
    if not counts:
        raise ConfigError(
            f"{root}: no shard outputs to merge (no {root / 'shards'}/K-of-N/ folders); write "
            f"them with `birdstack predict ... --out {root} --shard K/N`"
        )
    if shards is None:
        if len(counts) > 1:
            listed = ", ".join(f"N={n}" for n in sorted(counts))
            raise ConfigError(
                f"{root}: holds shards of several splits ({listed}); say which with --shards N"
            )
        (n,) = counts
    else:
        if shards not in counts:
            listed = ", ".join(f"N={n}" for n in sorted(counts)) or "none"
            raise ConfigError(f"{root}: no shards of N={shards} (found: {listed})")
        n = shards
    manifests = _load_manifests(root, n)
    _check_same(manifests, n, root)
    ref = manifests[0]
    entries = sorted(
        (int(i), str(key), bool(ok), k)
        for k, doc in manifests.items()
        for i, key, ok in doc["recordings"]
    )
    if [e[0] for e in entries] != list(range(int(ref["n_inputs"]))):
        raise BirdstackError(f"{root}: the shards' recordings do not add up to the inputs")
    writer = PredictionWriter(root, OutputOptions(formats=tuple(ref["formats"])), ref["model"])
    records = []
    for _, key, ok, k in entries:
        if not ok:  # no result in that shard's run (unreadable file): left out, as unsharded
            continue
        try:
            records.append(writer.load(key, settings=ref["settings"]))
        except (OSError, ValueError) as e:
            raise BirdstackError(
                f"{writer.part_path(key)}: the result of shard {k}/{n} is missing or was "
                f"rewritten by another run ({e}); rerun shard {k}/{n}, then merge"
            ) from e
    written = writer.write_combined(records)
    return MergeResult(
        shards=n,
        recordings=len(records),
        without_result=len(entries) - len(records),
        written=written,
        raven="raven" in ref["formats"],
    )

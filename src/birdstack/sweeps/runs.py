"""What a sweep is made of: experiments, their variants and planned runs, and variant labels.

Shared by :mod:`birdstack.sweeps.sweep` (parsing, planning, running) and
:mod:`birdstack.sweeps.report` (tables, figures, report.md), which do not import each
other at module level: the sweep calls the report once its runs are done.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from birdstack.config import Config


@dataclass(frozen=True)
class Variant:
    """One point of the comparison: a label and the dotted config keys it sets."""

    label: str
    slug: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file (see :mod:`birdstack.sweeps.sweep` for the format)."""

    name: str
    description: str
    base: dict[str, Any]
    variants: list[Variant]
    seeds: list[int]
    folds: list[int] | str
    figures_by: list[str] = field(default_factory=list)
    title: str | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    epoch: str = "best"
    path: Path | None = None


@dataclass(frozen=True)
class RunSpec:
    """One planned training run."""

    name: str
    variant: Variant
    fold: int
    seed: int
    config: Config

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out_dir)

    def status(self) -> str:
        """``done`` (result.json), ``resume`` (last checkpoint), ``failed`` or ``new``."""
        d = self.run_dir
        if (d / "result.json").is_file():
            return "done"
        if (d / "checkpoints" / "last.ckpt").is_file():
            return "resume"
        if (d / "error.txt").is_file():
            return "failed"
        return "new"


# ----------------------------------------------------------------------------- labels


def format_value(v: Any) -> str:
    """A config value as a label shows it (``true``, ``0.01``, ``adam``)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Last dotted part of each key (the section for ``name`` / ``kind``), or the whole key
    where two would clash: ``optim.name`` -> ``optim``, ``optim.lr`` -> ``lr``."""

    def short(k: str) -> str:
        parts = k.split(".")
        return parts[-2] if len(parts) > 1 and parts[-1] in ("name", "kind") else parts[-1]

    last = [short(k) for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def slugify(label: str) -> str:
    """A folder-safe form of a variant label.

    >>> slugify("optim=adam lr=0.01")
    'optim-adam_lr-0.01'
    """
    s = label.replace("=", "-")
    s = re.sub(r"\s+", "_", s.strip())
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", s)
    return s.strip("-_.") or "variant"


def label_of(overrides: dict[str, Any]) -> str:
    """The label of a grid point: ``short_key=value`` pairs, or ``base`` when empty."""
    short = _short_keys(list(overrides))
    return " ".join(f"{short[k]}={format_value(v)}" for k, v in overrides.items()) or "base"

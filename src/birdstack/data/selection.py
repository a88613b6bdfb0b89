"""The study's data-selection rules, as pure functions on the metadata table.

Each rule takes the table from :func:`birdstack.data.metadata.load_metadata` (or a
subset of it) and never modifies it. Rules that remove recordings return
``(kept, dropped)``: two slices of the input that keep its index, ``dropped`` with a
``drop_reason`` column saying why. Defaults are the study's (see
:class:`birdstack.config.DataConfig`): the 6 species with most recordings, recordings
whose secondary labels name a kept species dropped, classes capped at the smallest
class count. After all the rules, :func:`check_class_sizes` stops a selection that
leaves a class with fewer than a handful of recordings (``data.min_class_recordings``)::

    >>> import pandas as pd
    >>> df = pd.DataFrame({
    ...     "rec_id": ["a1", "a2", "a3", "b1", "b2"],
    ...     "primary_label": ["a", "a", "a", "b", "b"],
    ...     "secondary_labels": [[], ["b"], [], [], []],
    ... })
    >>> select_species(df, top_k=2)
    ['a', 'b']
    >>> kept, dropped = drop_secondary(df, ["a", "b"])
    >>> dropped["drop_reason"].tolist()
    ['secondary label names kept species b']
    >>> kept, dropped = balance(kept, seed=0)
    >>> kept["primary_label"].value_counts().to_dict()
    {'a': 2, 'b': 2}
    >>> encode_labels(["b", "a"])
    {'a': 0, 'b': 1}
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from birdstack.config import ConfigError
from birdstack.utils import BirdstackError


def select_species(
    df: pd.DataFrame,
    top_k: int | None = 6,
    species: Sequence[str] | None = None,
    min_recordings: int = 1,
) -> list[str]:
    """The species to keep.

    An explicit ``species`` list wins (order kept, duplicates removed); a name that is
    not a ``primary_label`` of ``df`` is an error listing the available ones. Otherwise
    the ``top_k`` labels by number of rows of ``df`` (study: 6), most first, ties broken
    by label name so the choice is deterministic, counting only labels with at least
    ``min_recordings`` rows (study: 1). ``top_k=None``: every such label. Count on the
    rows still in play (drop missing files first).
    """
    counts = df["primary_label"].value_counts()
    if species is not None:
        wanted = list(dict.fromkeys(str(s).strip() for s in species))
        if not wanted:
            raise BirdstackError("data.species is an empty list; name at least 2 species")
        unknown = [s for s in wanted if s not in counts.index]
        if unknown:
            raise BirdstackError(
                f"unknown species {', '.join(repr(u) for u in unknown)} in data.species; "
                f"available: {', '.join(sorted(counts.index))}"
            )
        return wanted
    if top_k is not None and top_k < 1:
        raise BirdstackError(f"top_k={top_k} must be >= 1")
    ranked = sorted(
        ((label, int(n)) for label, n in counts.items() if n >= min_recordings),
        key=lambda item: (-item[1], item[0]),
    )
    if not ranked:
        raise BirdstackError(
            f"no species has at least {min_recordings} recording(s) "
            f"(most: {int(counts.max()) if len(counts) else 0}); lower data.min_recordings"
        )
    chosen = ranked if top_k is None else ranked[:top_k]
    return [label for label, _ in chosen]


def filter_species(df: pd.DataFrame, species: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows whose primary label is in ``species``; the others with ``"species not selected"``."""
    mask = df["primary_label"].isin(list(species))
    dropped = df[~mask].copy()
    dropped["drop_reason"] = "species not selected"
    return df[mask].copy(), dropped


def drop_secondary(df: pd.DataFrame, kept: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop recordings whose ``secondary_labels`` name a kept species other than their own.

    The study's rule: a recording that also contains another class's song would teach
    the model the wrong label. Reason: ``"secondary label names kept species X[, Y]"``.
    """
    kept_set = set(kept)
    reasons: list[str] = []
    for primary, secondary in zip(df["primary_label"], df["secondary_labels"]):
        named = [s for s in (secondary or []) if s in kept_set and s != primary]
        reasons.append(
            f"secondary label names kept species {', '.join(sorted(set(named)))}" if named else ""
        )
    reason = pd.Series(reasons, index=df.index, dtype=object)
    mask = reason != ""
    dropped = df[mask].copy()
    dropped["drop_reason"] = reason[mask]
    return df[~mask].copy(), dropped


def balance(df: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cap every class at the smallest class count by a seeded random choice.

    The study's rule. The choice per class depends only on ``seed``, the class name and
    the class's ``rec_id`` set (not on row order or on the other classes' rows, apart
    from the cap). Reason: ``"balance: class capped at N"``.
    """
    if df.empty:
        return df.copy(), df.assign(drop_reason=pd.Series(dtype=object))
    counts = df["primary_label"].value_counts()
    cap = int(counts.min())
    drop_idx: list = []
    for label in sorted(counts.index):
        rows = df[df["primary_label"] == label]
        if len(rows) <= cap:
            continue
        keys = rows["rec_id"] if "rec_id" in rows else pd.Series(rows.index, index=rows.index)
        order = rows.index[np.argsort(keys.astype(str).to_numpy(), kind="stable")]
        rng = np.random.default_rng([seed, zlib.crc32(str(label).encode("utf-8"))])
        keep = set(rng.choice(len(order), size=cap, replace=False).tolist())
        drop_idx.extend(order[i] for i in range(len(order)) if i not in keep)
    mask = df.index.isin(drop_idx)
    dropped = df[mask].copy()
    dropped["drop_reason"] = f"balance: class capped at {cap}"
    return df[~mask].copy(), dropped


def encode_labels(classes: Iterable[str]) -> dict[str, int]:
    """Class name -> index: the names sorted alphabetically (by code point), then 0..K-1.

    Sorting makes the index independent of the order species were selected in, so a
    checkpoint's output ``i`` always means the ``i``-th class name in sorted order.
    """
    return {name: i for i, name in enumerate(sorted(set(classes)))}


# what to try when a rule removed recordings: (the rule's drop_reason prefix, the advice)
_REMEDIES = (
    ("shorter than the stacked target", "--short pad (pad short recordings instead of dropping)"),
    ("balance:", "--no-balance (do not cap every class at the smallest class count)"),
    (
        "secondary label names",
        "--keep-secondary (keep recordings whose secondary labels name another kept species)",
    ),
    ("unreadable audio", "replace the unreadable files (see the manifest's drop_reason)"),
    ("file not found", "add the missing files (see the manifest's drop_reason)"),
)


def rule_of(reason: str) -> str:
    """A ``drop_reason`` without its per-recording details, so reasons count per rule.

    >>> rule_of("secondary label names kept species a, c")
    'secondary label names a kept species'
    >>> rule_of("unreadable audio: truncated Ogg stream")
    'unreadable audio'
    >>> rule_of("balance: class capped at 3")
    'balance: class capped at 3'
    """
    if reason.startswith("secondary label names"):
        return "secondary label names a kept species"
    for prefix in ("unreadable audio", "single session"):
        if reason.startswith(prefix):
            return prefix
    return reason


def check_class_sizes(df: pd.DataFrame, classes: Sequence[str], minimum: int) -> None:
    """Stop when a selected class has fewer than ``minimum`` recordings left after the rules.

    ``df``: the manifest so far (``primary_label``, ``dropped``, ``drop_reason``);
    ``classes``: the species the selection picked. The :class:`ConfigError` names each
    such class, how many recordings it has left of how many, how many each rule removed,
    and what to do. ``minimum=0``: no check. A class that ``data.single_session=drop``
    left out on purpose is not counted.

    >>> df = pd.DataFrame({"primary_label": ["a"] * 3 + ["b"] * 6,
    ...                    "dropped": [False, True, True] + [False] * 6,
    ...                    "drop_reason": ["", "balance: class capped at 1", "x"] + [""] * 6})
    >>> check_class_sizes(df, ["a", "b"], 5)
    Traceback (most recent call last):
    ...
    birdstack.config.ConfigError: too few recordings left: 1 of the 2 selected classes ...
    """
    if minimum <= 0:
        return
    short: list[tuple[int, str, int, dict[str, int]]] = []
    for c in classes:
        rows = df[df["primary_label"] == c]
        gone = rows["dropped"].astype(bool)
        reasons = rows.loc[gone, "drop_reason"].astype(str).map(rule_of)
        if (reasons == "single session").any():
            continue  # left out on purpose (data.single_session=drop)
        left = int((~gone).sum())
        if left < minimum:
            counts = {str(r): int(n) for r, n in reasons.value_counts().items()}
            short.append((left, c, len(rows), counts))
    if not short:
        return
    short.sort()
    lines = [
        f"too few recordings left: {len(short)} of the {len(classes)} selected classes "
        f"{'has' if len(short) == 1 else 'have'} fewer than {minimum} "
        "(data.min_class_recordings) after the selection rules:"
    ]
    rules: set[str] = set()
    for left, c, total, counts in short:
        removed = ", ".join(
            f"{n} '{r}'" for r, n in sorted(counts.items(), key=lambda i: (-i[1], i[0]))
        )
        lines.append(f"  {c}: {left} left of {total} (removed: {removed or 'none'})")
        rules.update(counts)
    todo = [fix for prefix, fix in _REMEDIES if any(r.startswith(prefix) for r in rules)]
    todo += [
        "fewer species (--top-k N or --species ..., leaving the small classes out)",
        "or accept fewer with --min-class-recordings N (data.min_class_recordings; 0: no check)",
    ]
    lines.append("A class needs a handful of recordings to train and validate on. Try: ")
    lines[-1] += "; ".join(todo) + "."
    raise ConfigError("\n".join(lines))

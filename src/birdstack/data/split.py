"""Cross-validation folds: stratified by species, grouped by recording session.

Recordings made by the same person on the same day share background, equipment and
often the very same bird; if they land on both sides of a split, validation scores
are optimistic. A *session* is therefore ``author | date`` when both are known, else
the recording itself (:func:`session_ids`), and :func:`assign_folds` keeps every
session inside one fold with scikit-learn's ``StratifiedGroupKFold``::

    >>> import pandas as pd
    >>> df = pd.DataFrame({
    ...     "rec_id": [f"r{i}" for i in range(8)],
    ...     "primary_label": ["a"] * 4 + ["b"] * 4,
    ...     "author": ["x", "x", "y", "z", "u", "v", "w", "t"],
    ...     "date": ["2020-01-01"] * 8,
    ... })
    >>> folded, report = assign_folds(df, n_folds=2, seed=0)
    >>> bool(folded.loc[0, "fold"] == folded.loc[1, "fold"])  # same session, same fold
    True
    >>> train, val = train_val(folded, val_fold=0)

A class whose recordings all come from **one** session cannot be validated without
leakage; ``single_session`` says what to do with it: ``"split"`` (default) splits that
class by file across the folds, with a warning in the report; ``"drop"`` leaves the
class out (its rows are in ``report.dropped`` with a reason); ``"error"`` raises
:class:`~birdstack.utils.BirdstackError`; ``"keep"`` keeps it grouped, in one fold
(multi-label soundscapes, where groups are blocks of files). A ``group`` column, when
present and set, is the session (see :func:`session_ids`). A class with fewer sessions than folds is
kept, grouped, and only appears in some validation folds (a warning says so).
"""

from __future__ import annotations

import warnings as _warnings
import zlib
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from birdstack.utils import BirdstackError

SINGLE_SESSION_MODES = ("split", "drop", "error", "keep")
_UNKNOWN = {"", "nan", "none", "null", "unknown", "?", "0000-00-00", "nat"}


@dataclass
class SplitReport:
    """What :func:`assign_folds` did, for ``prepare`` to print and record."""

    n_folds: int
    seed: int
    sessions_per_class: dict[str, int] = field(default_factory=dict)
    single_session: list[str] = field(default_factory=list)
    few_sessions: dict[str, int] = field(default_factory=dict)
    split_by_file: list[str] = field(default_factory=list)
    dropped: dict[Hashable, str] = field(default_factory=dict)
    fold_sizes: dict[int, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _clean(values: pd.Series | None, index: pd.Index) -> pd.Series:
    if values is None:
        return pd.Series("", index=index, dtype=object)
    s = values.astype(object).where(values.notna(), "").astype(str)
    s = s.str.strip().str.replace(r"\s+", " ", regex=True)
    return s.where(~s.str.lower().isin(_UNKNOWN), "")


def session_ids(df: pd.DataFrame) -> pd.Series:
    """``"author | date"`` when both are known and non-empty, else the recording's ``rec_id``.

    Whitespace is normalised; ``""``, ``nan``, ``unknown``, ``?`` and ``0000-00-00`` count as
    unknown. Without a ``rec_id`` column the row index stands in for it.
    """
    rec = df["rec_id"].astype(str) if "rec_id" in df else pd.Series(df.index.astype(str), df.index)
    author = _clean(df.get("author"), df.index)
    date = _clean(df.get("date"), df.index)
    known = (author != "") & (date != "")
    out = (author + " | " + date).where(known, rec)
    if "group" in df:  # a group given by the caller (e.g. a block of file numbers) wins
        group = _clean(df["group"], df.index)
        out = group.where(group != "", out)
    return out.astype(object).rename("session")


def assign_folds(
    df: pd.DataFrame,
    n_folds: int = 5,
    seed: int = 0,
    single_session: str = "split",
    warn_classes: Collection[str] | None = None,
) -> tuple[pd.DataFrame, SplitReport]:
    """Add ``session`` and ``fold`` (``0..n_folds-1``) columns; see the module docstring.

    Multi-session classes go through ``StratifiedGroupKFold(n_folds, shuffle=True,
    random_state=seed)`` with sessions as groups (rows sorted by ``rec_id`` first, so
    the result does not depend on row order); no session then has rows in two folds.
    ``warn_classes``: the classes whose few sessions are worth a warning (default: all;
    ``prepare`` leaves out species kept only as negatives).
    Single-session classes with ``single_session="split"`` are dealt round-robin over
    the folds after a seeded shuffle. Returns the folded copy (index kept; rows of
    classes dropped by ``"drop"`` left out) and a :class:`SplitReport`.
    """
    if single_session not in SINGLE_SESSION_MODES:
        raise BirdstackError(
            f"single_session={single_session!r}: use one of {', '.join(SINGLE_SESSION_MODES)}"
        )
    if n_folds < 2:
        raise BirdstackError(f"n_folds={n_folds} must be >= 2")
    if df.empty:
        raise BirdstackError("no recordings left to split into folds")
    if not df.index.is_unique:
        raise BirdstackError("assign_folds needs a table with a unique index")

    out = df.copy()
    out["session"] = session_ids(out)
    report = SplitReport(n_folds=n_folds, seed=seed)
    n_sess = out.groupby("primary_label")["session"].nunique().sort_index()
    report.sessions_per_class = {str(k): int(v) for k, v in n_sess.items()}
    single = [str(c) for c, n in n_sess.items() if n == 1 and single_session != "keep"]
    report.single_session = single
    report.few_sessions = {str(c): int(n) for c, n in n_sess.items() if 1 < n < n_folds}
    if single_session == "keep":  # groups are blocks of files: one short summary, not a list
        few = sum(1 for n in n_sess if n < n_folds)
        if few:
            report.warnings.append(
                f"{few} of {len(n_sess)} classes (by primary label) lie in fewer groups than "
                f"{n_folds} folds, so they are validated in only some folds"
            )
        report.few_sessions = {}

    by_file = pd.Series(False, index=out.index)
    if single:
        desc = "; ".join(
            f"{c} ({int((out['primary_label'] == c).sum())} recordings, session "
            f"{out.loc[out['primary_label'] == c, 'session'].iloc[0]!r})"
            for c in single
        )
        if single_session == "error":
            raise BirdstackError(
                f"all recordings of {desc} come from one recording session, so the class "
                "cannot be validated without the same session in training and validation. "
                "Set data.single_session=split (split it by file, with that leakage, "
                "warned) or data.single_session=drop (leave the class out), or add "
                "recordings from other sessions"
            )
        mask = out["primary_label"].isin(single)
        if single_session == "drop":
            for idx, label in out.loc[mask, "primary_label"].items():
                report.dropped[idx] = (
                    f"single session: every recording of {label} is from one session, "
                    "so it cannot be validated without leakage (data.single_session=drop)"
                )
            report.warnings.append(
                f"left out {desc}: one recording session only (data.single_session=drop)"
            )
            out = out[~mask].copy()
            by_file = by_file[~mask]
        else:
            by_file = mask
            report.split_by_file = single
            for c in single:
                if warn_classes is not None and c not in warn_classes:
                    continue
                report.warnings.append(
                    f"{c}: all recordings come from one session; split by file across "
                    "folds, so its validation score is optimistic (same session in train "
                    "and val); data.single_session=drop leaves it out instead"
                )
    for c, n in report.few_sessions.items():
        if warn_classes is not None and c not in warn_classes:
            continue
        report.warnings.append(
            f"{c}: only {n} recording sessions, fewer than {n_folds} folds: it is in the "
            f"validation set of at most {n} folds"
        )

    out["fold"] = -1
    grouped = out[~by_file]
    if len(grouped):
        grouped = grouped.iloc[np.argsort(grouped["rec_id"].astype(str).to_numpy(), kind="stable")]
        n_groups = grouped["session"].nunique()
        if n_groups < n_folds:
            raise BirdstackError(
                f"only {n_groups} recording session(s) to spread over {n_folds} folds; "
                f"lower data.n_folds to at most {max(2, n_groups)} or add recordings"
            )
        splits = _stratified_group_folds(
            grouped["primary_label"].astype(str).to_numpy(),
            grouped["session"].astype(str).to_numpy(),
            n_folds,
            seed,
        )
        for fold, (_, test) in enumerate(splits):
            out.loc[grouped.index[test], "fold"] = fold
    for c in report.split_by_file:
        rows = out[out["primary_label"] == c]
        order = rows.index[np.argsort(rows["rec_id"].astype(str).to_numpy(), kind="stable")]
        rng = np.random.default_rng([seed, zlib.crc32(c.encode("utf-8"))])
        perm = rng.permutation(len(order))
        start = int(rng.integers(n_folds))
        for i, j in enumerate(perm):
            out.loc[order[j], "fold"] = (start + i) % n_folds
    out["fold"] = out["fold"].astype(int)

    sizes = out["fold"].value_counts()
    report.fold_sizes = {f: int(sizes.get(f, 0)) for f in range(n_folds)}
    empty = [f for f, n in report.fold_sizes.items() if n == 0]
    if empty:
        report.warnings.append(f"fold(s) {', '.join(map(str, empty))} got no recordings")
    return out, report


def _stratified_group_folds(
    y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split`` as a list.

    scikit-learn refuses when *every* class has fewer members than ``n_folds`` (small
    balanced data sets, e.g. the demo at 4 per class and 5 folds), although its greedy
    assignment works fine there. In that case the same algorithm (scikit-learn 1.x:
    shuffle the groups, sort them by the spread of their class counts, put each in the
    fold that keeps the class proportions most even, ties to the smallest fold) runs
    here; a test checks both give the same folds where scikit-learn accepts the input.
    """
    _, y_cnt = np.unique(y, return_counts=True)
    if not np.all(n_folds > y_cnt):
        sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        with _warnings.catch_warnings():
            # "least populated class has only N members": reported per class instead
            _warnings.simplefilter("ignore", UserWarning)
            return list(sgkf.split(np.zeros(len(y)), y, groups))
    return _greedy_group_folds(y, groups, n_folds, seed)


def _greedy_group_folds(
    y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's ``StratifiedGroupKFold`` assignment without its class-size check."""
    rng = np.random.RandomState(seed)
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    _, groups_inv, groups_cnt = np.unique(groups, return_inverse=True, return_counts=True)
    counts = np.zeros((len(groups_cnt), len(y_cnt)))
    np.add.at(counts, (groups_inv, y_inv), 1)
    perm = np.arange(len(groups_cnt))
    rng.shuffle(perm)
    counts = counts[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(perm.size)
    groups_inv = inv_perm[groups_inv]
    per_fold = np.zeros((n_folds, len(y_cnt)))
    fold_of_group = np.empty(len(groups_cnt), dtype=int)
    for g in np.argsort(-np.std(counts, axis=1), kind="stable"):
        best, best_eval, best_n = 0, np.inf, np.inf
        for i in range(n_folds):
            per_fold[i] += counts[g]
            fold_eval = np.mean(np.std(per_fold / y_cnt.reshape(1, -1), axis=0))
            per_fold[i] -= counts[g]
            n_in_fold = np.sum(per_fold[i])
            if fold_eval < best_eval or (np.isclose(fold_eval, best_eval) and n_in_fold < best_n):
                best, best_eval, best_n = i, fold_eval, n_in_fold
        per_fold[best] += counts[g]
        fold_of_group[g] = best
    row_fold = fold_of_group[groups_inv]
    idx = np.arange(len(y))
    return [(idx[row_fold != f], idx[row_fold == f]) for f in range(n_folds)]


def sessions_straddling_folds(df: pd.DataFrame, exempt: Iterable[str] = ()) -> dict[str, list[int]]:
    """Sessions with rows in more than one fold (ignoring classes in ``exempt``).

    Empty after :func:`assign_folds` when ``exempt`` holds ``report.split_by_file``.
    """
    rows = df[~df["primary_label"].isin(list(exempt))]
    session = rows["session"] if "session" in rows else session_ids(rows)
    folds = rows["fold"].groupby(session).unique()
    return {str(s): sorted(int(f) for f in fs) for s, fs in folds.items() if len(fs) > 1}


def train_val(df: pd.DataFrame, val_fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, val)``: rows of fold ``val_fold`` are validation, other folds training.

    Rows with a negative fold (unassigned) are in neither.
    """
    if "fold" not in df:
        raise BirdstackError("no 'fold' column: run assign_folds first")
    folds = sorted(int(f) for f in df["fold"].unique() if f >= 0)
    if val_fold not in folds:
        raise BirdstackError(
            f"val_fold={val_fold} has no recordings; folds present: {folds or 'none'}"
        )
    train = df[(df["fold"] >= 0) & (df["fold"] != val_fold)].copy()
    val = df[df["fold"] == val_fold].copy()
    return train, val

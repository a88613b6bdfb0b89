"""``prepare``: metadata -> selection rules -> features (cached) -> encoding rule -> splits.

    >>> from birdstack.config import DataConfig, Preprocessing
    >>> prepared = prepare(DataConfig(path="data/birds-demo"), Preprocessing())  # doctest: +SKIP
    >>> prepared.classes  # doctest: +SKIP

The order of the study's rules, each recorded in the manifest's ``drop_reason``:

1. files that are missing or cannot be decoded are dropped;
2. the K species with most recordings are kept (or an explicit ``species`` list);
3. recordings whose secondary labels name a kept species are dropped;
4. ``stacked``: the target length is computed (mean frames per class, averaged over
   classes, times ``trim_factor``) and shorter recordings are padded (the default), or
   dropped (``encoding.short=drop``, the study's rule);
5. classes are balanced (each capped at the smallest class count, seeded);
6. folds: stratified by species, grouped by recording session;
7. every selected class must keep ``data.min_class_recordings`` recordings (default 5),
   else prepare stops with a :class:`~birdstack.config.ConfigError` naming the class,
   what it has left and which rule removed how many (``0``: no check);
8. ``data.exclude_folds`` (nested cross-validation) leaves whole folds out; the classes
   and the other folds stay those of the full selection.

The output folder gets ``manifest.csv`` (one row per recording), ``classes.json``
and ``prepare.json`` (the resolved preprocessing, with the target length).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from birdstack.config import ConfigError, DataConfig, Preprocessing, TaskConfig, to_dict
from birdstack.data.metadata import load_metadata, split_missing
from birdstack.data.selection import (
    balance,
    check_class_sizes,
    drop_secondary,
    encode_labels,
    filter_species,
    select_species,
)
from birdstack.data.split import assign_folds
from birdstack.features.cache import FeatureCache
from birdstack.features.encoding import target_frames_rule
from birdstack.utils import (
    BadInputError,
    SkipLog,
    atomic_write_json,
    atomic_write_text,
    get_logger,
    remove_stale_temp_files,
)

log = get_logger("prepare")

MANIFEST_COLUMNS = [
    "rec_id",
    "path",
    "primary_label",
    "label_idx",
    "split",
    "fold",
    "session",
    "duration_s",
    "frames",
    "padded",
    "dropped",
    "drop_reason",
    "cache_file",
]


def default_cache_dir() -> Path:
    """``$BIRDSTACK_CACHE``, else ``$XDG_CACHE_HOME/birdstack/features``, else ``~/.cache/...``."""
    if env := os.environ.get("BIRDSTACK_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "birdstack" / "features"


def cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The feature cache folder: ``data.cache_dir`` when set, else :func:`default_cache_dir`."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


def resolve_frontend(preprocessing: Preprocessing) -> Preprocessing:
    """Record the BirdNET model's sha256 in the preprocessing (refusing a different one).

    The checkpoint carries it, so a run can only be resumed, evaluated or used for
    prediction with the model its features came from.
    """
    if not preprocessing.is_birdnet:
        return preprocessing
    from birdstack.features.birdnet import check_identity

    ident = check_identity(preprocessing.birdnet, "this configuration")
    bn = dataclasses.replace(preprocessing.birdnet, sha256=ident["sha256"])
    return dataclasses.replace(preprocessing, birdnet=bn)


@dataclass
class PreparedData:
    """The result of :func:`prepare`."""

    manifest: pd.DataFrame
    classes: list[str]
    preprocessing: Preprocessing
    data: DataConfig
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def kept(self) -> pd.DataFrame:
        """Rows used for training/validation."""
        return self.manifest[~self.manifest["dropped"]].reset_index(drop=True)


def _drop_rows(df: pd.DataFrame, dropped: pd.DataFrame) -> None:
    """Mark the rows of ``dropped`` (a rule's ``(kept, dropped)`` output) with their reasons."""
    if len(dropped):
        _drop(df, df.index.isin(dropped.index), dropped["drop_reason"].reindex(df.index))


def _drop(df: pd.DataFrame, mask: pd.Series, reason: str | pd.Series) -> None:
    sel = mask & ~df["dropped"]
    df.loc[sel, "dropped"] = True
    df.loc[sel, "drop_reason"] = reason if isinstance(reason, str) else reason[sel]


def row_labels(df: pd.DataFrame) -> pd.Series:
    """Every row's species (multi-label): a soundscape's event species, else primary +
    secondary labels."""
    from birdstack.data.annotations import has_events, parse_events, target_labels

    out = []
    for _, r in df.iterrows():
        if has_events(r.get("events")):
            out.append(target_labels(parse_events(r["events"])))
        else:
            sec = r.get("secondary_labels")
            sec = list(sec) if isinstance(sec, (list, tuple)) else []
            prim = [str(r["primary_label"])] if str(r["primary_label"]) else []
            out.append(list(dict.fromkeys(prim + [str(x) for x in sec])))
    return pd.Series(out, index=df.index, dtype=object)


def _select_multilabel(df: pd.DataFrame, data: DataConfig) -> list[str]:
    """Multi-label species selection: labels ranked by their own recordings.

    A focal recording counts for its primary label (the species it was made of, as in
    the single-label task; its secondary labels are background birds and stay targets
    without ranking their species), a soundscape clip for every species of its events.
    An explicit ``data.species`` may name any label, secondary ones included.
    Focal recordings (no events) of species outside the selection are dropped as in
    the single-label task, or kept as negatives (``data.other_species``); soundscapes
    and negatives stay (their other species are simply not targets).
    """
    live = df[~df["dropped"]]
    every = [lab for labs in live["labels"] for lab in dict.fromkeys(labs)]
    if not every:
        raise ConfigError(f"{data.path}: no species labels found in the data")
    if data.species is not None:
        ranked = every
    else:
        ranked = [
            lab
            for soundscape, negative, prim, labs in zip(
                live["is_soundscape"], live["negative"], live["primary_label"], live["labels"]
            )
            if not negative
            for lab in (dict.fromkeys(labs) if soundscape else [str(prim)] if str(prim) else [])
        ]
    classes = select_species(
        pd.DataFrame({"primary_label": ranked}),
        top_k=data.top_k,
        species=data.species,
        min_recordings=data.min_recordings,
    )
    focal = ~df["is_soundscape"] & ~df["negative"]
    others = focal & ~df["primary_label"].isin(classes) & ~df["dropped"]
    if data.other_species == "negatives":
        # outlier exposure: other birds are what a detector must learn not to report;
        # a secondary label of a selected species keeps the recording a positive for it
        chosen = set(classes)
        no_target = pd.Series([not chosen.intersection(labs) for labs in df["labels"]], df.index)
        df.loc[others & no_target, "negative"] = True
    else:
        _drop(df, others, "species not selected")
    return classes


def _drop_target_negatives(df: pd.DataFrame, classes: list[str]) -> str | None:
    """Leave out the ``data.negatives`` files that their folder says hold a selected
    species (``negative_species``, see :func:`~birdstack.data.annotations.load_negatives`):
    a recording of a target species taught as "none of them" would teach the detector to
    miss it. Returns the warning, or None."""
    if "negative_species" not in df:
        return None
    chosen = set(classes)
    named = [
        sorted(chosen.intersection(v)) if isinstance(v, list) else []
        for v in df["negative_species"]
    ]
    hit = pd.Series([bool(n) for n in named], index=df.index) & df["negative"] & ~df["dropped"]
    del df["negative_species"]
    if not hit.any():
        return None
    species = sorted({c for n, h in zip(named, hit) if h for c in n})
    _drop(df, hit, "data.negatives: a recording of a selected species")
    first = df.loc[hit, "path"].iloc[0]
    return (
        f"data.negatives: {int(hit.sum())} file(s) are recordings of selected species "
        f"({', '.join(species)}; e.g. {first}): left out, not taught as negatives; add "
        "them to --data to train on them as recordings of their species"
    )


def _check_multilabel_sizes(df: pd.DataFrame, classes: list[str], minimum: int) -> None:
    """Every selected class must occur in ``minimum`` kept recordings (multi-label)."""
    if minimum <= 0:
        return
    live = df[~df["dropped"]]
    short = [
        (c, n) for c in classes if (n := int(sum(c in labs for labs in live["labels"]))) < minimum
    ]
    if short:
        raise ConfigError(
            f"too few recordings left: {', '.join(f'{c} ({n})' for c, n in short)} occur in "
            f"fewer than {minimum} recordings (data.min_class_recordings); select fewer "
            "species (--top-k, --species) or accept fewer with --min-class-recordings N"
        )


def prepare(
    data: DataConfig,
    preprocessing: Preprocessing,
    out_dir: str | Path | None = None,
    progress: bool = True,
    console: Console | None = None,
    task: TaskConfig | None = None,
) -> PreparedData:
    """Apply the selection rules, compute (or reuse) features, split; write the manifest.

    With ``task.kind=multilabel`` the rules differ: species are ranked by the
    recordings they occur in (primary, secondary or event labels), secondary labels
    are targets (rule 3 is off), classes are not balanced (rule 5 is off), soundscape
    clips and ``data.negatives`` are kept whatever species they hold, and every
    recording's targets are listed in the manifest's ``labels`` column (JSON).
    """
    console = console or Console(stderr=True)
    preprocessing = preprocessing.resolved()  # encoding "auto" -> the front end's own
    multilabel = task is not None and task.multilabel
    if data.negatives and not multilabel:
        raise ConfigError(
            "data.negatives (clips with no target species) needs task.kind=multilabel: a "
            "single-label model names one of its species in every window; add --task "
            "multilabel to train a detector that can report none"
        )
    meta = load_metadata(data.path)
    if multilabel and data.negatives:
        from birdstack.data.annotations import load_negatives

        meta = pd.concat([meta, load_negatives(data.negatives)], ignore_index=True)
    df = meta.copy()
    df["dropped"] = False
    df["drop_reason"] = ""
    df["padded"] = False
    if "exists" in df:
        _drop_rows(df, split_missing(df)[1])

    # 2. species selection
    negatives_note = None
    if multilabel:
        from birdstack.data.annotations import has_events

        df["negative"] = df.get("negative", pd.Series(False, index=df.index)).fillna(False)
        df["negative"] = df["negative"].astype(bool)
        events = df.get("events", pd.Series("", index=df.index))
        df["is_soundscape"] = [has_events(v) for v in events]
        df["labels"] = row_labels(df)
        classes = _select_multilabel(df, data)
        negatives_note = _drop_target_negatives(df, classes)
    else:
        classes = select_species(
            df[~df["dropped"]],
            top_k=data.top_k,
            species=data.species,
            min_recordings=data.min_recordings,
        )
        _drop_rows(df, filter_species(df[~df["dropped"]], classes)[1])
    selected = list(classes)  # what the guard (7.) checks at the end
    # files of the selected species that are listed but missing or unreadable are skipped:
    # one log line each (file and reason), counted in the summary and the exit code
    skips = SkipLog()
    if "exists" in df:
        for p in df.loc[~df["exists"].astype(bool) & df["primary_label"].isin(classes), "path"]:
            skips.add(p, "file not found")

    # 3. secondary labels naming a kept species
    if data.drop_secondary and not multilabel:
        _drop_rows(df, drop_secondary(df[~df["dropped"]], classes)[1])

    # features for every recording still in play
    preprocessing = resolve_frontend(preprocessing)
    cache = FeatureCache.for_preprocessing(cache_root(data.cache_dir), preprocessing)
    todo = df[~df["dropped"]]
    result = cache.compute_many(
        [Path(p) for p in todo["path"]], workers=data.workers, progress=progress
    )
    for idx, p in zip(todo.index, todo["path"]):
        entry = result[Path(p)]
        if entry.error is not None:
            _drop(df, df.index == idx, f"unreadable audio: {entry.error}")
            skips.add(p, entry.error.removeprefix(f"{entry.path}: "))
            continue
        df.loc[idx, "frames"] = int(entry.frames)
        df.loc[idx, "duration_s"] = float(entry.duration_s)
        df.loc[idx, "cache_file"] = str(entry.cache_file)

    # 4. encoding rule
    enc = preprocessing.encoding
    live = ~df["dropped"]
    if enc.kind == "stacked":
        target = enc.target_frames
        if target is None:
            labelled = live & (df["primary_label"].astype(str) != "")
            target = target_frames_rule(
                df.loc[labelled, "frames"].astype(int).tolist(),
                df.loc[labelled, "primary_label"].tolist(),
                enc.trim_factor,
                enc.channels,
            )
        enc = dataclasses.replace(enc, target_frames=target)
        short = live & (df["frames"] < target)
        if enc.short == "drop":
            _drop(df, short, f"shorter than the stacked target ({target} frames)")
        else:
            df.loc[short, "padded"] = True
    else:
        if enc.short == "drop":
            log.warning(
                "encoding.short=drop is the stacked encoding's rule; with encoding %s short "
                "recordings are padded to one window (--encoding stacked to drop them)",
                enc.kind,
            )
        short = live & (df["frames"] < preprocessing.window_frames())
        df.loc[short, "padded"] = True
    preprocessing = dataclasses.replace(preprocessing, encoding=enc)

    warnings: list[str] = []
    if negatives_note:
        warnings.append(negatives_note)
    if multilabel:
        counts = pd.Series(
            [lab for labs in df.loc[~df["dropped"], "labels"] for lab in labs], dtype=object
        ).value_counts()
    else:
        counts = df.loc[~df["dropped"], "primary_label"].value_counts()
    empty = [c for c in classes if counts.get(c, 0) == 0]
    if empty:
        warnings.append(
            f"no usable recordings left for {', '.join(empty)} (after the rules above); "
            "the class is left out — try encoding.short=pad or a lower trim_factor"
        )
        classes = [c for c in classes if c not in empty]
    if len(classes) < 2 and not multilabel:
        check_class_sizes(df, selected, data.min_class_recordings)  # the fuller message first
        raise ConfigError(
            f"{data.path}: fewer than 2 classes left after the selection rules ({classes}); "
            "select more species, use encoding.short=pad, or check the drop reasons in the manifest"
        )

    # 5. balance
    if data.balance and not multilabel:
        _drop_rows(df, balance(df[~df["dropped"]], seed=data.seed)[1])

    # 6. folds
    to_fold = df[~df["dropped"]].copy()
    single_session = data.single_session
    if data.group_by == "file_block":
        from birdstack.data.annotations import file_number

        nums = [file_number(str(p)) for p in to_fold["path"]]
        to_fold["group"] = [
            f"files {n // data.block_size * data.block_size}-"
            f"{(n // data.block_size + 1) * data.block_size - 1}"
            if n is not None
            else ""
            for n in nums
        ]
        single_session = "keep"  # a block is the group; a class in one block stays in it
    if multilabel:
        to_fold["primary_label"] = to_fold["primary_label"].astype(str).replace("", "(none)")
    folded, report = assign_folds(
        to_fold,
        n_folds=data.n_folds,
        seed=data.seed,
        single_session=single_session,
        # a species kept only as negatives (data.other_species) is no class to warn about
        warn_classes=set(classes),
    )
    df["fold"] = -1
    df["session"] = ""
    df.loc[folded.index, "fold"] = folded["fold"].astype(int)
    df.loc[folded.index, "session"] = folded["session"].astype(str)
    for idx, reason in getattr(report, "dropped", {}).items():
        _drop(df, df.index == idx, reason)
    warnings.extend(getattr(report, "warnings", []))
    # 7. enough recordings left in every selected class
    if multilabel:
        _check_multilabel_sizes(df, classes, data.min_class_recordings)
    else:
        check_class_sizes(df, selected, data.min_class_recordings)
    if multilabel:
        present = {lab for labs in df.loc[~df["dropped"], "labels"] for lab in labs}
    else:
        present = set(df.loc[~df["dropped"], "primary_label"])
    dropped_classes = [c for c in classes if c not in present]
    classes = [c for c in classes if c not in dropped_classes]

    label_map = encode_labels(classes)
    df["label_idx"] = df["primary_label"].map(label_map).fillna(-1).astype(int)
    if multilabel:  # the targets of each recording among the classes, as JSON
        df["labels"] = [
            json.dumps([lab for lab in labs if lab in label_map]) for labs in df["labels"]
        ]
    if data.exclude_folds:  # nested cross-validation: after the classes, so they stay the same
        _drop(
            df,
            ~df["dropped"] & df["fold"].isin(data.exclude_folds),
            "data.exclude_folds: a held-out fold",
        )
    df["split"] = "-"
    live = ~df["dropped"]
    df.loc[live, "split"] = (df.loc[live, "fold"] == data.val_fold).map(
        {True: "val", False: "train"}
    )
    for col in MANIFEST_COLUMNS:
        if col not in df:
            df[col] = pd.NA
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS and c != "exists"]
    manifest = df[MANIFEST_COLUMNS + extra].reset_index(drop=True)
    manifest["dropped"] = manifest["dropped"].astype(bool)
    classes = sorted(classes)

    prepared = PreparedData(manifest, classes, preprocessing, data, warnings, skips.skipped)
    if out_dir is not None:
        write_prepared(prepared, Path(out_dir))
    print_summary(prepared, console)
    return prepared


def read_manifest(
    manifest: str | os.PathLike[str],
    split: str | None = None,
    dtype: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The kept rows of a ``manifest.csv`` (``dropped`` false), of ``split`` when given;
    ``dtype``: columns to read as given (``{"rec_id": str}``; ``split`` is always text).

    A file that is missing, is not a birdstack manifest or has no such rows is a
    :class:`~birdstack.utils.BadInputError` naming the file.
    """
    mpath = Path(manifest)
    if not mpath.is_file():
        raise BadInputError(mpath, "manifest file not found")
    try:
        man = pd.read_csv(mpath, dtype={"split": str, **(dtype or {})})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BadInputError(mpath, f"not a readable CSV manifest ({e})") from e
    if "rec_id" not in man:
        raise BadInputError(mpath, "not a birdstack manifest (no 'rec_id' column)")
    keep = pd.Series(True, index=man.index)
    if "dropped" in man:
        keep &= ~man["dropped"].astype(str).str.lower().isin(("true", "1"))
    if split is not None:
        if "split" not in man:
            raise BadInputError(mpath, f"no 'split' column to select split {split!r} from")
        keep &= man["split"] == split
    if not keep.any():
        found = f" (found {sorted(set(man['split'].astype(str)))})" if "split" in man else ""
        which = f" with split {split!r}" if split is not None else ""
        raise BadInputError(mpath, f"no kept rows{which}{found}")
    return man[keep].copy()


def write_prepared(prepared: PreparedData, out_dir: Path) -> None:
    """Write ``manifest.csv``, ``classes.json`` and ``prepare.json`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)  # left by a run that was killed while writing
    m = prepared.manifest.copy()
    if "secondary_labels" in m:
        m["secondary_labels"] = m["secondary_labels"].map(
            lambda v: json.dumps(list(v)) if isinstance(v, (list, tuple)) else v
        )
    atomic_write_text(out_dir / "manifest.csv", m.to_csv(index=False))
    atomic_write_json(out_dir / "classes.json", prepared.classes)
    atomic_write_json(
        out_dir / "prepare.json",
        {
            "data": to_dict(prepared.data),
            "preprocessing": to_dict(prepared.preprocessing),
            "classes": prepared.classes,
            "warnings": prepared.warnings,
        },
    )


def _other_label(kept: pd.DataFrame) -> str:
    """The summary's label cell for a species outside the selection: ``negative`` when its
    kept recordings are all negatives, ``negative (k/n)`` when n - k of them are positives
    for a selected species (a secondary label), ``-`` when none is kept as a negative."""
    neg = int(kept.get("negative", pd.Series(False, index=kept.index)).fillna(False).sum())
    if neg == 0:
        return "-"
    return "negative" if neg == len(kept) else f"negative ({neg}/{len(kept)})"


def print_summary(prepared: PreparedData, console: Console) -> None:
    """Counts per species and split, drop reasons, and warnings, as rich tables."""
    m = prepared.manifest
    sel = m[
        m["primary_label"].isin(prepared.classes) | (m["drop_reason"] != "species not selected")
    ]
    table = Table(title=f"birdstack prepare — {prepared.data.path}", show_lines=False)
    for col in ("species", "label", "train", "val", "dropped", "sessions"):
        table.add_column(col, justify="left" if col == "species" else "right")
    labels = prepared.classes + sorted(set(sel["primary_label"]) - set(prepared.classes))
    for lab in labels:
        rows = sel[sel["primary_label"] == lab]
        kept = rows[~rows["dropped"]]
        table.add_row(
            lab,
            str(prepared.classes.index(lab)) if lab in prepared.classes else _other_label(kept),
            str(int((kept["split"] == "train").sum())),
            str(int((kept["split"] == "val").sum())),
            str(int(rows["dropped"].sum())),
            str(kept["session"].nunique()),
        )
    console.print(table)
    reasons = m.loc[m["dropped"] & (m["drop_reason"] != "species not selected"), "drop_reason"]
    if len(reasons):
        rt = Table(title="dropped recordings")
        rt.add_column("reason")
        rt.add_column("n", justify="right")
        for reason, n in reasons.str.slice(0, 90).value_counts().items():
            rt.add_row(reason, str(n))
        console.print(rt)
    enc = prepared.preprocessing.encoding
    kept = prepared.kept
    line = (
        f"{len(kept)} recordings kept, {len(prepared.classes)} classes, "
        f"{int((kept['split'] == 'train').sum())} train / "
        f"{int((kept['split'] == 'val').sum())} val "
        f"(fold {prepared.data.val_fold} of {prepared.data.n_folds}, grouped by session); "
        f"encoding {enc.kind}"
    )
    neg = kept.get("negative", pd.Series(False, index=kept.index)).fillna(False).astype(bool)
    if neg.any():
        line += (
            f"; {int(neg.sum())} of them negatives (no target species: examples the detector "
            "must not report)"
        )
    if prepared.preprocessing.is_birdnet:
        line += f" of BirdNET V2.4 windows (3 s every {prepared.preprocessing.birdnet.hop_s:g} s)"
    if enc.kind == "stacked":
        line += (
            f", target {enc.target_frames} frames -> input {prepared.preprocessing.input_shape()}"
        )
        line += f", {int(kept['padded'].sum())} padded"
    console.print(line)
    for w in prepared.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if prepared.skipped:
        console.print(
            f"[yellow]{len(prepared.skipped)} file(s) skipped (missing or unreadable; "
            "see the 'skipped' log lines)[/yellow]"
        )

"""Evaluate a checkpoint on labelled recordings, through the checkpoint's own preprocessing.

    >>> res = evaluate_checkpoint("runs/demo/checkpoints/best.ckpt", "data/birds-demo",
    ...                           manifest="runs/demo/data/manifest.csv", split="val",
    ...                           out_dir="runs/demo/eval")                # doctest: +SKIP
    >>> res.recording.accuracy, res.recording.f1_macro                      # doctest: +SKIP

Any data :func:`birdstack.data.metadata.load_metadata` reads (BirdCLEF-style or one
folder per species) can be scored. Spectrograms come from the
:class:`~birdstack.features.cache.FeatureCache` with the checkpoint's audio and
spectrogram settings, and every recording is scored with
:meth:`birdstack.inference.predictor.Predictor.recording_probs` (the documented
recording-level rule: a ``stacked`` recording is encoded exactly as in training, and
``segments`` window probabilities are averaged as validation pools them, so the
figures reproduce the training log's).

Recordings whose primary label is not one of the checkpoint's classes are left out
(their count is printed and saved). With ``manifest`` (a run's ``data/manifest.csv``)
only the recordings listed there are used, and with ``split`` only the kept rows of
that split (``train`` / ``val``), e.g. exactly the validation recordings of a run.
Without ``manifest``, the recordings the checkpoint's own run trained on are left out
and counted (``used_in_training``) unless ``include_trained``: a model scored on what
it learned looks far better than it is on new sessions.

Outputs in ``out_dir``: ``metrics.json`` (every figure), ``per_class.csv``,
``confusion.csv`` and ``confusion.png``, ``predictions.csv`` (file, true, predicted,
confidence and one ``p_<class>`` column per class). ``segments`` models also get
window-level figures (each window scored alone against its recording's label):
``metrics.json["window"]``, ``confusion_windows.csv`` / ``.png``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from birdstack.evaluation.metrics import (
    ClassificationMetrics,
    MultiLabelMetrics,
    classification_metrics,
    multilabel_metrics,
)
from birdstack.utils import BadInputError, atomic_write_json, atomic_write_text, get_logger

log = get_logger("evaluate")

BIRDNET_REFERENCE = "birdnet"  # evaluate's name for BirdNET's own scores (no checkpoint)
REFERENCE_THRESHOLD = 0.5  # BirdNET's confidence threshold in multi-label evaluation


def reference_predictor(
    data: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None = None,
    split: str | None = None,
    species: list[str] | None = None,
    multilabel: bool = False,
) -> Any:
    """BirdNET's own scores for the species of ``data`` (or of a run's ``manifest``).

    ``multilabel``: BirdNET's sigmoid confidences with a threshold of
    :data:`REFERENCE_THRESHOLD` for every class; the classes are the run's
    (``classes.json`` beside the manifest) or every species the data names."""
    from birdstack.data.metadata import load_metadata
    from birdstack.inference.predictor import Predictor

    meta = load_metadata(data)
    run_classes = Path(manifest).parent / "classes.json" if manifest is not None else None
    if species:
        classes = sorted(species)
    elif multilabel and run_classes is not None and run_classes.is_file():
        import json

        classes = list(json.loads(run_classes.read_text(encoding="utf-8")))
    elif multilabel:
        from birdstack.data.prepare import row_labels

        classes = sorted({lab for labs in row_labels(meta) for lab in labs})
    elif manifest is not None:
        from birdstack.data.prepare import read_manifest

        kept = read_manifest(manifest)
        classes = sorted(kept["primary_label"].astype(str).unique())
    else:
        classes = sorted(meta["primary_label"].astype(str).unique())
    names = {}
    if "scientific_name" in meta:
        for c in classes:
            vals = meta.loc[meta["primary_label"] == c, "scientific_name"].dropna()
            if len(vals):
                names[c] = str(vals.iloc[0])
    thresholds = [REFERENCE_THRESHOLD] * len(classes) if multilabel else None
    return Predictor.birdnet_reference(classes, names, thresholds=thresholds)


@dataclass
class EvalResult:
    """Figures and predictions of one evaluation."""

    checkpoint: Path
    classes: list[str]
    encoding: str
    recording: ClassificationMetrics | MultiLabelMetrics
    window: ClassificationMetrics | MultiLabelMetrics | None
    predictions: pd.DataFrame
    excluded: dict[str, int]
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    # multi-label: per-clip 0/1 targets and scores (for the precision-recall curves), and
    # the open-set figure: share of negative clips with a species at or above threshold
    targets: np.ndarray | None = None
    scores: np.ndarray | None = None
    open_set: float | None = None
    n_negatives: int = 0
    # scored recordings from a recording session (author | date) the checkpoint trained on
    same_session: int = 0

    @property
    def multilabel(self) -> bool:
        return isinstance(self.recording, MultiLabelMetrics)

    def to_dict(self) -> dict[str, Any]:
        """Everything ``metrics.json`` holds."""
        return {
            "checkpoint": str(self.checkpoint),
            "classes": self.classes,
            "encoding": self.encoding,
            "n_recordings": self.recording.n,
            "excluded": self.excluded,
            "shares_training_session": self.same_session,
            "recording": self.recording.to_dict(),
            "window": self.window.to_dict() if self.window is not None else None,
            **(
                {"task": "multilabel", "open_set": self.open_set, "n_negatives": self.n_negatives}
                if self.multilabel
                else {}
            ),
        }

    def markdown(self, link_prefix: str = "") -> str:
        """A report section: headline figures, per-class table and confusion matrix."""
        if self.multilabel:
            return self._markdown_multilabel(link_prefix)
        r = self.recording
        assert isinstance(r, ClassificationMetrics)
        lines = [
            f"Evaluated `{self.checkpoint}` on {r.n} recording(s): accuracy **{r.accuracy:.3f}**, "
            f"macro-F1 **{r.f1_macro:.3f}**, log loss {r.log_loss:.3f} (recording level).",
        ]
        if self.window is not None:
            w = self.window
            lines.append(
                f"Window level ({w.n} windows, each scored alone): accuracy {w.accuracy:.3f}, "
                f"macro-F1 {w.f1_macro:.3f}, log loss {w.log_loss:.3f}."
            )
        if any(self.excluded.values()):
            lines.append(
                "Left out: "
                + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in self.excluded.items() if n)
                + "."
            )
        if self.same_session:
            lines.append(
                f"{self.same_session} of them share a recording session with the checkpoint's "
                "training recordings: their figures are optimistic."
            )
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for _, c in r.per_class.iterrows():
            lines.append(
                f"| {c['class']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
                f"{int(c['support'])} |"
            )
        lines.append("")
        if "confusion_png" in self.files:
            lines.append(f"![confusion matrix]({link_prefix}{self.files['confusion_png'].name})")
            lines.append("")
        if "metrics_json" in self.files:
            lines.append(
                f"Files: [metrics.json]({link_prefix}metrics.json), "
                f"[predictions.csv]({link_prefix}predictions.csv), "
                f"[confusion.csv]({link_prefix}confusion.csv)."
            )
            lines.append("")
        return "\n".join(lines)

    def _markdown_multilabel(self, link_prefix: str) -> str:
        r = self.recording
        assert isinstance(r, MultiLabelMetrics)
        lines = [
            f"Evaluated `{self.checkpoint}` on {r.n} clip(s) / recording(s): cmAP "
            f"**{r.cmap:.3f}**, macro AUROC **{r.auroc:.3f}**, top-1 **{r.top1:.3f}**, "
            f"sample F1 {r.f1_samples:.3f}, row-wise F1 with nocall {r.f1_rowwise_nocall:.3f} "
            "(at the stored thresholds).",
        ]
        if self.window is not None:
            w = self.window
            lines.append(
                f"Window level ({w.n} windows): cmAP {w.cmap:.3f}, macro AUROC {w.auroc:.3f}."
            )
        if self.n_negatives:
            lines.append(
                f"Open set: {self.open_set:.1%} of {self.n_negatives} negative clip(s) get a "
                "species at or above its threshold."
            )
        lines += ["", "| class | AP | AUROC | positives | threshold |", "|---|---|---|---|---|"]
        for _, c in r.per_class.sort_values("ap", ascending=False).iterrows():
            ap = "–" if c["ap"] != c["ap"] else f"{c['ap']:.3f}"
            auc = "–" if c["auroc"] != c["auroc"] else f"{c['auroc']:.3f}"
            lines.append(
                f"| {c['class']} | {ap} | {auc} | {int(c['positives'])} | {c['threshold']:.2f} |"
            )
        lines.append("")
        if "pr_png" in self.files:
            lines += [f"![precision-recall]({link_prefix}{self.files['pr_png'].name})", ""]
        if "metrics_json" in self.files:
            lines += [
                f"Files: [metrics.json]({link_prefix}metrics.json), "
                f"[predictions.csv]({link_prefix}predictions.csv), "
                f"[per_class.csv]({link_prefix}per_class.csv).",
                "",
            ]
        return "\n".join(lines)


def select_recordings(
    data: str | os.PathLike[str],
    classes: list[str],
    manifest: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows of the data's metadata to score and the counts of those left out.

    ``manifest``: only its kept recordings (:func:`read_manifest`, matched by ``rec_id``);
    ``split``: only those with that ``split`` value. Missing files and labels that are
    not among ``classes`` are left out and counted.
    """
    from birdstack.data.metadata import load_metadata
    from birdstack.data.prepare import read_manifest

    meta = load_metadata(data)
    excluded = {
        "missing_file": 0,
        "label_not_in_checkpoint": 0,
        "used_in_training": 0,
        "unreadable_audio": 0,
    }
    if manifest is not None:
        mpath = Path(manifest)
        man = read_manifest(mpath, split, {"rec_id": str})
        wanted = set(man["rec_id"])
        unknown = wanted - set(meta["rec_id"])
        if unknown:
            raise BadInputError(
                mpath,
                f"{len(unknown)} recording(s) of the manifest are not in {data} "
                f"(e.g. {sorted(unknown)[0]!r}); pass the --data folder the run was trained on",
            )
        meta = meta[meta["rec_id"].isin(wanted)]
    elif split is not None:
        raise BadInputError(str(data), "--split needs --manifest (the run's data/manifest.csv)")
    missing = ~meta["exists"].astype(bool)
    excluded["missing_file"] = int(missing.sum())
    meta = meta[~missing]
    foreign = ~meta["primary_label"].isin(classes)
    excluded["label_not_in_checkpoint"] = int(foreign.sum())
    meta = meta[~foreign]
    return meta.reset_index(drop=True), excluded


def leave_out_trained(
    rows: pd.DataFrame,
    ckpt: str | os.PathLike[str],
    include_trained: bool,
    excluded: dict[str, int],
    console: Console,
) -> tuple[pd.DataFrame, int]:
    """Leave out the recordings the checkpoint's own run trained on (or, with
    ``include_trained``, keep them and say the figures are optimistic); returns the rows
    to score and how many of them share a recording session with the training ones.

    Only used without ``--manifest``: a user who points ``--data`` at the folder the
    model was trained on would otherwise score its training recordings. The run's
    manifest beside the checkpoint says which those are (compared by content) and their
    sessions (``author | date``, :func:`~birdstack.data.split.session_ids`); a recording
    of a training session is kept, with a warning, as it is new audio of a known place
    and day.
    """
    from birdstack.data.split import session_ids
    from birdstack.training.checkpoint import trained_on, training_rows

    train = training_rows(ckpt)
    if train is None:
        return rows, 0
    seen = trained_on(ckpt, rows["path"].astype(str).tolist(), train)
    assert seen is not None
    n = int(sum(seen))
    if n and include_trained:
        console.print(
            f"[yellow]warning:[/yellow] {n} of the {len(rows)} recording(s) trained this "
            "checkpoint: their figures are optimistic"
        )
    elif n:
        excluded["used_in_training"] = n
        console.print(
            f"{n} recording(s) left out: the checkpoint's run trained on them "
            "(--include-trained scores them too)"
        )
        keep = ~np.asarray(seen)
        if not keep.any():
            raise BadInputError(
                str(ckpt),
                f"all {n} selected recordings of the data were used to train this checkpoint. "
                "Evaluate on other recordings, on the run's validation fold (--manifest "
                "RUN/data/manifest.csv --split val), or pass --include-trained",
            )
        rows = rows[keep].reset_index(drop=True)
    if "session" not in train:
        return rows, 0
    # author | date; not a recording's own id
    trained = {t for t in train["session"].dropna() if " | " in t}
    same = int(session_ids(rows).isin(trained).sum()) if trained else 0
    if same:
        console.print(
            f"[yellow]warning:[/yellow] {same} of the {len(rows)} recording(s) come from a "
            "recording session (author | date) the checkpoint trained on: their figures are "
            "optimistic (--manifest RUN/data/manifest.csv --split val scores the run's "
            "session-grouped validation fold)"
        )
    return rows, same


def cached_features(
    paths: list[Path],
    pre: Any,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    excluded: dict[str, int],
) -> Iterator[tuple[int, np.ndarray]]:
    """``(row, spectrogram)`` of every decodable file, features from the cache (computed
    once); an unreadable file is logged and counted in ``excluded["unreadable_audio"]``."""
    from birdstack.data.prepare import cache_root
    from birdstack.features.cache import FeatureCache

    cache = FeatureCache.for_preprocessing(cache_root(cache_dir), pre)
    entries = cache.compute_many(paths, progress=progress)
    for i, p in enumerate(paths):
        entry = entries[p]
        if entry.error is not None:
            log.warning("skipped %s: %s", p, entry.error)
            excluded["unreadable_audio"] += 1
            continue
        yield i, np.load(entry.cache_file)


def _finish(
    result: EvalResult,
    probs: np.ndarray,
    out_dir: str | os.PathLike[str] | None,
    data: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None,
    split: str | None,
    console: Console,
) -> EvalResult:
    """Add the ``p_<class>`` columns, write the outputs (with ``out_dir``) and print."""
    for j, c in enumerate(result.classes):
        result.predictions[f"p_{c}"] = probs[:, j]
    if out_dir is not None:
        write_outputs(result, Path(out_dir), data=data, manifest=manifest, split=split)
    print_result(result, console)
    return result


def evaluate_checkpoint(
    ckpt: str | os.PathLike[str],
    data: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None = None,
    split: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    console: Console | None = None,
    location: str = "off",
    location_threshold: float = 0.03,
    species: list[str] | None = None,
    include_trained: bool = False,
) -> EvalResult:
    """Score every selected recording of ``data`` and compute all figures (see module doc).

    ``cache_dir``: feature cache folder (default: the one ``prepare`` uses).
    ``ckpt="birdnet"``: score BirdNET V2.4's own predictions, with nothing trained, for
    the data's species (or ``species``), as a reference row; classes BirdNET does not
    know are named and never predicted. ``location``: the location and season filter
    (``drop`` / ``weight``, see :class:`~birdstack.config.LocationConfig`) with each
    recording's own ``latitude``, ``longitude`` and ``date``. Without ``manifest``, the
    recordings the checkpoint's run trained on are left out (counted as
    ``used_in_training``) unless ``include_trained``.
    """
    from birdstack.features.birdnet import as_float, week_48
    from birdstack.inference.predictor import Predictor

    console = console or Console()
    soundscapes = is_multilabel_data(data, manifest)
    if str(ckpt) == BIRDNET_REFERENCE:
        pred = reference_predictor(data, manifest, split, species, multilabel=soundscapes)
    else:
        pred = Predictor.from_checkpoint(ckpt)
    ckpt = Path(ckpt)
    if pred.multilabel:
        return evaluate_multilabel(
            pred,
            ckpt,
            data,
            manifest,
            split,
            out_dir,
            cache_dir,
            progress,
            console,
            include_trained,
        )
    classes = list(pred.classes)
    pre = pred.preprocessing
    rows, excluded = select_recordings(data, classes, manifest, split)
    if excluded["label_not_in_checkpoint"]:
        console.print(
            f"{excluded['label_not_in_checkpoint']} recording(s) left out: primary label not "
            "among the checkpoint's classes"
        )
    if excluded["missing_file"]:
        console.print(f"{excluded['missing_file']} recording(s) left out: audio file not found")
    if rows.empty:
        raise BadInputError(str(data), "no recordings of the checkpoint's classes to evaluate")
    same_session = 0
    if manifest is None and str(ckpt) != BIRDNET_REFERENCE:
        rows, same_session = leave_out_trained(rows, ckpt, include_trained, excluded, console)

    paths = [Path(p) for p in rows["path"]]
    label_idx = {c: i for i, c in enumerate(classes)}
    enc = pre.encoding
    rec_probs: list[np.ndarray] = []
    kept: list[int] = []
    win_probs: list[np.ndarray] = []
    win_labels: list[int] = []
    for i, db in cached_features(paths, pre, cache_dir, progress, excluded):
        kept.append(i)
        if location != "off":
            r = rows.loc[i]
            pred.set_location(
                as_float(r.get("latitude")),
                as_float(r.get("longitude")),
                week_48(r.get("date") if isinstance(r.get("date"), str) else None),
                location,
                location_threshold,
            )
        if pre.is_birdnet:  # one pass: the pooled windows are BirdNET's windows
            res = pred.score_frames([db], cover_end=False)
            rec_probs.append(res.probs)
            win_probs.append(res.window_probs)
            win_labels += [label_idx[rows.loc[i, "primary_label"]]] * len(res.window_probs)
        elif enc.kind == "segments":  # one pass: the pooled windows are the table's windows
            res = pred.score_frames([db], window_s=enc.window_s, hop_s=enc.hop_s, cover_end=False)
            rec_probs.append(res.probs)
            win_probs.append(res.window_probs)
            win_labels += [label_idx[rows.loc[i, "primary_label"]]] * len(res.window_probs)
        else:
            rec_probs.append(pred.apply_location(pred.recording_probs(db)))
    if not kept:
        raise BadInputError(str(data), "none of the selected recordings could be decoded")
    rows = rows.loc[kept].reset_index(drop=True)
    probs = np.stack(rec_probs)
    y = rows["primary_label"].map(label_idx).to_numpy()
    recording = classification_metrics(y, probs, classes)
    window = (
        classification_metrics(np.asarray(win_labels), np.concatenate(win_probs), classes)
        if win_probs
        else None
    )
    top = probs.argmax(axis=1)
    predictions = pd.DataFrame(
        {
            "file": rows["path"].astype(str),
            "rec_id": rows["rec_id"].astype(str),
            "true": rows["primary_label"].astype(str),
            "predicted": [classes[j] for j in top],
            "confidence": probs.max(axis=1),
            "correct": top == y,
        }
    )
    result = EvalResult(
        checkpoint=ckpt,
        classes=classes,
        encoding=enc.kind,
        recording=recording,
        window=window,
        predictions=predictions,
        excluded=excluded,
        same_session=same_session,
    )
    return _finish(result, probs, out_dir, data, manifest, split, console)


def is_multilabel_data(
    data: str | os.PathLike[str], manifest: str | os.PathLike[str] | None = None
) -> bool:
    """Annotated soundscapes (or a multi-label run's manifest, with its ``labels`` column)."""
    from birdstack.data.annotations import is_soundscape_folder

    if manifest is not None and Path(manifest).is_file():
        with open(manifest, encoding="utf-8") as fh:
            if "labels" in fh.readline().strip().split(","):
                return True
    return Path(data).is_dir() and is_soundscape_folder(Path(data))


def multilabel_rows(
    data: str | os.PathLike[str],
    classes: list[str],
    manifest: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows to score for multi-label evaluation: ``path``, ``rec_id``, ``labels`` (list of
    classes), ``events`` (JSON or ""), ``negative``; and the counts left out.

    With ``manifest``: its rows (of ``split``, kept ones), so negative clips a run added
    from ``data.negatives`` are scored too; else every recording of ``data``.
    """
    import json

    from birdstack.data.metadata import load_metadata
    from birdstack.data.prepare import read_manifest, row_labels

    excluded = {
        "missing_file": 0,
        "label_not_in_checkpoint": 0,
        "used_in_training": 0,
        "unreadable_audio": 0,
    }
    if manifest is not None:
        rows = read_manifest(manifest, split, {"rec_id": str, "events": str})
        if "labels" in rows:
            rows["labels"] = [json.loads(v) if isinstance(v, str) else [] for v in rows["labels"]]
        else:
            rows["labels"] = [[lab] for lab in rows["primary_label"].astype(str)]
    elif split is not None:
        raise BadInputError(str(data), "--split needs --manifest (the run's data/manifest.csv)")
    else:
        rows = load_metadata(data)
        rows["labels"] = row_labels(rows)
    if "negative" not in rows:
        rows["negative"] = False
    rows["negative"] = rows["negative"].fillna(False).astype(str).str.lower().isin(("true", "1"))
    if "events" not in rows:
        rows["events"] = ""
    rows["events"] = rows["events"].fillna("")
    exists = [Path(p).is_file() for p in rows["path"]]
    excluded["missing_file"] = int(len(rows) - sum(exists))
    rows = rows[exists]
    known = set(classes)
    rows["labels"] = [[lab for lab in labs if lab in known] for labs in rows["labels"]]
    if manifest is None:
        # a focal recording of another species, none of the checkpoint's in it: what the
        # detector must not report (as data.other_species=negatives trains it)
        from birdstack.data.annotations import has_events

        other = [
            not labs and not has_events(ev) and str(prim) not in ("", "nan")
            for labs, ev, prim in zip(rows["labels"], rows["events"], rows["primary_label"])
        ]
        rows.loc[other, "negative"] = True
    return rows.reset_index(drop=True), excluded


def evaluate_multilabel(
    pred: Any,
    ckpt: Path,
    data: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None,
    split: str | None,
    out_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    console: Console,
    include_trained: bool = False,
) -> EvalResult:
    """Multi-label figures of windows and clips (``evaluate_checkpoint``'s other task).

    Windows are the model's own (5 s log-mel windows, BirdNET's 3 s windows); a window's
    targets come from the clip's events by :func:`~birdstack.data.annotations.
    window_targets` (a focal recording's labels hold for all its windows); a clip's
    targets are all its species. Clips with no target species that come from
    ``data.negatives`` or (without a manifest) focal recordings of other species give
    the open-set figure and are left out of the others.
    """
    from birdstack.data.annotations import has_events, parse_events, window_targets

    classes = list(pred.classes)
    pre = pred.preprocessing
    rows, excluded = multilabel_rows(data, classes, manifest, split)
    if rows.empty:
        raise BadInputError(str(data), "no recordings to evaluate")
    same_session = 0
    if manifest is None and str(ckpt) != BIRDNET_REFERENCE:
        rows, same_session = leave_out_trained(rows, ckpt, include_trained, excluded, console)
    paths = [Path(p) for p in rows["path"]]
    index = {c: i for i, c in enumerate(classes)}
    thr = np.asarray(pred.thresholds, dtype=np.float64)
    enc = pre.encoding
    clip_t, clip_p, win_t, win_p, win_neg, kept = [], [], [], [], [], []
    for i, db in cached_features(paths, pre, cache_dir, progress, excluded):
        kept.append(i)
        t = np.zeros(len(classes), dtype=np.float32)
        for lab in rows.loc[i, "labels"]:
            t[index[lab]] = 1.0
        if pre.is_birdnet or enc.kind == "segments":
            kw = {} if pre.is_birdnet else {"window_s": enc.window_s, "hop_s": enc.hop_s}
            res = pred.score_frames([db], **kw, cover_end=False)
            ev = rows.loc[i, "events"]
            if has_events(ev):
                wt = window_targets(parse_events(ev), res.starts_s, pre.input_seconds(), classes)
            else:
                wt = np.repeat(t[None, :], len(res.window_probs), axis=0)
            win_t.append(wt)
            win_p.append(res.window_probs)
            win_neg += [bool(rows.loc[i, "negative"])] * len(wt)
            clip_p.append(res.probs)
        else:
            clip_p.append(pred.recording_probs(db))
        clip_t.append(t)
    if not kept:
        raise BadInputError(str(data), "none of the selected recordings could be decoded")
    rows = rows.loc[kept].reset_index(drop=True)
    y, s = np.stack(clip_t), np.stack(clip_p)
    neg = rows["negative"].to_numpy(bool)
    if neg.all():
        raise BadInputError(str(data), "only negative clips: nothing to measure cmAP on")
    recording = multilabel_metrics(y[~neg], s[~neg], classes, thr)
    window = None
    if win_t:
        wneg = np.asarray(win_neg)
        wy, ws = np.concatenate(win_t), np.concatenate(win_p)
        window = multilabel_metrics(wy[~wneg], ws[~wneg], classes, thr)
    predicted = s >= thr[None, :]
    predictions = pd.DataFrame(
        {
            "file": rows["path"].astype(str),
            "rec_id": rows["rec_id"].astype(str),
            "true": [";".join(labs) for labs in rows["labels"]],
            "predicted": [";".join(c for c, on in zip(classes, r) if on) for r in predicted],
            "negative": neg,
        }
    )
    result = EvalResult(
        checkpoint=ckpt,
        classes=classes,
        encoding=enc.kind,
        recording=recording,
        window=window,
        predictions=predictions,
        excluded=excluded,
        targets=y[~neg],
        scores=s[~neg],
        open_set=float(predicted[neg].any(axis=1).mean()) if neg.any() else None,
        n_negatives=int(neg.sum()),
        same_session=same_session,
    )
    return _finish(result, s, out_dir, data, manifest, split, console)


def write_outputs(
    result: EvalResult,
    out_dir: Path,
    data: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> None:
    """metrics.json, per_class.csv, confusion CSV/PNG, predictions.csv (atomically)."""

    out_dir.mkdir(parents=True, exist_ok=True)
    result.out_dir = out_dir
    files = {
        "metrics_json": out_dir / "metrics.json",
        "predictions_csv": out_dir / "predictions.csv",
        "per_class_csv": out_dir / "per_class.csv",
    }
    r = result.recording
    atomic_write_text(files["predictions_csv"], result.predictions.to_csv(index=False))
    atomic_write_text(files["per_class_csv"], r.per_class.to_csv(index=False))
    if isinstance(r, MultiLabelMetrics):  # precision-recall curves instead of confusion matrices
        from birdstack.evaluation.plots import plot_pr_curves

        assert result.targets is not None and result.scores is not None
        files["pr_png"] = plot_pr_curves(
            result.targets,
            result.scores,
            result.classes,
            out_dir / "pr_curves.png",
            title=f"clips (n={r.n}): cmAP {r.cmap:.3f}, macro AUROC {r.auroc:.3f}",
        )
    else:
        _write_confusions(result, out_dir, files)
    payload = {
        **result.to_dict(),
        "data": str(data) if data is not None else None,
        "manifest": str(manifest) if manifest is not None else None,
        "split": split,
    }
    atomic_write_json(files["metrics_json"], payload)
    result.files = files


def _write_confusions(result: EvalResult, out_dir: Path, files: dict[str, Path]) -> None:
    """Confusion CSV/PNG of recordings (and windows) of a single-label evaluation."""
    from birdstack.evaluation.plots import plot_confusion

    r = result.recording
    assert isinstance(r, ClassificationMetrics)
    files["confusion_csv"] = out_dir / "confusion.csv"
    files["confusion_png"] = out_dir / "confusion.png"
    atomic_write_text(files["confusion_csv"], r.confusion_frame().to_csv())
    plot_confusion(
        r.confusion,
        result.classes,
        files["confusion_png"],
        title=f"recordings (n={r.n}): accuracy {r.accuracy:.3f}, macro-F1 {r.f1_macro:.3f}",
    )
    if result.window is not None:
        w = result.window
        files["confusion_windows_csv"] = out_dir / "confusion_windows.csv"
        files["confusion_windows_png"] = out_dir / "confusion_windows.png"
        atomic_write_text(files["confusion_windows_csv"], w.confusion_frame().to_csv())
        plot_confusion(
            w.confusion,
            result.classes,
            files["confusion_windows_png"],
            title=f"windows (n={w.n}): accuracy {w.accuracy:.3f}, macro-F1 {w.f1_macro:.3f}",
        )


def print_result(result: EvalResult, console: Console) -> None:
    """Per-class table and headline figures as a rich table."""
    r = result.recording
    if isinstance(r, MultiLabelMetrics):
        t = Table(title=f"evaluation — {result.checkpoint.name} ({r.n} clips, multi-label)")
        for col in ("class", "AP", "AUROC", "positives", "threshold"):
            t.add_column(col, justify="left" if col == "class" else "right")
        for _, c in r.per_class.iterrows():
            t.add_row(
                str(c["class"]),
                "–" if c["ap"] != c["ap"] else f"{c['ap']:.3f}",
                "–" if c["auroc"] != c["auroc"] else f"{c['auroc']:.3f}",
                str(int(c["positives"])),
                f"{c['threshold']:.2f}",
            )
        console.print(t)
        console.print(
            f"clip level: cmAP [bold]{r.cmap:.3f}[/bold]  macro AUROC [bold]{r.auroc:.3f}"
            f"[/bold]  top-1 {r.top1:.3f}  sample F1 {r.f1_samples:.3f}  row-wise F1 "
            f"(nocall) {r.f1_rowwise_nocall:.3f}"
        )
        if result.window is not None:
            w = result.window
            console.print(f"window level ({w.n} windows): cmAP {w.cmap:.3f}  AUROC {w.auroc:.3f}")
        if result.n_negatives:
            console.print(
                f"open set: {result.open_set:.1%} of {result.n_negatives} negative clips get "
                "a species at or above its threshold"
            )
        if result.out_dir is not None:
            console.print(f"outputs: {result.out_dir}")
        return
    t = Table(title=f"evaluation — {result.checkpoint.name} ({r.n} recordings)")
    for col in ("class", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for _, c in r.per_class.iterrows():
        t.add_row(
            str(c["class"]),
            f"{c['precision']:.3f}",
            f"{c['recall']:.3f}",
            f"{c['f1']:.3f}",
            str(int(c["support"])),
        )
    t.add_section()
    t.add_row(
        "macro", f"{r.precision_macro:.3f}", f"{r.recall_macro:.3f}", f"{r.f1_macro:.3f}", str(r.n)
    )
    console.print(t)
    console.print(
        f"recording level: accuracy [bold]{r.accuracy:.3f}[/bold]  macro-F1 "
        f"[bold]{r.f1_macro:.3f}[/bold]  log loss {r.log_loss:.3f}"
    )
    if result.window is not None:
        w = result.window
        console.print(
            f"window level ({w.n} windows): accuracy {w.accuracy:.3f}  macro-F1 "
            f"{w.f1_macro:.3f}  log loss {w.log_loss:.3f}"
        )
    if result.excluded.get("unreadable_audio"):
        console.print(
            f"[yellow]{result.excluded['unreadable_audio']} unreadable file(s) skipped[/yellow]"
        )
    if result.out_dir is not None:
        console.print(f"outputs: {result.out_dir}")

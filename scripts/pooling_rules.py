"""Recording-level figures of finished single-label runs under other pooling rules.

A ``segments`` model scores a recording as the mean of its 5 s windows' probabilities
(``encoding.pool: mean``). This asks, with no retraining, whether another rule would
have scored the same checkpoints better on their own validation folds:

    python scripts/pooling_rules.py --data ../shared/data/birds-dev \\
        outputs/sweeps/distill_unlabelled_compact_all_species/runs/*soundscapes*band_median__fold*

Rules: ``mean`` (birdstack's), ``max`` per class, ``geometric`` mean, ``top-3`` mean
(the three highest windows per class), ``mean, hop 2.5 s`` (overlapping windows), and
``mean, prior-corrected`` (log-probabilities minus half the log of the training
recordings' class frequencies: the logit adjustment of Menon et al. 2021 at tau 0.5).
Each run is scored with ``--checkpoint`` (``last``: what the sweep reports) on the
``val`` rows of its ``data/manifest.csv``; features come from the cache ``prepare``
filled. Prints the macro-F1 and accuracy of each run and rule as a markdown table,
then each rule's mean and its paired difference from ``mean`` over the runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from birdstack.evaluation.evaluate import cached_features, select_recordings
from birdstack.evaluation.metrics import classification_metrics
from birdstack.inference.predictor import Predictor
from birdstack.sweeps.report import markdown_table

RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda w: w.mean(axis=0),
    "max": lambda w: w.max(axis=0),
    "geometric": lambda w: np.exp(np.log(np.clip(w, 1e-9, None)).mean(axis=0)),
    "top-3": lambda w: np.sort(w, axis=0)[-3:].mean(axis=0),
}


def score_run(run: Path, data: str, checkpoint: str, cache_dir: str | None) -> pd.DataFrame:
    """One row per rule: the run's recording-level macro-F1 and accuracy."""
    pred = Predictor.from_checkpoint(run / "checkpoints" / f"{checkpoint}.ckpt")
    if pred.multilabel or pred.preprocessing.encoding.kind != "segments":
        raise SystemExit(f"{run}: only single-label segments runs have pooling rules")
    classes = list(pred.classes)
    index = {c: i for i, c in enumerate(classes)}
    manifest = run / "data" / "manifest.csv"
    rows, _ = select_recordings(data, classes, manifest, "val")
    enc = pred.preprocessing.encoding
    windows, overlapping, labels = [], [], []
    excluded = {"unreadable_audio": 0}  # counted by cached_features
    paths = [Path(p) for p in rows["path"]]
    for i, db in cached_features(paths, pred.preprocessing, cache_dir, False, excluded):
        res = pred.score_frames([db], window_s=enc.window_s, hop_s=enc.hop_s, cover_end=False)
        windows.append(res.window_probs)
        half = pred.score_frames([db], window_s=enc.window_s, hop_s=enc.hop_s / 2, cover_end=False)
        overlapping.append(half.window_probs)
        labels.append(index[rows.loc[i, "primary_label"]])
    y = np.asarray(labels)
    train = pd.read_csv(manifest)
    train = train[(train["split"] == "train") & ~train["dropped"].astype(bool)]
    counts = train["primary_label"].map(index).value_counts()
    prior = counts.reindex(range(len(classes)), fill_value=0).to_numpy() + 1.0
    log_prior = np.log(prior / prior.sum())

    scored = {name: np.stack([rule(w) for w in windows]) for name, rule in RULES.items()}
    scored["mean, hop 2.5 s"] = np.stack([w.mean(axis=0) for w in overlapping])
    adjusted = np.log(np.clip(scored["mean"], 1e-9, None)) - 0.5 * log_prior
    scored["mean, prior-corrected"] = np.exp(adjusted - adjusted.max(axis=1, keepdims=True))
    out = []
    for name, probs in scored.items():
        m = classification_metrics(y, probs, classes)
        out.append({"run": run.name, "rule": name, "macro_f1": m.f1_macro, "accuracy": m.accuracy})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "runs", nargs="+", type=Path, help="sweep run folders (RUN/checkpoints, RUN/data)"
    )
    ap.add_argument("--data", required=True, help="the labelled data the runs trained on")
    ap.add_argument("--checkpoint", default="last", choices=["last", "best"])
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    table = pd.concat([score_run(r, args.data, args.checkpoint, args.cache_dir) for r in args.runs])
    wide = table.pivot(index="run", columns="rule", values="macro_f1")[list(table["rule"].unique())]
    print("macro-F1 per run (rows) and rule (columns)\n")
    rows = [[run] + [f"{v:.3f}" for v in wide.loc[run]] for run in wide.index]
    print(markdown_table(["run", *wide.columns], rows))
    diff = wide.sub(wide["mean"], axis=0)
    acc = table.groupby("rule")["accuracy"].mean()
    rows = [
        [
            rule,
            f"{wide[rule].mean():.3f}",
            f"{acc[rule]:.3f}",
            f"{diff[rule].mean():+.3f}",
            f"{int((diff[rule] > 1e-9).sum())} / {int((diff[rule] < -1e-9).sum())}",
        ]
        for rule in wide.columns
    ]
    print(f"\nmean over {len(wide)} run(s)\n")
    header = ["rule", "macro-F1", "accuracy", "macro-F1 minus mean's", "runs better / worse"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()

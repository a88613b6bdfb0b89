"""Which validation scores should choose a detector's per-species thresholds?

A multi-label run chooses each species' threshold at the highest F-beta of its
validation windows (``task.threshold_beta``), and leaves the negative clips out of that
choice (``data.negatives``, and the other species' recordings of
``data.other_species=negatives``), so that the validation open-set figure is not
measured on the clips that set it. A focal recording's label, though, holds for the
recording, not for each 5 s window (a window between two songs is labelled present).
This script re-chooses the thresholds of trained runs four ways from the same scores
(windows or each recording's maximum over its windows; without or with the negatives)
and scores each rule on audio where none was chosen: audio with none of the run's species
(``--field NAME=DIR``, e.g. the NIPS4B soundscape clips) and the run's held-out focal
recordings (one of their species detected, another one detected). Nothing is retrained.
The output rules are ``predict``'s (every species at or above its threshold in a window,
``--min-confidence``'s default floor)::

    python scripts/detector_thresholds.py outputs/sweeps/detector_compact_top6/runs/* \\
        --field nips4b=../shared/data/soundscapes/audio --out docs/results/detector_compact_top6

Writes ``thresholds.csv`` (one row per run and rule) and ``thresholds.md`` (mean ± std
over the runs). A rule "with negatives" is scored on the validation negatives it was
chosen on, so its figure there is optimistic by construction and is marked so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from birdstack.evaluation.metrics import tune_thresholds
from birdstack.features.audio import find_audio_files
from birdstack.inference.predictor import Predictor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's helpers
from field_false_detections import (  # noqa: E402
    parse_fields,
    run_label,
    settings,
    species_found,
    write_tables,
)


def score_run(run: Path, fields: dict[str, Path]) -> list[dict]:
    man = pd.read_csv(run / "data" / "manifest.csv")
    kept = man[~man["dropped"].astype(bool)]
    val = kept[kept["split"] == "val"]
    trained = {str(Path(p).resolve()) for p in kept.loc[kept["split"] == "train", "path"]}
    predictor = Predictor.from_checkpoint(run / "checkpoints" / "last.ckpt")
    # predict's own output rules (its default floor), each rule's thresholds swapped in
    defaults = settings(predictor, [])["predict defaults"]
    classes = list(predictor.classes)
    index = {c: i for i, c in enumerate(classes)}
    task = yaml.safe_load((run / "config.yaml").read_text())["task"]
    negative = val.get("negative", pd.Series(False, index=val.index))
    negative = negative.astype(str).str.lower().isin(("true", "1")).to_numpy()

    preds = [predictor.predict(path) for path in val["path"]]
    wins = [pred.window_probs for pred in preds]
    rec_targets = []
    for labels in val["labels"]:
        t = np.zeros(len(classes), dtype=bool)
        for lab in json.loads(labels) if isinstance(labels, str) else []:
            t[index[lab]] = True
        rec_targets.append(t)
    targets = [np.repeat(t[None, :], len(w), axis=0) for t, w in zip(rec_targets, wins)]
    win_neg = np.concatenate([[n] * len(w) for n, w in zip(negative, wins, strict=True)])
    y, p = np.concatenate(targets), np.concatenate(wins)
    default, beta = float(task["threshold"]), float(task["threshold_beta"])
    # a focal recording's label holds for the recording, not for each of its windows (a
    # window between two songs is labelled present): its maximum window score is what a
    # recording-level label describes, and what "a file with a detection" depends on
    ry = np.stack(rec_targets)
    rp = np.stack([w.max(axis=0) for w in wins])
    rules = {
        "windows, without negatives (the runs' rule until 2026-12-04)": tune_thresholds(
            y[~win_neg], p[~win_neg], default, beta
        ),
        "windows, with negatives": tune_thresholds(y, p, default, beta),
        "recording maxima, without negatives": tune_thresholds(
            ry[~negative], rp[~negative], default, beta
        ),
        "recording maxima, with negatives": tune_thresholds(ry, rp, default, beta),
    }
    stored = np.asarray(predictor.thresholds, dtype=np.float64)
    field_preds = {
        name: [
            predictor.predict(f)
            for f in find_audio_files(folder)
            if str(f.resolve()) not in trained
        ]
        for name, folder in fields.items()
    }
    variant, fold = run_label(run)
    rows = []
    for rule, thr in rules.items():
        opts = dataclasses.replace(defaults, thresholds=tuple(float(v) for v in thr))
        own = other = neg_hit = 0
        n_pos = int((~negative).sum())
        for pred, t, is_neg in zip(preds, rec_targets, negative, strict=True):
            found = species_found(pred, opts)
            own_species = {c for c, on in zip(classes, t, strict=True) if on}
            if is_neg:
                neg_hit += bool(found)
            else:
                own += bool(found & own_species)
                other += bool(found - own_species)
        row = {
            "run": run.name,
            "variant": variant,
            "fold": fold,
            "rule": rule,
            "thresholds": " ".join(f"{v:.2f}" for v in thr),
            "stored thresholds": " ".join(f"{v:.2f}" for v in stored),
            "focal: one of its species detected": own / max(1, n_pos),
            "focal: another species detected": other / max(1, n_pos),
            "other species (validation): files with a detection": neg_hit
            / max(1, int(negative.sum())),
        }
        for name, field in field_preds.items():
            row[f"{name}: files"] = len(field)
            row[f"{name}: files with a detection"] = float(
                np.mean([bool(pred.detections(opts)) for pred in field]) if field else np.nan
            )
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="multi-label run folders")
    ap.add_argument("--field", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fields = parse_fields(ap, args.field)
    rows = []
    for run in sorted(args.runs):
        rows += score_run(run, fields)
        print(f"{run.name}: done", flush=True)

    def mark(group: tuple, column: str) -> str:
        chosen = group[0].endswith("with negatives")
        return " (chosen on them)" if chosen and column.startswith("other species") else ""

    write_tables(pd.DataFrame(rows), ["rule"], args.out, "thresholds", mark)


if __name__ == "__main__":
    main()

"""Where a distilled student falls short of its teacher: per fold and per class.

For each student run (a ``birdstack sweep`` run folder trained with ``distill.teacher``),
on that run's own validation recordings:

* **student**: its checkpoint through ``Predictor`` (the windows and pooling of
  ``predict`` and ``evaluate``), per recording;
* **teacher**: the teacher checkpoint the run names (``{fold}``/``{seed}`` filled in),
  through its own preprocessing (its scores cached as for training);
* **ceiling**: what a student that matched its teacher on every one of its own 5 s
  windows would score: the teacher's window scores on the student's windows (the
  targets training gave it, ``TeacherTable.span``), mean-pooled per recording.

    python scripts/distill_gap.py \\
        outputs/sweeps/distill_unlabelled_compact_all_species/runs/*fold*__seed0 \\
        --out docs/results/distill_unlabelled_compact_all_species

Writes ``gap_folds.csv`` (accuracy and macro-F1 of the three, per run) and
``gap_classes.csv`` (per-class F1 of student and teacher, mean over the runs whose
validation fold holds the class, with the training recordings of the class).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from birdstack.config import Config
from birdstack.data.prepare import cache_root
from birdstack.evaluation.metrics import classification_metrics
from birdstack.features.encoding import segment_starts
from birdstack.inference.predictor import Predictor
from birdstack.training.distill import Teacher
from birdstack.training.train import teacher_path


def run_gap(run: Path) -> tuple[dict, pd.DataFrame]:
    cfg = Config.from_yaml(run / "config.yaml")
    if not cfg.distill.teacher:
        raise SystemExit(f"{run}: not a distilled run (no distill.teacher)")
    fold, seed = cfg.data.val_fold, cfg.trainer.seed
    teacher_ckpt = Path(teacher_path(cfg))
    man = pd.read_csv(run / "data/manifest.csv")
    kept = man[man["label_idx"] >= 0]
    val = kept[kept["split"] == "val"]
    n_train = kept[kept["split"] == "train"].groupby("primary_label").size()
    y = val["label_idx"].to_numpy()
    files = val["path"].astype(str).tolist()

    student = Predictor.from_checkpoint(run / "checkpoints/last.ckpt", threads=1)
    classes = list(student.classes)  # the checkpoint carries its class list
    p_student = np.stack([student.predict(f).probs for f in files])
    # the teacher's scores through its own preprocessing, cached like the training targets:
    # per recording (its ``predict`` figure) and per window (the student's targets)
    root = cache_root(cfg.data.cache_dir)
    tables = Teacher(teacher_ckpt, classes, root, threads=1).tables(files, progress=False)
    p_teacher = np.stack([t.probs for t in tables])
    pre = cfg.preprocessing
    window, hop, spf = pre.window_frames(), pre.hop_frames(), pre.seconds_per_frame()
    p_ceiling = []
    for table, n in zip(tables, val["frames"].astype(int)):
        starts = segment_starts(n, window, hop, pre.encoding.min_last_window)
        spans = [table.span(s * spf, s * spf + pre.input_seconds()) for s in starts]
        p_ceiling.append(np.mean(spans, axis=0))

    row: dict = {"run": run.name, "fold": fold, "seed": seed, "n_val": len(files)}
    per_class = []
    for who, p in (
        ("student", p_student),
        ("teacher", p_teacher),
        ("ceiling", np.stack(p_ceiling)),
    ):
        m = classification_metrics(y, p, classes)
        row[f"{who}_acc"], row[f"{who}_f1_macro"] = m.accuracy, m.f1_macro
        if who != "ceiling":
            pc = m.per_class.assign(who=who, fold=fold)
            per_class.append(pc[pc["support"] > 0])
    out = pd.concat(per_class)
    out["n_train"] = out["class"].map(n_train).fillna(0).astype(int)
    return row, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="distilled student run folders")
    ap.add_argument("--out", type=Path, required=True, help="folder for the two CSV files")
    args = ap.parse_args()
    rows, classes = [], []
    for run in args.runs:
        row, pc = run_gap(run)
        rows.append(row)
        classes.append(pc)
        print(
            f"{run.name}: student {row['student_f1_macro']:.3f}, teacher "
            f"{row['teacher_f1_macro']:.3f}, ceiling {row['ceiling_f1_macro']:.3f} macro-F1",
            flush=True,
        )
    folds = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    folds.to_csv(args.out / "gap_folds.csv", index=False, float_format="%.4f")
    pc = pd.concat(classes)
    wide = pc.pivot_table(index=["class", "fold"], columns="who", values="f1").reset_index()
    n = pc.groupby(["class", "fold"])["n_train"].first().reset_index()
    wide = wide.merge(n, on=["class", "fold"])
    summary = (
        wide.groupby("class")
        .agg(
            folds=("fold", "size"),
            n_train=("n_train", "mean"),
            student_f1=("student", "mean"),
            teacher_f1=("teacher", "mean"),
        )
        .assign(gap=lambda d: d["teacher_f1"] - d["student_f1"])
        .sort_values("gap", ascending=False)
    )
    summary.to_csv(args.out / "gap_classes.csv", float_format="%.3f")
    print(folds.drop(columns=["run"]).mean(numeric_only=True).round(3).to_string())
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()

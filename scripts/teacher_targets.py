"""How sure and how right a distilled student's targets are, on its training recordings.

For each student run (a run folder trained with ``distill.teacher``), on the labelled
recordings it trained on, the teacher tables it was trained with (the cached scores of
``distill.teacher``, and with ``distill.cross_fit`` those of the copy retrained without
each recording's fold), and on its validation recordings the teacher's scores:

* ``p_true``: the mean over recordings of the mean teacher probability of the
  recording's species over its windows;
* ``window_top1``: the share of windows whose top teacher class is the species (mean
  over recordings);
* ``recording_top1``: the share of recordings whose pooled teacher scores name it.

    python scripts/teacher_targets.py \\
        "outputs/sweeps/distill_unlabelled_compact_all_species/runs/*cross-fitted*" \\
        --out docs/results/distill_crossfit_compact_all_species/teacher_targets.csv

A teacher scores its own training recordings with a confidence it has on no new
session; out-of-fold targets show the student what it does on new ones.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import pandas as pd

from birdstack.config import Config, load_yaml
from birdstack.data.prepare import cache_root
from birdstack.training.distill import Teacher, TeacherTable
from birdstack.training.train import cross_fit_teacher_paths, teacher_path


def _row(table: TeacherTable, label: int) -> dict[str, float]:
    w = table.window_probs
    return {
        "p_true": float(w[:, label].mean()),
        "window_top1": float((w.argmax(axis=1) == label).mean()),
        "recording_top1": float(table.probs.argmax() == label),
    }


def run_targets(run: Path) -> pd.DataFrame:
    """One row per (recording, source of targets) of ``run``."""
    cfg = Config.from_dict(load_yaml(run / "config.yaml"))
    if not cfg.distill.teacher:
        raise SystemExit(f"{run}: not a distilled run (no distill.teacher)")
    man = pd.read_csv(run / "data" / "manifest.csv")
    man = man[~man["dropped"]]
    classes = json.loads((run / "data" / "classes.json").read_text())
    root = cache_root(cfg.data.cache_dir)
    full = Teacher(teacher_path(cfg), classes, root)
    inner = {j: Teacher(p, classes, root) for j, p in cross_fit_teacher_paths(cfg).items()}
    rows = []
    for r in man.itertuples():
        val = r.fold == cfg.data.val_fold
        sources = [("teacher", full)]
        if not val and r.fold in inner:
            sources.append(("cross-fitted teacher", inner[r.fold]))
        for who, t in sources:
            rows.append(
                {
                    "run": run.name,
                    "fold": cfg.data.val_fold,
                    "recordings": "validation" if val else "training",
                    "targets": who,
                    **_row(t.table(r.path), int(r.label_idx)),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="student run folders (glob patterns allowed)")
    ap.add_argument("--out", type=Path, help="CSV of the means per run")
    args = ap.parse_args()
    runs = sorted({Path(p) for pat in args.runs for p in (glob.glob(pat) or [pat])})
    df = pd.concat([run_targets(r) for r in runs], ignore_index=True)
    keys = ["run", "fold", "recordings", "targets"]
    means = df.groupby(keys)[["p_true", "window_top1", "recording_top1"]].mean().reset_index()
    means["n"] = df.groupby(keys).size().to_numpy()
    print(means.drop(columns="run").round(3).to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        means.to_csv(args.out, index=False, float_format="%.4f")


if __name__ == "__main__":
    main()

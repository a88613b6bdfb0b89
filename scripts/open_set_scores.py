"""Can a single-label model's own scores tell its species from everything else?

A single-label (softmax) checkpoint names one of its species for every window. A
threshold on a confidence score would let it say "none of these" only if the score
separates the windows of its species from other audio. This measures that, per run of
a sweep (or any run folder with ``data/manifest.csv``), for three post-hoc scores of the
literature: the maximum softmax probability (Hendrycks & Gimpel 2017), the maximum
logit (Hendrycks et al. 2022) and the energy, ``logsumexp`` of the logits (Liu et al.
2020)::

    python scripts/open_set_scores.py \\
        outputs/sweeps/recipe_ablation_compact/runs/no_crop__fold*__seed0 \\
        --other-species ../shared/data/birds-dev \\
        --ood nips4b=../shared/data/soundscapes/audio --ood noise=../shared/data/noise/audio \\
        --limit 80 --out docs/results/open_set_single_label

In-distribution: every window of the run's validation recordings (``predict``'s table:
the model's window every half window). Out-of-distribution groups: ``other species``,
up to ``--per-species`` recordings of each species of ``--other-species`` that the
checkpoint does not know (focal recordings like the training data), and each
``--ood NAME=DIR`` (a seeded sample of ``--limit`` files). Figures per run and group:
ROC-AUC of in- against out-of-distribution windows (1.0: a threshold separates them,
0.5: chance), and the share of out-of-distribution windows a threshold keeps when it
keeps 95 % of the in-distribution ones. Writes ``per_run.csv`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from birdstack.features.audio import find_audio_files
from birdstack.inference.predictor import Predictor

SCORES = ("max softmax", "max logit", "energy")


def window_logits(predictor: Predictor, files: list[str]) -> np.ndarray:
    """Logits ``[windows, K]`` of ``predict``'s table windows of every file."""
    seen: list[np.ndarray] = []
    run = predictor.runner

    def recording(x: np.ndarray) -> np.ndarray:
        out = run(x)
        seen.append(np.asarray(out, dtype=np.float64))
        return out

    predictor.runner = recording
    try:
        for f in files:
            predictor.predict(f)
    finally:
        predictor.runner = run
    k = len(predictor.classes)
    return np.concatenate(seen) if seen else np.zeros((0, k))


def scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    m = logits.max(axis=1)
    energy = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
    return {"max softmax": np.exp(m - energy), "max logit": m, "energy": energy}


def audio_files(folder: Path) -> list[str]:
    return [str(p) for p in find_audio_files(folder)]


def _std(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (checkpoints/, data/)")
    ap.add_argument("--checkpoint", default="last", choices=["last", "best"])
    ap.add_argument("--other-species", type=Path, help="data folder with one folder per species")
    ap.add_argument("--per-species", type=int, default=2)
    ap.add_argument("--ood", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--limit", type=int, default=80, help="files sampled per --ood folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    groups: dict[str, list[str]] = {}
    for item in args.ood:
        name, _, folder = item.partition("=")
        files = audio_files(Path(folder))
        if not files:
            raise SystemExit(f"--ood {item}: no audio files in {folder}")
        groups[name] = random.Random(args.seed).sample(files, min(args.limit, len(files)))
    rows = []
    for run in args.runs:
        ckpt = run / "checkpoints" / f"{args.checkpoint}.ckpt"
        predictor = Predictor.from_checkpoint(ckpt, threads=1)
        if predictor.multilabel:
            raise SystemExit(f"{ckpt}: a multi-label checkpoint (this is for single-label ones)")
        manifest = pd.read_csv(run / "data" / "manifest.csv")
        val = manifest[(manifest["split"] == "val") & ~manifest["dropped"].astype(bool)]
        run_groups = dict(groups)
        if args.other_species is not None:
            root = args.other_species / "train_audio"
            root = root if root.is_dir() else args.other_species
            known = set(predictor.classes)
            run_groups = {
                "other species": [
                    f
                    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in known)
                    for f in audio_files(d)[: args.per_species]
                ],
                **groups,
            }
        inside = scores(window_logits(predictor, list(val["path"])))
        for name, files in run_groups.items():
            outside = scores(window_logits(predictor, files))
            for s in SCORES:
                a, b = inside[s], outside[s]
                y = np.r_[np.ones(len(a)), np.zeros(len(b))]
                threshold = np.quantile(a, 0.05)
                rows.append(
                    {
                        "run": run.name,
                        "group": name,
                        "score": s,
                        "auroc": roc_auc_score(y, np.r_[a, b]),
                        "kept_at_95": float((b >= threshold).mean()),
                        "in_windows": len(a),
                        "out_windows": len(b),
                    }
                )
        print(f"{run.name}: done")
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "per_run.csv", index=False)
    agg = df.groupby(["group", "score"], sort=False).agg(
        auroc=("auroc", "mean"),
        auroc_std=("auroc", "std"),
        kept=("kept_at_95", "mean"),
        kept_std=("kept_at_95", "std"),
        runs=("run", "nunique"),
        out_windows=("out_windows", "sum"),
    )
    lines = [
        "| group | score | ROC-AUC (in vs out) | out windows kept at 95 % in-recall "
        "| runs | out windows |",
        "|---|---|---|---|---|---|",
    ]
    for (group, score), r in agg.iterrows():
        lines.append(
            f"| {group} | {score} | {r.auroc:.3f} ± {_std(r.auroc_std)} | "
            f"{r.kept:.3f} ± {_std(r.kept_std)} | {int(r.runs)} | {int(r.out_windows)} |"
        )
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

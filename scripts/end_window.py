"""How the window that covers a recording's end does on real recordings.

``predict``'s detection table covers every second of a recording: when the tail after the
last full window is too short for a padded window of its own (under
``encoding.min_last_window`` of a window), one more full window ends at the last frame
(``SegmentRule.cover_end``). That window overlaps the one before it and was never a
training or validation window, so this checks, on held-out recordings with no retraining,
that it names the species about as well as the recording's other windows:

    python scripts/end_window.py --data ../shared/data/birds-dev \\
        outputs/sweeps/distill_light_compact_all_species/runs/*fold4*

Each run (a single-label ``segments`` run of a sweep) is scored with ``--checkpoint`` on
the ``val`` rows of its ``data/manifest.csv``, features from the cache ``prepare`` filled,
once with the end window and once without. Prints, per run, the top-1 accuracy and mean
probability of the true species for all regular windows, for the last regular window of
the recordings that get an end window, and for those end windows, and how much audio
only the end window covers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from birdstack.evaluation.evaluate import cached_features, select_recordings
from birdstack.inference.predictor import Predictor
from birdstack.sweeps.report import markdown_table


def score_run(run: Path, data: str, checkpoint: str, cache_dir: str | None) -> list[list[str]]:
    """Table rows of one run: regular windows, last regular windows, end windows."""
    pred = Predictor.from_checkpoint(run / "checkpoints" / f"{checkpoint}.ckpt")
    if pred.multilabel or pred.preprocessing.encoding.kind != "segments":
        raise SystemExit(f"{run}: only single-label segments runs are scored here")
    index = {c: i for i, c in enumerate(pred.classes)}
    rows, _ = select_recordings(data, list(pred.classes), run / "data" / "manifest.csv", "val")
    enc = pred.preprocessing.encoding
    groups: dict[str, list[float]] = {"regular": [], "last regular": [], "end": []}
    true_p: dict[str, list[float]] = {k: [] for k in groups}
    only_end_s: list[float] = []
    excluded = {"unreadable_audio": 0}  # counted by cached_features
    paths = [Path(p) for p in rows["path"]]
    for i, db in cached_features(paths, pred.preprocessing, cache_dir, False, excluded):
        y = index[rows.loc[i, "primary_label"]]
        kw = {"window_s": enc.window_s, "hop_s": enc.hop_s}
        regular = pred.score_frames([db], **kw, cover_end=False)
        covered = pred.score_frames([db], **kw, cover_end=True)
        starts = set(np.round(regular.starts_s, 6))
        end = [j for j, s in enumerate(covered.starts_s) if round(s, 6) not in starts]
        picks = [("regular", regular.window_probs)]
        if end:
            picks.append(("last regular", regular.window_probs[-1:]))
            picks.append(("end", covered.window_probs[end]))
            only_end_s.append(float(covered.ends_s[end[-1]] - regular.ends_s[-1]))
        for name, w in picks:
            groups[name].extend((w.argmax(axis=1) == y).astype(float))
            true_p[name].extend(w[:, y])
    tail = np.asarray(only_end_s)
    out = []
    for name, label in [
        ("regular", "every regular window"),
        ("last regular", "last regular window, recordings with an end window"),
        ("end", "the end window"),
    ]:
        right = np.asarray(groups[name])
        out.append(
            [
                run.name,
                label,
                f"{int(right.sum())} / {right.size}",
                f"{right.mean():.3f}" if right.size else "-",
                f"{np.mean(true_p[name]):.3f}" if right.size else "-",
            ]
        )
    out[-1][1] += (
        f" (audio only it covers: {tail.min():.2f}-{tail.max():.2f} s,"
        f" median {np.median(tail):.2f})"
        if tail.size
        else ""
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "runs", nargs="+", type=Path, help="sweep run folders (RUN/checkpoints, RUN/data)"
    )
    ap.add_argument("--data", required=True, help="the labelled data the runs trained on")
    ap.add_argument("--checkpoint", default="last", choices=["last", "best"])
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    rows = [
        r for run in args.runs for r in score_run(run, args.data, args.checkpoint, args.cache_dir)
    ]
    header = ["run", "windows", "top-1 right", "accuracy", "mean p(true species)"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()

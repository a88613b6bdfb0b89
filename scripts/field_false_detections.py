"""What a trained model reports on field audio that holds none of its species.

For each run folder (a ``birdstack sweep`` run, or any run with ``data/manifest.csv`` and
``checkpoints/last.ckpt``; ``--checkpoint best`` takes ``best.ckpt``), through
``Predictor`` with ``predict``'s own window table and output rules (top-3 per window at
``--min-confidence 0.1``; a multi-label checkpoint: every species at or above its stored
threshold):

* **focal**: the run's validation recordings of its species (held-out sessions): the share
  whose own species is among the detections, and the share with a detection of another;
* **other species** (runs with ``data.other_species=negatives``): the validation
  recordings of species the run learned to reject (held-out sessions): the share with
  any detection;
* each ``--field NAME=DIR``: audio without any of the run's species (e.g. NIPS4B
  soundscapes of other species, bird-free clips): the share of files with any detection.
  Files the run trained on (its manifest's training rows, e.g. ``data.negatives``) are
  left out of the group.

Single-label checkpoints are also scored at stricter ``--min-confidence`` values
(``--strict``), the threshold a user would try first::

    python scripts/field_false_detections.py outputs/sweeps/birdnet_field_top6/runs/* \\
        --field nips4b=../shared/data/soundscapes/audio \\
        --field bird-free=../shared/data/noise/audio \\
        --out docs/results/birdnet_field_top6

Writes ``per_run.csv`` (one row per run and setting) and ``summary.md`` (mean ± std over
the runs of each variant).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from birdstack.features.audio import find_audio_files
from birdstack.inference.predictor import Predictor
from birdstack.inference.writers import OutputOptions


def settings(predictor: Predictor, strict: list[float]) -> dict[str, OutputOptions]:
    """The output rules to score: ``predict``'s defaults (read from its own parser), plus
    stricter floors for single-label checkpoints."""
    from birdstack.cli.main import build_parser

    cli = build_parser().parse_args(["predict", "model.ckpt", "audio", "--out", "out"])
    top_k, floor = cli.top_k, cli.min_confidence
    if predictor.thresholds is not None:
        th = tuple(float(t) for t in predictor.thresholds)
        return {"predict defaults": OutputOptions(top_k, floor, thresholds=th)}
    out = {"predict defaults": OutputOptions(top_k, floor)}
    for c in strict:
        out[f"--min-confidence {c:g}"] = OutputOptions(top_k, c)
    return out


def species_found(pred, opts: OutputOptions) -> set[str]:
    return {d.species for d in pred.detections(opts)}


def score_run(
    run: Path, fields: dict[str, Path], strict: list[float], checkpoint: str = "last"
) -> list[dict]:
    manifest = pd.read_csv(run / "data" / "manifest.csv")
    kept = manifest[~manifest["dropped"].astype(bool)]
    trained = {str(Path(p).resolve()) for p in kept.loc[kept["split"] == "train", "path"]}
    from_folder = kept["rec_id"].astype(str).str.startswith("negatives/")
    flagged = kept.get("negative", pd.Series(False, index=kept.index))
    negative = from_folder | flagged.astype(str).str.lower().isin(("true", "1"))
    focal = kept[(kept["split"] == "val") & ~negative]
    # data.other_species=negatives: held-out recordings of the species the run rejects
    others = kept[(kept["split"] == "val") & negative & ~from_folder]
    predictor = Predictor.from_checkpoint(run / "checkpoints" / f"{checkpoint}.ckpt")
    opts = settings(predictor, strict)
    variant, fold = run_label(run)
    rows = {
        name: {
            "run": run.name,
            "variant": variant,
            "fold": fold,
            "checkpoint": checkpoint,
            "setting": name,
            "focal_files": len(focal),
        }
        for name in opts
    }
    hits = {name: [0, 0] for name in opts}
    for path, label in zip(focal["path"], focal["primary_label"], strict=True):
        pred = predictor.predict(path)
        for name, o in opts.items():
            found = species_found(pred, o)
            hits[name][0] += label in found
            hits[name][1] += bool(found - {label})
    for name in opts:
        rows[name]["focal: own species detected"] = hits[name][0] / max(1, len(focal))
        rows[name]["focal: another species detected"] = hits[name][1] / max(1, len(focal))
    groups = {
        name: [p for p in find_audio_files(folder) if str(p.resolve()) not in trained]
        for name, folder in fields.items()
    }
    if len(others):
        groups = {"other species": list(others["path"]), **groups}
    for group, files in groups.items():
        any_det = {name: 0 for name in opts}
        for p in files:
            pred = predictor.predict(p)
            for name, o in opts.items():
                any_det[name] += bool(pred.detections(o))
        for name in opts:
            rows[name][f"{group}: files"] = len(files)
            rows[name][f"{group}: files with a detection"] = any_det[name] / max(1, len(files))
    return list(rows.values())


def run_label(run: Path) -> tuple[str, int]:
    """A run's variant (a sweep's run names it; a plain `birdstack train` run is its own)
    and validation fold."""
    swept = run / "sweep_run.json"
    variant = json.loads(swept.read_text())["variant"] if swept.is_file() else run.name
    return variant, int(yaml.safe_load((run / "config.yaml").read_text())["data"]["val_fold"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders")
    ap.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="audio with none of the runs' species (repeatable)",
    )
    ap.add_argument(
        "--strict",
        type=float,
        nargs="*",
        default=[0.5, 0.9],
        help="extra --min-confidence floors for single-label runs (0.5 0.9)",
    )
    ap.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="which of each run's checkpoints to score (last: the sweeps' figures)",
    )
    ap.add_argument("--out", type=Path, required=True, help="folder for per_run.csv, summary.md")
    args = ap.parse_args()
    fields = parse_fields(ap, args.field)
    rows = []
    for run in sorted(args.runs):
        rows += score_run(run, fields, args.strict, args.checkpoint)
        print(f"{run.name}: done", flush=True)
    write_tables(pd.DataFrame(rows), ["variant", "checkpoint", "setting"], args.out, "per_run")


def parse_fields(ap: argparse.ArgumentParser, specs: list[str]) -> dict[str, Path]:
    """``--field NAME=DIR`` values as ``{NAME: DIR}`` (an argparse error if DIR is missing)."""
    fields = {}
    for spec in specs:
        name, _, folder = spec.partition("=")
        if not folder or not Path(folder).is_dir():
            ap.error(f"--field {spec!r}: expected NAME=DIR with an existing folder")
        fields[name] = Path(folder)
    return fields


def write_tables(
    df: pd.DataFrame, keys: list[str], out: Path, stem: str, mark: Callable[..., str] | None = None
) -> None:
    """``<stem>.csv`` (the rows) and ``summary.md`` / the markdown table of the shares
    (columns ending "detected" or "with a detection"): mean ± std over the rows of each
    ``keys`` group; ``mark(group, column)`` appends a note to a cell."""
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{stem}.csv", index=False)
    shares = [c for c in df.columns if c.endswith("detected") or c.endswith("with a detection")]
    lines = [
        "| " + " | ".join(keys) + " | runs | " + " | ".join(shares) + " |",
        "|---" * (len(keys) + 1) + "|" + "---|" * len(shares),
    ]
    for group, g in df.groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        cells = [
            f"{np.mean(g[c]):.3f} ± {np.std(g[c], ddof=1) if len(g) > 1 else 0.0:.3f}"
            + (mark(group, c) if mark else "")
            for c in shares
        ]
        lines.append(
            "| " + " | ".join(map(str, group)) + f" | {len(g)} | " + " | ".join(cells) + " |"
        )
    md = "summary.md" if stem == "per_run" else f"{stem}.md"
    (out / md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

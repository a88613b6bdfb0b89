"""``birdstack evaluate`` (wired in by :mod:`birdstack.cli.main`).

    birdstack evaluate RUN/checkpoints/best.ckpt --data data/birds-demo \\
        --manifest RUN/data/manifest.csv --split val --out RUN/eval

Heavy imports (torch, Lightning) happen inside ``cmd_evaluate``, so building the
parser stays fast.
"""

from __future__ import annotations

import argparse

from birdstack.cli.main import EXIT_OK, EXIT_SKIPPED, _progress


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``birdstack evaluate``."""
    p.add_argument(
        "checkpoint",
        help="a birdstack checkpoint (RUN/checkpoints/best.ckpt), or 'birdnet' for BirdNET "
        "V2.4's own scores with nothing trained (the species it knows; needs birdstack[birdnet])",
    )
    p.add_argument(
        "--data",
        required=True,
        help="labelled recordings: BirdCLEF-style folder (train_metadata.csv), one folder per "
        "species, or annotated soundscapes (annotations.csv or Raven tables: scored "
        "multi-label, per window and per clip)",
    )
    p.add_argument(
        "--manifest", help="only the kept recordings of this manifest (RUN/data/manifest.csv)"
    )
    p.add_argument(
        "--split",
        choices=("train", "val"),
        help="with --manifest: only that split's kept rows (val = the run's validation)",
    )
    p.add_argument(
        "--include-trained",
        action="store_true",
        help="without --manifest, recordings the checkpoint's run trained on (its "
        "RUN/data/manifest.csv) are left out; this scores them too (optimistic figures)",
    )
    p.add_argument("--out", help="folder for metrics.json, predictions.csv, confusion.csv/png")
    p.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/birdstack)")
    p.add_argument(
        "--species",
        help="with 'birdnet': comma-separated classes to score (default: the data's species, "
        "or the manifest's kept ones)",
    )
    p.add_argument(
        "--location-filter",
        choices=("off", "drop", "weight"),
        default="off",
        help="BirdNET's location/season filter with each recording's own latitude, longitude "
        "and date columns (default off)",
    )
    p.add_argument(
        "--location-threshold", type=float, default=0.03, help="occurrence threshold (0.03)"
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``birdstack evaluate``."""
    from birdstack.evaluation.evaluate import evaluate_checkpoint

    res = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        manifest=args.manifest,
        split=args.split,
        out_dir=args.out,
        cache_dir=args.cache_dir,
        progress=_progress(args),
        location=args.location_filter,
        location_threshold=args.location_threshold,
        include_trained=args.include_trained,
        species=[s.strip() for s in args.species.split(",") if s.strip()] if args.species else None,
    )
    n_bad = res.excluded.get("unreadable_audio", 0)
    if n_bad and getattr(args, "on_error", "fail") != "skip":
        print(f"{n_bad} unreadable file(s) were skipped; pass --on-error skip to accept that")
        return EXIT_SKIPPED
    return EXIT_OK

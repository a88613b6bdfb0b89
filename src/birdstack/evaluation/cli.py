"""``birdstack evaluate``, ``birdstack sweep`` and ``birdstack demo`` (wired in by cli.main).

    birdstack evaluate RUN/checkpoints/best.ckpt --data data/birds-demo \\
        --manifest RUN/data/manifest.csv --split val --out RUN/eval
    birdstack sweep experiments/study_optimizers.yaml --out outputs/sweeps/optimizers
    birdstack sweep experiments/study_optimizers.yaml --data ../shared/data/birds-dev
    birdstack demo --out outputs/demo

Heavy imports (torch, Lightning) happen inside the ``cmd_*`` functions, so building
the parser stays fast.
"""

from __future__ import annotations

import argparse

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_SKIPPED = 0, 1, 2, 3


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False)


# ----------------------------------------------------------------------------- evaluate


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``birdstack evaluate``."""
    p.add_argument("checkpoint", help="a birdstack checkpoint (RUN/checkpoints/best.ckpt)")
    p.add_argument(
        "--data",
        required=True,
        help="labelled recordings: BirdCLEF-style folder (train_metadata.csv) or "
        "one folder per species",
    )
    p.add_argument(
        "--manifest", help="only the recordings of this manifest (RUN/data/manifest.csv)"
    )
    p.add_argument(
        "--split",
        choices=("train", "val"),
        help="with --manifest: only that split's kept rows (val = the run's validation)",
    )
    p.add_argument("--out", help="folder for metrics.json, predictions.csv, confusion.csv/png")
    p.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/birdstack)")


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
    )
    n_bad = res.excluded.get("unreadable_audio", 0)
    if n_bad and getattr(args, "on_error", "fail") != "skip":
        print(f"{n_bad} unreadable file(s) were skipped; pass --on-error skip to accept that")
        return EXIT_SKIPPED
    return EXIT_OK


# ----------------------------------------------------------------------------- sweep


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``birdstack sweep``."""
    p.add_argument("experiment", help="experiment YAML (see experiments/)")
    p.add_argument("--out", help="sweep folder (default outputs/sweeps/<name>)")
    p.add_argument("--data", help="data folder for every run (overrides data.path)")
    p.add_argument("--epochs", type=int, help="epochs for every run (overrides trainer.epochs)")
    p.add_argument("--folds", help="validation folds to run: 'all' or e.g. 0,1 (overrides folds)")
    p.add_argument("--seeds", help="training seeds, e.g. 0,1,2 (overrides seeds)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run (e.g. trainer.batch_size=8)",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run only the variants whose config has this value (e.g. model.name=resnet18, "
        "'optim.lr=[0.01, 0.001]', 'variant=[stacked, segments 1 crop]'); the rest can be "
        "run later into the same --out folder",
    )
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and stop")
    p.add_argument(
        "--no-eval",
        action="store_true",
        help="do not evaluate the best run's checkpoint (no confusion matrix)",
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run ``birdstack sweep``."""
    from birdstack.cli.main import _skip_exit
    from birdstack.evaluation.sweep import parse_folds, parse_seeds, run_sweep, sweep_command

    res = run_sweep(
        args.experiment,
        args.out,
        data=args.data,
        epochs=args.epochs,
        folds=parse_folds(args.folds, "--folds") if args.folds else None,
        seeds=parse_seeds(args.seeds, "--seeds") if args.seeds else None,
        overrides=args.set,
        dry_run=args.dry_run,
        progress=_progress(args),
        evaluate_best=not args.no_eval,
        only=args.only,
        command=sweep_command(),
    )
    if args.dry_run:
        return EXIT_OK
    if res.failed:
        print(
            f"{len(res.failed)} run(s) did not finish: {', '.join(res.failed)}; "
            "rerun the same command to retry them"
        )
        return EXIT_FAIL
    print(f"results: {res.out_dir / 'results.md'}\nreport: {res.report}")
    return _skip_exit(len(res.skipped), args)


# ----------------------------------------------------------------------------- demo


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``birdstack demo``."""
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the demo's)")
    p.add_argument("--data", help="data folder (default: the embedded data/birds-demo)")
    p.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/birdstack)")


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``birdstack demo``."""
    from birdstack.evaluation.demo import run_demo

    res = run_demo(
        args.out,
        epochs=args.epochs,
        data=args.data,
        cache_dir=args.cache_dir,
        progress=_progress(args),
    )
    return EXIT_OK if res.evaluation is not None else EXIT_FAIL

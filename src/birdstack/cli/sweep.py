"""``birdstack sweep`` (wired in by :mod:`birdstack.cli.main`).

    birdstack sweep experiments/study_optimizers.yaml --out outputs/sweeps/optimizers
    birdstack sweep experiments/study_optimizers.yaml --data ../shared/data/birds-dev

Heavy imports (torch, Lightning) happen inside ``cmd_sweep``, so building the parser
stays fast.
"""

from __future__ import annotations

import argparse

from birdstack.cli.main import EXIT_FAIL, EXIT_OK, _progress, _skip_exit


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
    from birdstack.sweeps.sweep import parse_folds, parse_seeds, run_sweep, sweep_command

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

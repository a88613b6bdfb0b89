"""``birdstack demo`` (wired in by :mod:`birdstack.cli.main`).

    birdstack demo --out outputs/demo

Heavy imports (torch, Lightning) happen inside ``cmd_demo``, so building the parser
stays fast.
"""

from __future__ import annotations

import argparse

from birdstack.cli.main import EXIT_FAIL, EXIT_OK, _progress


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

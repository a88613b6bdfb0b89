"""``birdstack info`` (wired in by :mod:`birdstack.cli.main`): what a model file is.

    birdstack info RUN/checkpoints/best.ckpt            # model, audio, data, recipe, figures
    birdstack info model.onnx --classes > species.txt   # one label per line (--species-list)
    birdstack info RUN/checkpoints/best.ckpt --json     # everything, for scripts

It reads the one file (safely, as every command does) and no audio.
"""

from __future__ import annotations

import argparse
import json

from birdstack.cli.main import EXIT_OK


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``birdstack info``."""
    p.add_argument("checkpoint", help="a birdstack checkpoint (.ckpt) or ONNX export (.onnx)")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--classes",
        action="store_true",
        help="only the class labels, one per line (a file for predict --species-list)",
    )
    out.add_argument("--json", action="store_true", help="everything as one JSON object")


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a checkpoint or ONNX export: classes, preprocessing, training, figures."""
    from rich.console import Console
    from rich.table import Table

    from birdstack.inference.model_info import info_lines, model_info

    info = model_info(args.checkpoint)
    if args.classes:
        print("\n".join(info.classes))
        return EXIT_OK
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, default=str))
        return EXIT_OK
    console = Console(soft_wrap=False)
    console.print(
        f"[bold]{info.path}[/] ({'ONNX export' if info.kind == 'onnx' else 'checkpoint'})"
    )
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    for name, text in info_lines(info):
        head.add_row(name, text)
    console.print(head)
    classes = Table(title=f"{len(info.classes)} classes", title_justify="left")
    classes.add_column("#", justify="right")
    classes.add_column("label")
    classes.add_column("scientific name")
    if info.thresholds:
        classes.add_column("threshold", justify="right")
    for i, label in enumerate(info.classes):
        row = [str(i), label, info.scientific_names.get(label, "")]
        if info.thresholds:
            row.append(f"{info.thresholds[i]:.3f}")
        classes.add_row(*row)
    console.print(classes)
    return EXIT_OK

